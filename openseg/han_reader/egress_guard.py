"""The egress guard: the only holder of the serial port's write, the allow-list, and the pace law.

Auditors: this file is the whole of it (SECURITY.md §3 maps each claim to these lines and their tests).

**One capability to write.** `link.SerialLink` (the view every other module gets) reads through a
descriptor opened O_RDONLY; the write-capable port object is handed to `EgressGuard.attach` when the port
opens and kept in a closure here, never in an attribute. No other module holds a path to it.

**The allow-list**: exactly the frames the HAN builds (`wire_requests.py`, one builder per request), and
nothing wider. `check` parses every frame itself rather than trusting those builders:

  (a) a local AT command (0x08) with no parameter, for a command in AT_QUERIES;
  (b) one of the two ZDO requests in ZDO_REQUESTS, byte for byte but for the transaction sequence
      number, to its one destination, radius 0, without APS encryption (ZDO uses network security only;
      a broadcast cannot carry APS encryption at all);
  (c) a ZCL global Read Attributes (frame control 0x00, command 0x00) of attributes in
      METERING_ATTRIBUTES, each at most once, on Simple Metering / Smart Energy, unicast to the meter
      discovery found (its IEEE address, network address 0x0000, its endpoint) from our endpoint 0x5E,
      radius 0, with the APS-encryption transmit option and nothing else.

**The pace law**: an explicit frame (every ZDO and ZCL frame goes to or reaches the meter) leaves at
least 0.9 x the poll interval after the previous one, always. The HAN aims at a whole interval
(`explicit_free_at`); the tenth below it is for the polls, which follow the schedule's fixed grid: a poll
the loop sent a little late must not push every later poll as late (the grid is regained instead). AT
queries stay on the serial line (the radio answers them itself) and are not paced.

Everything else raises EgressRefused, is logged and counted, and never reaches the port.
"""
from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Callable, Protocol

from . import xbee_frames
from .clock import Clock
from .link import LinkLost


class Kind(enum.StrEnum):
    AT_QUERY = "at-query"
    ZDO_DISCOVERY = "zdo-discovery"
    ZCL_READ = "zcl-read"


# Each AT query the code sends, and why (service = every start; --check = the installer's diagnosis).
AT_QUERIES = {
    "AP": "service, --check: the API mode must be 2 (escaped)",
    "AO": "service, --check: API option bit 0 (explicit receive frames) must be set",
    "AI": "service, --check: whether the radio has joined the utility's network",
    "SH": "service, --check: the radio's IEEE address, high half (the utility admits the radio by it)",
    "SL": "service, --check: the radio's IEEE address, low half",
    "VR": "--check: the firmware version (warn unless Smart Energy router firmware)",
    "HV": "--check: the hardware version, for the installer's report",
    "EE": "--check: whether encryption is enabled",
    "MY": "--check: the radio's network address once joined",
}

PROFILE_ZDO = 0x0000
PROFILE_SMART_ENERGY = 0x0109
CLUSTER_SIMPLE_METERING = 0x0702
HOST_ENDPOINT = 0x5E
METER_NWK = 0x0000                 # in Smart Energy the meter is the coordinator (docs/han-protocol.md)
TX_OPTIONS_ZDO = 0x00
TX_OPTIONS_ZCL = xbee_frames.TX_OPT_APS_ENCRYPTION
ZCL_FRAME_CONTROL = 0x00           # global, no manufacturer code, client to server, default response on
ZCL_READ_ATTRIBUTES = 0x00
PACE_FLOOR = 0.9                   # x the poll interval: the least time between two frames to the meter


@dataclass(frozen=True)
class ZdoRequest:
    name: str
    reason: str
    dest64: int
    dest16: int
    body: bytes          # the payload after the transaction sequence number, byte for byte


ZDO_REQUESTS = {
    # ZigBee spec 2.4.3.1.2: NWKAddrOfInterest(2) RequestType(1) StartIndex(1): 5 bytes with the seq.
    0x0001: ZdoRequest("IEEE_addr_req", "the coordinator's (meter's) IEEE address, to read it by unicast",
                       xbee_frames.COORDINATOR_64, METER_NWK, bytes(4)),
    # 2.4.3.1.7: NWKAddrOfInterest(2) ProfileID(2) NumIn(1) In(2) NumOut(1): 9 bytes with the seq. A
    # broadcast, because which node serves Simple Metering at which endpoint is what it asks.
    0x0006: ZdoRequest("Match_Desc_req", "which node offers Simple Metering (0x0702), at which endpoint",
                       xbee_frames.BROADCAST_64, xbee_frames.BROADCAST_RX_ON_IDLE_16,
                       bytes.fromhex("fdff" "0901" "01" "0207" "00")),
}

