"""Request and response over the XBee link: frame ids, AT queries, explicit frames, and waiting.

Everything the radio sends passes through `wait`, whoever is waiting and for what, so a modem status
(reset, watchdog, disassociated) is seen even while the loop waits for a slot or a meter reply: it is
raised as `RadioReset` and the main loop goes back to joining. Frames nobody asked for (a reply that
arrived after its timeout, a TX status for an old frame id) are dropped here without fuss.

Bytes from the radio are untrusted: damaged frames are counted by the decoder, frames too short for
their type are counted here, and neither ever raises out of this module. With `require_aps_encryption`,
an explicit RX frame without the APS-encrypted option is ignored and counted: Smart Energy requires APS
security on the HAN, so such a frame did not come from the meter as the utility provisioned it.

Outgoing frames go to `EgressGuard.send`; this module never sees the port's write function.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from . import xbee_frames, zcl
from .clock import Clock
from .egress_guard import EgressGuard
from .xbee_frames import ATResponse, ExplicitRx, Frame, ModemStatus, TxStatus

log = logging.getLogger("openseg.han")

HOST_ENDPOINT = 0x5E          # our Smart Energy client endpoint (docs/han-protocol.md)
RESET_STATUSES = {
    xbee_frames.MODEM_HARDWARE_RESET: "hardware reset",
    xbee_frames.MODEM_WATCHDOG_RESET: "watchdog reset",
    xbee_frames.MODEM_DISASSOCIATED: "disassociated from the network",
}


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
    cause: str | None                 # None = answered; else one of messages.LOST_CAUSES
    detail: str
    sent_mono: float
    results: dict[int, zcl.AttributeResult]
    reply: Received | None = None


class Radio:
    def __init__(self, link, guard: EgressGuard, clock: Clock, require_aps_encryption: bool = True):
        self.link = link
        self.guard = guard
        self.clock = clock
        self.require_aps = require_aps_encryption
        self.decoder = xbee_frames.Decoder()
        self.unparsable = 0            # frames with a good checksum but too short for their type
        self.distrusted = 0            # explicit RX frames without APS encryption, ignored
        self._pending: deque[Received] = deque()
        self._frame_id = 0
        self._zdo_seq = 0
        self._zcl_seq = 0

    @property
    def frames_bad(self) -> int:
        return self.decoder.stats.bad_frames + self.unparsable

    def restart(self) -> None:
        """Forget any half-received frame and queued frames (after the port was reopened)."""
        self.decoder = xbee_frames.Decoder(stats=self.decoder.stats)
        self._pending.clear()

    # ---- sending -------------------------------------------------------------------------------
    def _next_frame_id(self) -> int:
        self._frame_id = self._frame_id % 255 + 1      # 1..255; 0 would suppress the response
        return self._frame_id

    def next_zdo_seq(self) -> int:
        self._zdo_seq = (self._zdo_seq + 1) & 0xFF
        return self._zdo_seq

    def next_zcl_seq(self) -> int:
        self._zcl_seq = (self._zcl_seq + 1) & 0xFF
        return self._zcl_seq

    def send_explicit(self, dest64: int, dest16: int, src_endpoint: int, dst_endpoint: int,
                      cluster: int, profile: int, payload: bytes) -> int:
        frame_id = self._next_frame_id()
        self.guard.send(xbee_frames.ExplicitTx(
            frame_id, dest64, dest16, src_endpoint, dst_endpoint, cluster, profile, payload,
            options=xbee_frames.TX_OPT_APS_ENCRYPTION).encode())
        return frame_id

    def at_query(self, command: str, timeout: float) -> ATResponse | None:
        """Ask the local radio for one setting (no parameter, ever); None if it did not answer."""
        frame_id = self._next_frame_id()
        self.guard.send(xbee_frames.ATCommand(frame_id, command).encode())
        got = self.wait(lambda f: isinstance(f, ATResponse) and f.frame_id == frame_id
                        and f.command == command, self.clock.monotonic() + timeout)
        return got.frame if got else None

    # ---- receiving -----------------------------------------------------------------------------
    def wait(self, wanted: Callable[[Frame], bool], deadline: float) -> Received | None:
        """The first frame `wanted` accepts, reading the port until `deadline` (monotonic).

        Raises RadioReset when a reset/disassociation status arrives, and lets the link's LinkLost and
        Stopping through; everything else the radio sends is screened and, if unwanted, dropped.
        """
        while True:
            while self._pending:
                got = self._pending.popleft()
                if self._trusted(got.frame) and wanted(got.frame):
                    return got
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                return None
            data = self.link.read(remaining)
            if not data:
                continue
            wall, mono = self.clock.wall(), self.clock.monotonic()
            for raw in self.decoder.feed(data):
                try:
                    frame = xbee_frames.parse(raw)
                except xbee_frames.FrameError:
                    self.unparsable += 1
                    continue
                self._pending.append(Received(frame, wall, mono))

    def drain(self, deadline: float) -> None:
        """Keep reading (and reacting to modem status) until `deadline`."""
        self.wait(lambda f: False, deadline)

    def _trusted(self, frame: Frame) -> bool:
        if isinstance(frame, ModemStatus):
            if frame.status in RESET_STATUSES:
                self._pending.clear()   # anything queued behind a reset belongs to the old session
                raise RadioReset(frame.status)
            return False
        if isinstance(frame, ExplicitRx) and self.require_aps and not frame.aps_encrypted:
            self.distrusted += 1
            if self.distrusted == 1 or self.distrusted % 100 == 0:
                log.warning("ignored %d explicit RX frame(s) without APS encryption (last from 0x%04x "
                            "cluster 0x%04x); require_aps_encryption = true", self.distrusted,
                            frame.src16, frame.cluster)
            return False
        return True

    # ---- the one ZCL exchange: Read Attributes on Simple Metering -------------------------------
    def zcl_read(self, dest64: int, dest16: int, endpoint: int, attributes: tuple[zcl.Attribute, ...],
                 timeout: float) -> ZclRead:
        """Send one Read Attributes request and wait for its TX status and its response.

        A reply is ours when it comes from dest16/endpoint on Simple Metering / Smart Energy and carries
        our ZCL sequence number; an older sequence number is a late reply to an earlier query, skipped.
        """
        seq = self.next_zcl_seq()
        frame_id = self.send_explicit(dest64, dest16, HOST_ENDPOINT, endpoint, zcl.CLUSTER_SIMPLE_METERING,
                                      zcl.PROFILE_SMART_ENERGY, zcl.read_attributes(seq, attributes))
        sent = self.clock.monotonic()
        deadline = sent + timeout

        def ours(f: Frame) -> bool:
            if isinstance(f, TxStatus):
                return f.frame_id == frame_id
            return (isinstance(f, ExplicitRx) and f.src16 == dest16 and f.src_endpoint == endpoint
                    and f.cluster == zcl.CLUSTER_SIMPLE_METERING and f.profile == zcl.PROFILE_SMART_ENERGY)

        while True:
            got = self.wait(ours, deadline)
            if got is None:
                return ZclRead("timeout", f"no reply within {timeout:g} s", sent, {})
            frame = got.frame
            if isinstance(frame, TxStatus):
                if frame.ok:
                    continue
                words = xbee_frames.DELIVERY_STATUS.get(frame.delivery, "unknown")
                return ZclRead("tx-failed", f"delivery status 0x{frame.delivery:02x} ({words})", sent, {},
                               got)
            try:
                rsp = zcl.parse_response(frame.payload)
            except zcl.ZclError as exc:
                if _zcl_seq_of(frame.payload) not in (None, seq):
                    continue        # a damaged late reply to an earlier query: not this one's fault
                return ZclRead("malformed", str(exc), sent, {}, got)
            if rsp.seq != seq:
                continue
            if rsp.command == zcl.CMD_DEFAULT_RESPONSE:
                return ZclRead("zcl-status", f"Default Response status 0x{rsp.default_status:02x}", sent, {},
                               got)
            return ZclRead(None, "", sent, rsp.results, got)


def _zcl_seq_of(payload: bytes) -> int | None:
    """The sequence number of a ZCL frame that may not parse, if it can be located at all."""
    if not payload:
        return None
    at = 3 if payload[0] & zcl.FC_MANUFACTURER else 1
    return payload[at] if len(payload) > at else None
