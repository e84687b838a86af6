"""An in-process XBee SE radio joined to a Smart Energy meter, for unit tests of the HAN process.

It stands where `link.SerialLink` stands (open/close/read/sleep; at every open it hands a port to
`hand_over`, the egress guard's `attach`, whose writes arrive in `receive`), answers frames the way
docs/han-protocol.md says, and lives in a `FakeClock`'s time: `read(timeout)` advances the clock to the
next thing that happens instead of sleeping, so an hour of polling takes milliseconds. Scripted events
(`at(t, action)`) reset the radio, cut the meter's power, unplug the port or send SIGTERM at exact times.

It judges and frames nothing with the code under test: the host's bytes are decoded by the emulator's
decoder and every frame is classified by the emulator's classifier into `frame_log` (damaged frames
too, as "not-a-read"), as the emulator's frame log does, so a test can assert that nothing but reads
ever left; its answers are framed by python-xbee (through the emulator's api_frames) and its attribute
records encoded from the emulator's ZCL type table, never by han_reader's codecs.

Why a second radio model beside the emulator's (emulator/openseg_emulator/): the emulator is the process-level
model, a separate program on a real pty in real time, with its own meter physics (a household load
integrated into registers); the integration and system tests drive the real openseg-han against it.
This fake is the unit-level double of the same radio: it runs inside the test's thread on a controlled
clock, and scripts faults at exact instants and for exact polls (drop, corrupt, TX failure, Default
Response, a malformed or hand-made reply to the next poll; several meters at chosen addresses; a
coordinator that does not answer), which the loop's unit tests need to be deterministic and fast and
which a process on a pty cannot give. What decides whether the host behaved, the classifier and the
framing, is the emulator's in both.
"""
from __future__ import annotations

import heapq
import itertools
import struct
from dataclasses import dataclass, field
from typing import Callable

from openseg.han_reader.link import LinkLost, Stopping
from openseg_emulator import api_frames as af
from openseg_emulator import classify, metering

RADIO_IEEE = 0x0013A20040A1B2C3
METER_IEEE = 0x00078100000ABCDE
ZDO_PROFILE = 0x0000
IEEE_ADDR_REQ, MATCH_DESC_REQ = 0x0001, 0x0006
POLL_ATTRIBUTES = {metering.CURRENT_SUMMATION_DELIVERED, metering.CURRENT_SUMMATION_RECEIVED,
                   metering.INSTANTANEOUS_DEMAND}


class FakeClock:
    def __init__(self, mono: float = 5000.0, wall: float = 1_750_000_000.0):
        self.now = mono
        self._wall_offset = wall - mono

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._wall_offset

    def advance_to(self, t: float) -> None:
        self.now = max(self.now, t)

    def step_wall(self, dt: float) -> None:
        """The wall clock steps (NTP, a person setting the date); monotonic time does not."""
        self._wall_offset += dt

    def stall(self, dt: float) -> None:
        """The process is frozen for dt (SIGSTOP, swap storm): both clocks move, the loop does not."""
        self.now += dt


@dataclass
class Node:
    """A ZigBee node offering Simple Metering (a meter), at a network address and endpoint."""
    nwk: int = 0x0000
    endpoint: int = 9
    ieee: int = METER_IEEE
    powered: bool = True
    summation: int = 123_456_789          # raw CurrentSummationDelivered
    summation_step: int = 7               # added after every answered poll, like a running meter
    demand: int = 1_500                   # raw InstantaneousDemand
    received: int = 4_321                 # raw CurrentSummationReceived (unsupported: put 0x0001 below)
    received_step: int = 2
    unit: int = 0x00
    multiplier: int = 3
    divisor: int = 10_000
    summation_formatting: int = 0x33
    demand_formatting: int = 0x2B
    device_type: int = 0x00
    unsupported: set[int] = field(default_factory=set)   # attribute ids answered with status 0x86

    def attribute(self, attr_id: int) -> bytes:
        """One Read Attributes Response record."""
        if attr_id in self.unsupported or attr_id not in metering.ATTRIBUTE_TYPES:
            return struct.pack("<HB", attr_id, metering.UNSUPPORTED_ATTRIBUTE)
        type_id = metering.ATTRIBUTE_TYPES[attr_id]
        value = {0x0000: self.summation, 0x0001: self.received, 0x0400: self.demand, 0x0300: self.unit, 0x0301: self.multiplier,
                 0x0302: self.divisor, 0x0303: self.summation_formatting, 0x0304: self.demand_formatting,
                 0x0306: self.device_type}[attr_id]
        return struct.pack("<HBB", attr_id, metering.SUCCESS, type_id) + metering.encode_value(type_id, value)


class _Port:
    """The write-capable port the fake hands to the guard."""

    def __init__(self, radio: "FakeRadio"):
        self._radio = radio

    def write(self, data: bytes) -> None:
        self._radio.receive(data)

    def close(self) -> None:
        pass


