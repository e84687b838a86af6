"""Request and response over the XBee link: the named requests, and one path that matches replies to them.

Every request the HAN makes is a method here built by `wire_requests` (one builder per request) and
sent through `EgressGuard.send`; this module never sees the port's write. Before a frame to the meter,
the radio waits for its turn with the waiting function its owner gives (`pace_with`: the service's,
which keeps housekeeping going): a whole poll interval after the previous one for discovery and the
scaling read (`EgressGuard.explicit_free_at`), the guard's floor for a poll, whose slot the schedule's
grid already spaces (`explicit_floor_at`). So the guard never has to refuse one of ours.

Replies are matched in one place, as bellows' `_awaiting` table does: a request registers the keys of the
frames it waits for (its TX status, its AT response, its ZDO response cluster and sequence number, or
its ZCL sequence number from the meter), and `wait` routes each frame the radio sends to the key it
carries. A frame nobody waits for (a late reply, a TX status for an old frame id, anything unasked)
is dropped and counted in `unawaited`. A modem status (reset, watchdog, disassociated) is raised as
`RadioReset` whoever is waiting, so the main loop goes back to joining.

Bytes from the radio are untrusted: damaged frames are counted by the decoder, frames too short for
their type are counted here, and neither ever raises out of this module. With `require_aps_encryption`,
an explicit RX frame without the APS-encrypted option is ignored and counted: Smart Energy requires APS
security on the HAN, so such a frame did not come from the meter as the utility provisioned it.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from openseg.shared_schema.messages import LostCause

from . import wire_requests, xbee_frames, zcl, zdo
from .clock import Clock
from .egress_guard import EgressGuard, Meter
from .xbee_frames import ATResponse, ExplicitRx, Frame, ModemStatus, TxStatus

log = logging.getLogger("openseg.han")

RESET_STATUSES = {
    xbee_frames.MODEM_HARDWARE_RESET: "hardware reset",
    xbee_frames.MODEM_WATCHDOG_RESET: "watchdog reset",
    xbee_frames.MODEM_DISASSOCIATED: "disassociated from the network",
}


class RadioMisconfigured(Exception):
    """The radio answers but not in the mode this gateway speaks; a person must change its settings."""


class RadioSilent(Exception):
    """The radio does not answer AT queries at all (wrong baud rate, transparent mode, or no radio)."""


class RadioReset(Exception):
    """The radio reported a reset or loss of the network: join and discovery must start over."""

    def __init__(self, status: int):
        self.status = status
        super().__init__(f"modem status 0x{status:02x}: {RESET_STATUSES.get(status, 'unknown')}")


@dataclass(frozen=True)
class Received:
    frame: Frame
    wall: float     # wall clock right after the read() that completed this frame: its time tag
    mono: float     # the same instant on the monotonic clock (round trips, deadlines)


@dataclass(frozen=True)
class ZclRead:
    """The outcome of one Read Attributes exchange with the meter."""
    cause: LostCause | None           # None = answered
    detail: str
    sent_mono: float
    results: dict[int, zcl.AttributeResult]
    reply: Received | None = None


Key = tuple     # ("tx", frame id) | ("at", frame id) | ("zdo", cluster, seq) | ("zcl", nwk, endpoint, seq)


class Radio:
    def __init__(self, link, guard: EgressGuard, clock: Clock, require_aps_encryption: bool = True):
        self.link = link
        self.guard = guard
        self.clock = clock
        self.require_aps = require_aps_encryption
        self.decoder = xbee_frames.Decoder()
        self.unparsable = 0            # frames with a good checksum but too short for their type
        self.distrusted = 0            # explicit RX frames without APS encryption, ignored
        self.unawaited = 0             # frames no request was waiting for, dropped
        self._awaiting: dict[Key, deque[Received]] = {}
        self._reset: RadioReset | None = None    # seen while routing; raised once the frames before it
        self._idle_until: Callable[[float], None] = self.drain
        self._frame_id = 0
        self._zdo_seq = 0
        self._zcl_seq = 0

    @property
    def frames_bad(self) -> int:
        return self.decoder.stats.bad_frames + self.unparsable

    def pace_with(self, idle_until: Callable[[float], None]) -> None:
        """How to wait for the pace law's turn (the service passes its own wait, with housekeeping)."""
        self._idle_until = idle_until

    def aim_at(self, meter) -> None:
        """Discovery found `meter` (a discovery.Meter, or None): ZCL reads may go to it only."""
        self.guard.aim_at(None if meter is None else Meter(meter.ieee, meter.endpoint))

    def restart(self) -> None:
        """Forget any half-received frame and any awaited reply (after the port was reopened)."""
        self.decoder = xbee_frames.Decoder(stats=self.decoder.stats)
        self._awaiting.clear()
        self._reset = None

    # ---- the named requests --------------------------------------------------------------------
    def _next_frame_id(self) -> int:
        self._frame_id = self._frame_id % 255 + 1      # 1..255; 0 would suppress the response
        return self._frame_id

    def _next_zdo_seq(self) -> int:
        self._zdo_seq = (self._zdo_seq + 1) & 0xFF
        return self._zdo_seq

    def _next_zcl_seq(self) -> int:
        self._zcl_seq = (self._zcl_seq + 1) & 0xFF
        return self._zcl_seq

    def _request(self, frame: bytes, keys: list[Key], on_grid: bool = False) -> None:
        """Register what the request awaits, then send it (through the guard, at the meter's pace)."""
        if frame[0] != xbee_frames.AT_COMMAND:
            self._idle_until(self.guard.explicit_floor_at() if on_grid else self.guard.explicit_free_at())
        for key in keys:
            self._awaiting[key] = deque()
        try:
            self.guard.send(frame)
        except BaseException:
            self._forget(keys)
            raise

    def _forget(self, keys: list[Key]) -> None:
        for key in keys:
            self._awaiting.pop(key, None)

    def at_query(self, command: str, timeout: float) -> ATResponse | None:
        """Ask the local radio for one setting (no parameter, ever); None if it did not answer."""
        frame_id = self._next_frame_id()
        keys = [("at", frame_id)]
        self._request(wire_requests.at_query(frame_id, command), keys)
        deadline = self.clock.monotonic() + timeout
        try:
            while (got := self.wait(keys, deadline)) is not None:
                if got.frame.command == command:    # a stray answer for our frame id is not ours
                    return got.frame
            return None
        finally:
            self._forget(keys)

    def at_number(self, command: str, timeout: float) -> int | None:
        """One setting as a number; None if the radio did not answer, refused, or sent no value."""
        rsp = self.at_query(command, timeout)
        return None if rsp is None else rsp.number

    def coordinator_ieee(self, timeout: float) -> tuple[int | None, str]:
        """IEEE_addr_req to the coordinator: (its IEEE address, "") or (None, what went wrong)."""
        frame_id, seq = self._next_frame_id(), self._next_zdo_seq()
        keys = [("tx", frame_id), ("zdo", zdo.IEEE_ADDR_REQ | zdo.RESPONSE_BIT, seq)]
        self._request(wire_requests.coordinator_ieee_addr(frame_id, seq), keys)
        deadline = self.clock.monotonic() + timeout
        try:
            while True:
                got = self.wait(keys, deadline)
                if got is None:
                    return None, f"did not answer IEEE_addr_req within {timeout:g} s"
                if isinstance(got.frame, TxStatus):
                    if not got.frame.ok:
                        return None, f"could not be reached ({_delivery(got.frame)})"
                    continue
                try:
                    rsp = zdo.parse_ieee_addr_rsp(got.frame.payload)
                except zdo.ZdoError:
                    continue            # damaged; a good answer may still come before the deadline
                if rsp.status != zdo.STATUS_SUCCESS:
                    return None, f"answered IEEE_addr_req with ZDO status 0x{rsp.status:02x}"
                return rsp.ieee, ""
        finally:
            self._forget(keys)

    def match_simple_metering(self, timeout: float) -> list[tuple[int, tuple[int, ...]]]:
        """Every (nwk, endpoints) that answers the Match_Desc broadcast within `timeout`."""
        frame_id, seq = self._next_frame_id(), self._next_zdo_seq()
        keys = [("zdo", zdo.MATCH_DESC_REQ | zdo.RESPONSE_BIT, seq)]
        self._request(wire_requests.match_simple_metering(frame_id, seq), keys)
        deadline = self.clock.monotonic() + timeout
        found: dict[int, tuple[int, ...]] = {}
        try:
            while (got := self.wait(keys, deadline)) is not None:
                try:
                    rsp = zdo.parse_match_desc_rsp(got.frame.payload)
                except zdo.ZdoError:
                    continue
                if rsp.status == zdo.STATUS_SUCCESS and rsp.endpoints:
                    # The responder's own address is in the frame header; the payload's nwk-of-interest
                    # is the address the match is about, and for a coordinator answering for itself
                    # they agree.
                    found.setdefault(got.frame.src16, rsp.endpoints)
        finally:
            self._forget(keys)
        return list(found.items())

    # ---- the one ZCL exchange: Read Attributes on Simple Metering -------------------------------
    def zcl_read(self, meter, attributes: tuple[zcl.Attribute, ...], timeout: float,
                 on_grid: bool = False) -> ZclRead:
        """Send one Read Attributes request to `meter` and wait for its TX status and its response.

        A reply is ours when it comes from the meter's nwk/endpoint on Simple Metering and carries our ZCL
        sequence number (or one that cannot be located, in a damaged frame); an older sequence number is
        a late reply to an earlier query, not awaited. `on_grid`: a poll, spaced by the schedule.
        """
        frame_id, seq = self._next_frame_id(), self._next_zcl_seq()
        keys = [("tx", frame_id), ("zcl", meter.nwk, meter.endpoint, seq)]
        self._request(wire_requests.read_meter(frame_id, seq, Meter(meter.ieee, meter.endpoint), attributes),
                      keys, on_grid)
        sent = self.clock.monotonic()
        try:
            return self._zcl_outcome(keys, seq, sent, timeout)
        finally:
            self._forget(keys)

    def _zcl_outcome(self, keys: list[Key], seq: int, sent: float, timeout: float) -> ZclRead:
        while True:
            got = self.wait(keys, sent + timeout)
            if got is None:
                return ZclRead(LostCause.TIMEOUT, f"no reply within {timeout:g} s", sent, {})
            frame = got.frame
            if isinstance(frame, TxStatus):
                if frame.ok:
                    continue
                return ZclRead(LostCause.TX_FAILED, _delivery(frame), sent, {}, got)
            try:
                rsp = zcl.parse_response(frame.payload)
            except zcl.ZclError as exc:
                return ZclRead(LostCause.MALFORMED, str(exc), sent, {}, got)
            if rsp.seq != seq:
                continue        # a late reply that only looked like ours while damaged
            if rsp.command == zcl.CMD_DEFAULT_RESPONSE:
                return ZclRead(LostCause.ZCL_STATUS, f"Default Response status 0x{rsp.default_status:02x}",
                               sent, {}, got)
            return ZclRead(None, "", sent, rsp.results, got)

    # ---- receiving: the one path every frame from the radio takes --------------------------------
    def wait(self, keys: list[Key], deadline: float) -> Received | None:
        """The next frame routed to one of `keys`, reading the port until `deadline` (monotonic).

        Raises RadioReset when a reset/disassociation status arrives (after the awaited frames that came
        before it), and lets the link's LinkLost and Stopping through.
        """
        while True:
            for key in keys:
                queue = self._awaiting.get(key)
                if queue:
                    return queue.popleft()
            if self._reset is not None:
                reset, self._reset = self._reset, None
                self._awaiting.clear()  # anything awaited belongs to the old session
                raise reset
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return None
            data = self.link.read(remaining)
            if data:
                self._route(data, self.clock.wall(), self.clock.monotonic())

    def drain(self, deadline: float) -> None:
        """Keep reading (and reacting to modem status) until `deadline`."""
        self.wait([], deadline)

    def _route(self, data: bytes, wall: float, mono: float) -> None:
        for raw in self.decoder.feed(data):
            if self._reset is not None:
                return              # frames after a reset belong to the new session: none is awaited
            try:
                frame = xbee_frames.parse(raw)
            except xbee_frames.FrameError:
                self.unparsable += 1
                continue
            if not self._trusted(frame):
                continue
            queue = self._awaiting.get(self._key(frame))
            if queue is None:
                self.unawaited += 1
            else:
                queue.append(Received(frame, wall, mono))

    def _key(self, frame: Frame) -> Key | None:
        if isinstance(frame, TxStatus):
            return ("tx", frame.frame_id)
        if isinstance(frame, ATResponse):
            return ("at", frame.frame_id)
        if not isinstance(frame, ExplicitRx):
            return None
        if frame.profile == zdo.PROFILE:
            return ("zdo", frame.cluster, frame.payload[0] if frame.payload else None)
        if frame.profile == zcl.PROFILE_SMART_ENERGY and frame.cluster == zcl.CLUSTER_SIMPLE_METERING:
            seq = _zcl_seq_of(frame.payload)
            if seq is None:     # too damaged to say whose: it goes to the read waiting on that meter
                seq = next((k[3] for k in self._awaiting if k[:3] == ("zcl", frame.src16, frame.src_endpoint)),
                           None)
            return ("zcl", frame.src16, frame.src_endpoint, seq)
        return None

    def _trusted(self, frame: Frame) -> bool:
        if isinstance(frame, ModemStatus):
            if frame.status in RESET_STATUSES:
                self._reset = RadioReset(frame.status)
            return False
        if isinstance(frame, ExplicitRx) and self.require_aps and not frame.aps_encrypted:
            self.distrusted += 1
            if self.distrusted == 1 or self.distrusted % 100 == 0:
                log.warning("ignored %d explicit RX frame(s) without APS encryption (last from 0x%04x "
                            "cluster 0x%04x); require_aps_encryption = true", self.distrusted,
                            frame.src16, frame.cluster)
            return False
        return True


def _delivery(status: TxStatus) -> str:
    words = xbee_frames.DELIVERY_STATUS.get(status.delivery, "unknown")
    return f"delivery status 0x{status.delivery:02x} ({words})"


def _zcl_seq_of(payload: bytes) -> int | None:
    """The sequence number of a ZCL frame that may not parse, if it can be located at all."""
    if not payload:
        return None
    at = 3 if payload[0] & zcl.FC_MANUFACTURER else 1
    return payload[at] if len(payload) > at else None