# Each Simple Metering attribute the code reads, and why.
METERING_ATTRIBUTES = {
    0x0000: "CurrentSummationDelivered: the energy reading of every poll",
    0x0001: "CurrentSummationReceived: energy exported, read with every poll",
    0x0400: "InstantaneousDemand: the power reading of every poll",
    0x0300: "UnitOfMeasure: scaling, read after discovery (must be kW/kWh)",
    0x0301: "Multiplier: scaling",
    0x0302: "Divisor: scaling",
    0x0303: "SummationFormatting: scaling",
    0x0304: "DemandFormatting: scaling",
    0x0306: "MeteringDeviceType: scaling (must be electric)",
}

_EXPLICIT_HEADER = struct.Struct(">BBQHBBHHBB")   # type, id, dest64, dest16, src-ep, dst-ep, cluster,
                                                  # profile, radius, options


class EgressRefused(Exception):
    """A frame that is not one of the allowed requests, or would break the pace; it was not sent."""


@dataclass(frozen=True)
class Meter:
    """Where ZCL reads may go: the meter discovery found (always at network address 0x0000)."""
    ieee: int
    endpoint: int


def check(frame: bytes, meter: Meter | None) -> Kind:
    """The kind of an allowed frame (unescaped frame data); EgressRefused for anything else."""
    if not frame:
        raise EgressRefused("empty frame")
    if frame[0] == xbee_frames.AT_COMMAND:
        return _check_at(frame)
    if frame[0] != xbee_frames.EXPLICIT_TX:
        raise EgressRefused(f"frame type 0x{frame[0]:02x} is not allowed")
    if len(frame) < _EXPLICIT_HEADER.size:
        raise EgressRefused("explicit frame shorter than its header")
    _, _, dest64, dest16, src_ep, dst_ep, cluster, profile, radius, options = \
        _EXPLICIT_HEADER.unpack_from(frame)
    if radius != 0:
        raise EgressRefused(f"radius {radius} (only 0, the network's maximum, is sent)")
    payload = frame[_EXPLICIT_HEADER.size:]
    if profile == PROFILE_ZDO:
        return _check_zdo(dest64, dest16, src_ep, dst_ep, cluster, options, payload)
    return _check_zcl(dest64, dest16, src_ep, dst_ep, cluster, profile, options, payload, meter)


def _check_at(frame: bytes) -> Kind:
    if len(frame) != 4:
        raise EgressRefused("AT command with a parameter (only queries are allowed)")
    command = frame[2:4].decode("ascii", "replace")
    if command not in AT_QUERIES:
        raise EgressRefused(f"AT command {command!r} is not on the read-only list")
    return Kind.AT_QUERY


def _check_zdo(dest64: int, dest16: int, src_ep: int, dst_ep: int, cluster: int, options: int,
               payload: bytes) -> Kind:
    request = ZDO_REQUESTS.get(cluster)
    if request is None:
        raise EgressRefused(f"ZDO cluster 0x{cluster:04x} is not a request the gateway sends")
    if (src_ep, dst_ep) != (0, 0):
        raise EgressRefused(f"{request.name} not between endpoints 0")
    if (dest64, dest16) != (request.dest64, request.dest16):
        raise EgressRefused(f"{request.name} to {dest64:016x}/0x{dest16:04x}, not to its one destination")
    if options != TX_OPTIONS_ZDO:
        raise EgressRefused(f"{request.name} with transmit options 0x{options:02x}")
    if payload[1:] != request.body:
        raise EgressRefused(f"{request.name} with a payload other than the gateway's own")
    return Kind.ZDO_DISCOVERY