class FakeRadio:
    port = "/dev/fake-xbee"
    baudrate = 9600

    def __init__(self, clock: FakeClock, meters: list[Node] | None = None, *, reply_delay: float = 0.05,
                 ap: int = 2, ao: int = 1, vr: int = 0x3364, hv: int = 0x1E46, aps: bool = True,
                 coordinator_answers: bool = True):
        self.clock = clock
        self.meters = [Node()] if meters is None else meters
        self.reply_delay = reply_delay
        self.settings = {"AP": ap, "AO": ao, "VR": vr, "HV": hv, "EE": 1, "MY": 0x4A2F, "AI": 0x00,
                         "SH": RADIO_IEEE >> 32, "SL": RADIO_IEEE & 0xFFFFFFFF}
        self.aps = aps
        self.coordinator_answers = coordinator_answers
        self.is_open = False
        self.present = True
        self.opens = 0
        self.open_attempts = 0
        self.frame_log: list[dict] = []     # every frame the host wrote, classified like the emulator's
        self.answers: list[dict] = []       # every poll the meter answered: seq, raw values, time
        # Faults for the next ZCL poll reads: each entry is "drop", "corrupt", "tx-fail",
        # "default-response", "malformed" or a callable(seq) -> payload.
        self.poll_faults: list = []
        self.silent = False                 # answer no frame at all (a radio in transparent mode)
        self.hand_over: Callable | None = None   # EgressGuard.attach, given the port at every open
        self._decoder = af.StreamDecoder()
        self._outbox: list[tuple[float, int, bytes]] = []
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    # ---- the link interface ----------------------------------------------------------------------
    def open(self) -> None:
        self.open_attempts += 1
        if not self.present:
            raise LinkLost(f"cannot open {self.port}: [Errno 2] No such file or directory")
        self.is_open = True
        self.opens += 1
        if self.hand_over is not None:
            self.hand_over(_Port(self))

    def close(self) -> None:
        if self.is_open and self.hand_over is not None:
            self.hand_over(None)
        self.is_open = False

    def read(self, timeout: float) -> bytes:
        if not self.is_open:
            raise LinkLost(f"{self.port} is not open")
        deadline = self.clock.now + timeout
        while True:
            t_event = self._events[0][0] if self._events else float("inf")
            t_out = self._outbox[0][0] if self._outbox else float("inf")
            if min(t_event, t_out) > deadline:
                self.clock.advance_to(deadline)
                return b""
            if t_event <= t_out:
                _, _, action = heapq.heappop(self._events)
                self.clock.advance_to(t_event)
                action()
                if not self.is_open:
                    raise LinkLost(f"{self.port}: [Errno 5] Input/output error")
                continue
            self.clock.advance_to(t_out)
            data = b""
            while self._outbox and self._outbox[0][0] <= self.clock.now:
                data += heapq.heappop(self._outbox)[2]
            return data

    def sleep(self, timeout: float) -> None:
        deadline = self.clock.now + timeout
        while self._events and self._events[0][0] <= deadline:
            t, _, action = heapq.heappop(self._events)
            self.clock.advance_to(t)
            action()
        self.clock.advance_to(deadline)

    def receive(self, data: bytes) -> None:
        """Bytes the host wrote (through the port handed to the guard)."""
        if not self.is_open:
            raise LinkLost(f"{self.port} is not open")
        for item in self._decoder.feed(data):
            if isinstance(item, af.Damaged):    # the host's framing is wrong: not a read either
                self.frame_log.append({"t": self.clock.now, "class": classify.NOT_A_READ, "frame": item.raw,
                                       "damaged": item.reason})
                continue
            kind, _ = classify.classify(item.data)
            self.frame_log.append({"t": self.clock.now, "class": kind, "frame": item.data})
            if not self.silent:
                self._handle(item.data)

    # ---- scripted events -------------------------------------------------------------------------
    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (t, next(self._order), action))

    def stop(self) -> None:
        """What SIGTERM does to the real link's wait."""
        raise Stopping()

    def reset(self, join_delay: float = 0.3) -> None:
        """A hardware reset: modem status 0x00, scanning for join_delay, then joined (0x02)."""
        self._outbox.clear()
        self.emit(af.modem_status(af.MODEM_HARDWARE_RESET), delay=0.001)
        self.settings["AI"] = 0xFF

        def joined():
            self.settings["AI"] = 0x00
            self.emit(af.modem_status(af.MODEM_JOINED), delay=0.0)
        self.at(self.clock.now + join_delay, joined)

    def vanish(self) -> None:
        """The USB device is unplugged: reads fail now, opens fail until `reappear`."""
        self.present = False
        self.is_open = False
        self._outbox.clear()

    def reappear(self) -> None:
        self.present = True

    # ---- radio behaviour -------------------------------------------------------------------------
    def emit(self, frame_data: bytes, delay: float | None = None, wire: bytes | None = None) -> None:
        t = self.clock.now + (self.reply_delay if delay is None else delay)
        heapq.heappush(self._outbox, (t, next(self._order), wire if wire is not None
                                      else af.encode(frame_data)))

    def inject(self, wire: bytes, delay: float = 0.0) -> None:
        """Raw bytes on the line (noise, half frames) at now + delay."""
        heapq.heappush(self._outbox, (self.clock.now + delay, next(self._order), wire))

    def _handle(self, frame: bytes) -> None:
        if frame[0] == af.AT_COMMAND and len(frame) >= 4:
            self._at(frame[1], frame[2:4].decode("ascii", "replace"))
        elif frame[0] == af.EXPLICIT_TX and len(frame) >= 20:
            (_, fid, dest64, dest16, src_ep, dst_ep, cluster, profile, _, options) = \
                struct.unpack_from(">BBQHBBHHBB", frame)
            self._explicit(fid, dest16, dst_ep, cluster, profile, frame[20:])

    def _at(self, fid: int, cmd: str) -> None:
        sizes = {"VR": 2, "HV": 2, "AP": 1, "AO": 1, "AI": 1, "EE": 1, "MY": 2, "SH": 4, "SL": 4}
        if cmd in sizes:
            value = self.settings[cmd].to_bytes(sizes[cmd], "big")
            self.emit(af.at_response(fid, cmd.encode(), 0, value))
        else:
            self.emit(af.at_response(fid, cmd.encode(), 2))

    def _tx_status(self, fid: int, dest16: int, delivery: int) -> None:
        self.emit(af.tx_status(fid, dest16, 0, delivery, 0), delay=0.01)

    def _rx(self, node_ieee: int, nwk: int, src_ep: int, dst_ep: int, cluster: int, profile: int,
            payload: bytes) -> bytes:
        options = af.RX_ACKNOWLEDGED | (af.RX_APS_ENCRYPTED if self.aps else 0)
        return af.explicit_rx(node_ieee, nwk, src_ep, dst_ep, cluster, profile, options, payload)

    def _explicit(self, fid: int, dest16: int, dst_ep: int, cluster: int, profile: int, payload: bytes):
        if self.settings["AI"] != 0x00:
            self._tx_status(fid, dest16, 0x22)      # not joined to network
            return
        if profile == ZDO_PROFILE:
            self._tx_status(fid, dest16, 0x00)
            seq = payload[0]
            if cluster == IEEE_ADDR_REQ and dest16 == 0x0000 and self.coordinator_answers:
                coordinator = next((m for m in self.meters if m.nwk == 0x0000), None)
                ieee = coordinator.ieee if coordinator else 0x000781000000C00D
                self.emit(self._rx(ieee, 0x0000, 0, 0, 0x8001, 0,
                                   struct.pack("<BBQH", seq, 0, ieee, 0x0000)))
            elif cluster == MATCH_DESC_REQ:
                for m in self.meters:
                    if m.powered:
                        self.emit(self._rx(m.ieee, m.nwk, 0, 0, 0x8006, 0,
                                           struct.pack("<BBHBB", seq, 0, m.nwk, 1, m.endpoint)))
            return
        meter = next((m for m in self.meters if m.nwk == dest16 and m.endpoint == dst_ep), None)
        if meter is None or not meter.powered:
            self._tx_status(fid, dest16, 0x21 if meter else 0x24)
            return
        seq = payload[1]
        attrs = [struct.unpack_from("<H", payload, 3 + 2 * i)[0] for i in range((len(payload) - 3) // 2)]
        is_poll = set(attrs) == POLL_ATTRIBUTES
        fault = self.poll_faults.pop(0) if is_poll and self.poll_faults else None
        if fault == "tx-fail":
            self._tx_status(fid, dest16, 0x21)
            return
        self._tx_status(fid, dest16, 0x00)
        if fault == "drop":
            return
        if fault == "default-response":
            body = bytes((0x18, seq, metering.DEFAULT_RESPONSE, 0x00, metering.UNSUPPORTED_ATTRIBUTE))
        elif fault == "malformed":
            body = bytes((0x18, seq, metering.READ_ATTRIBUTES_RESPONSE, 0x00, 0x00, 0x00, 0x25, 1, 2))
        elif callable(fault):
            body = fault(seq)
        else:
            body = (bytes((0x18, seq, metering.READ_ATTRIBUTES_RESPONSE))
                    + b"".join(map(meter.attribute, attrs)))
        frame = self._rx(meter.ieee, meter.nwk, meter.endpoint, 0x5E, cluster, profile, body)
        wire = None
        if fault == "corrupt":      # a wrong checksum, escaped like any other byte
            wire = af.encode_with_checksum(frame, (af.checksum(frame) + 1) & 0xFF)
        self.emit(frame, wire=wire)
        if is_poll and fault is None:
            self.answers.append({"seq": seq, "summation": meter.summation, "demand": meter.demand,
                                 "received": None if 0x0001 in meter.unsupported else meter.received,
                                 "t": self.clock.now + self.reply_delay})
            meter.summation += meter.summation_step
            meter.received += meter.received_step


def wire_radio(hw: FakeRadio, interval_s: float = 7.0, log=None, require_aps: bool = True):
    """A Radio on the fake hardware, with an egress guard holding its port, as main.py wires them."""
    from openseg.han_reader.egress_guard import EgressGuard
    from openseg.han_reader.radio import Radio
    guard = EgressGuard(log or (lambda line: None), hw.clock, interval_s)
    hw.hand_over = guard.attach
    return Radio(hw, guard, hw.clock, require_aps)