def _check_zcl(dest64: int, dest16: int, src_ep: int, dst_ep: int, cluster: int, profile: int,
               options: int, payload: bytes, meter: Meter | None) -> Kind:
    if (profile, cluster) != (PROFILE_SMART_ENERGY, CLUSTER_SIMPLE_METERING):
        raise EgressRefused(f"profile 0x{profile:04x} cluster 0x{cluster:04x} is not allowed")
    if meter is None:
        raise EgressRefused("ZCL frame before discovery found the meter")
    if (dest64, dest16, src_ep, dst_ep) != (meter.ieee, METER_NWK, HOST_ENDPOINT, meter.endpoint):
        raise EgressRefused(f"ZCL frame to {dest64:016x}/0x{dest16:04x} endpoint {src_ep}->{dst_ep}, "
                            f"not to the meter")
    if options != TX_OPTIONS_ZCL:
        raise EgressRefused(f"ZCL frame with transmit options 0x{options:02x} (APS encryption only)")
    if len(payload) < 5 or len(payload) % 2 == 0:
        raise EgressRefused("ZCL frame is not a Read Attributes with whole attribute ids")
    if payload[0] != ZCL_FRAME_CONTROL:
        raise EgressRefused(f"ZCL frame control 0x{payload[0]:02x} is not a plain global request")
    if payload[2] != ZCL_READ_ATTRIBUTES:
        raise EgressRefused(f"ZCL command 0x{payload[2]:02x} is not Read Attributes")
    ids = struct.unpack(f"<{(len(payload) - 3) // 2}H", payload[3:])
    if len(set(ids)) != len(ids) or not set(ids) <= METERING_ATTRIBUTES.keys():
        raise EgressRefused(f"Read Attributes of {[hex(a) for a in ids]}, not each of the read set once")
    return Kind.ZCL_READ


class Port(Protocol):
    def write(self, data: bytes) -> object: ...
    def close(self) -> None: ...


class EgressGuard:
    """The only holder of the port's write. `attach` is handed the write-capable port at every open."""

    def __init__(self, log: Callable[[str], None], clock: Clock, interval_s: float):
        self._log = log
        self._clock = clock
        self.interval_s = interval_s
        self.sent = 0
        self.refused = 0
        self._meter: Meter | None = None
        self._last_explicit = -math.inf
        # The port lives in this closure's cell, not in an attribute, so no attribute path from the
        # guard (which Radio holds) leads to its write.
        port: Port | None = None

        def attach(new: Port | None) -> None:
            nonlocal port
            old, port = port, new
            if old is not None and old is not new:
                try:
                    old.close()
                except OSError:
                    pass    # the device is already gone; nothing left to release

        def write(data: bytes) -> None:
            if port is None:
                raise LinkLost("the serial port is not open")
            try:
                port.write(data)
            except OSError as exc:      # serial.SerialException is an OSError too
                attach(None)
                raise LinkLost(f"write failed: {exc}") from None

        def send(frame: bytes) -> Kind:
            """Check the frame and the pace, then write it: the one use of the port's write. A closure
            too, so the unchecked `write` is no attribute of the guard either."""
            now = self._clock.monotonic()
            kind = self._admit(frame, now)
            if kind is not Kind.AT_QUERY:
                # Before the write: a write that fails (a timeout, an unplugged adapter) may still have
                # put the frame on the wire, and the next frame to the meter must keep the pace from it.
                self._last_explicit = now
            write(xbee_frames.encode(frame))
            self.sent += 1
            return kind

        self.attach = attach
        self.send = send

    def aim_at(self, meter: Meter | None) -> None:
        """Discovery found the meter (or lost it): ZCL reads may go to it, and only to it."""
        self._meter = meter

    def explicit_free_at(self) -> float:
        """When the next frame to the meter is due by the HAN's aim: a whole interval after the last."""
        return self._last_explicit + self.interval_s

    def explicit_floor_at(self) -> float:
        """The earliest monotonic time the guard lets the next frame to the meter leave (the pace law)."""
        return self._last_explicit + PACE_FLOOR * self.interval_s

    def _admit(self, frame: bytes, now: float) -> Kind:
        """The frame's kind if it is allowed and keeps the pace; else it is logged, counted and refused."""
        try:
            kind = check(frame, self._meter)
            if kind is not Kind.AT_QUERY and now < self.explicit_floor_at():
                raise EgressRefused(f"pace: {now - self._last_explicit:.3f} s after the previous frame to "
                                    f"the meter, less than {PACE_FLOOR:g} x the {self.interval_s:g} s poll "
                                    f"interval")
        except EgressRefused as exc:
            self.refused += 1
            self._log(f"egress-guard: REFUSED frame {frame[:32].hex()}: {exc}")
            raise
        return kind
