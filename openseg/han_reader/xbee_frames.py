"""XBee API framing (escaped mode, AP=2) and the few frame types the gateway uses. Pure: no I/O.

Why our own codec instead of python-xbee: that package's reader is a non-daemon thread polling every
10 ms, drops bad-checksum frames silently (so corruption on the radio link could not be counted) and
forgets escaped mode after an empty frame. Its framing is small enough that an own decoder of ~100
lines is easier to audit than a wrapper around those limits. `xbee` (python-xbee 2.3.2) stays as the
independent reference: the tests encode with one and decode with the other, and the emulator speaks
through it, so every integration test cross-checks the two implementations.

Layout of every frame: 0x7E, length (2 bytes BE), frame data, checksum; in escaped mode every byte
after the delimiter that is 0x7E 0x7D 0x11 0x13 goes out as 0x7D, byte ^ 0x20.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

START = 0x7E
ESCAPE = 0x7D
XON, XOFF = 0x11, 0x13
_SPECIAL = frozenset((START, ESCAPE, XON, XOFF))

# The longest explicit RX frame we accept: 18 header bytes + payload. A Smart Energy APS payload is far
# below 128 bytes; anything claiming more is line noise, and bounding it keeps a garbage length from
# making the reader wait for tens of kilobytes that never come.
MAX_FRAME_DATA = 255

AT_COMMAND = 0x08
AT_RESPONSE = 0x88
EXPLICIT_TX = 0x11
EXPLICIT_RX = 0x91
TX_STATUS = 0x8B
MODEM_STATUS = 0x8A

TX_OPT_APS_ENCRYPTION = 0x20
RX_OPT_APS_ENCRYPTED = 0x20

MODEM_HARDWARE_RESET = 0x00
MODEM_WATCHDOG_RESET = 0x01
MODEM_JOINED = 0x02
MODEM_DISASSOCIATED = 0x03

COORDINATOR_64 = 0x0000000000000000
BROADCAST_64 = 0x000000000000FFFF
BROADCAST_RX_ON_IDLE_16 = 0xFFFD

# Association indication (AT AI) codes, in the words an installer needs.
AI_CODES = {
    0x00: "joined and authenticated",
    0x21: "scan found no PANs",
    0x22: "scan found no valid PAN for the current SC and ID settings",
    0x23: "valid PAN found but joining is not allowed (ask the utility to permit joining)",
    0x24: "no joinable beacons were found",
    0x25: "unexpected state, node should not be attempting to join at this time",
    0x27: "node joining attempt failed",
    0x2A: "coordinator start attempt failed",
    0x2B: "checking for an existing coordinator",
    0x2C: "attempt to leave the network failed",
    0xAB: "attempted to join a device that did not respond",
    0xAC: "secure join error: network security key received unsecured",
    0xAD: "secure join error: network security key not received",
    0xAF: "secure join error: preconfigured link key does not match the utility's (install code)",
    0xFF: "scanning for a ZigBee network",
}

DELIVERY_STATUS = {
    0x00: "success", 0x01: "MAC ACK failure", 0x02: "CCA failure", 0x15: "invalid destination endpoint",
    0x21: "network ACK failure", 0x22: "not joined to network", 0x23: "self-addressed",
    0x24: "address not found", 0x25: "route not found", 0x26: "broadcast source failed to hear a neighbor",
    0x2B: "invalid binding table index", 0x2C: "resource error", 0x2D: "attempted broadcast with APS "
    "transmission", 0x2E: "attempted unicast with APS transmission, but EE=0", 0x32: "resource error",
    0x74: "data payload too large", 0x75: "indirect message unrequested",
}


def checksum(data: bytes) -> int:
    return 0xFF - (sum(data) & 0xFF)


def escape(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in _SPECIAL:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def encode(frame_data: bytes) -> bytes:
    """One complete API frame on the wire for the given frame data, escaped (the radio runs AP=2)."""
    if not 0 < len(frame_data) <= MAX_FRAME_DATA:
        raise ValueError(f"frame data must be 1..{MAX_FRAME_DATA} bytes, got {len(frame_data)}")
    body = struct.pack(">H", len(frame_data)) + frame_data + bytes((checksum(frame_data),))
    return bytes((START,)) + escape(body)


@dataclass
class DecoderStats:
    frames: int = 0
    bad_checksum: int = 0
    truncated: int = 0       # a new delimiter arrived before the frame was complete
    oversize: int = 0        # length field above MAX_FRAME_DATA
    empty: int = 0           # length field of zero
    bad_escape: int = 0      # 0x7D followed by something that was never escaped
    garbage_bytes: int = 0   # bytes outside any frame, skipped while resynchronising

    @property
    def bad_frames(self) -> int:
        return self.bad_checksum + self.truncated + self.oversize + self.empty + self.bad_escape


@dataclass
class Decoder:
    """Incremental decoder for an escaped API byte stream.

    feed() returns the frame data of every good frame completed by the new bytes. Every kind of damage
    is counted in `stats` rather than raised: bytes from a radio are untrusted input, and a reader that
    raises on them would let line noise stop the gateway. Because an unescaped 0x7E can only be a
    delimiter in mode 2, the decoder resynchronises on the next 0x7E after any fault. Only mode 2 is
    decoded: the service refuses to run with a radio in any other API mode (discovery.check_api_modes).
    """

    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)   # unescaped bytes after the delimiter
    _in_frame: bool = False
    _pending_escape: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for b in data:
            if b == START:
                if self._in_frame:
                    self.stats.truncated += 1
                self._start()
                continue
            if not self._in_frame:
                self.stats.garbage_bytes += 1
                continue
            if self._pending_escape:
                self._pending_escape = False
                b ^= 0x20
                if b not in _SPECIAL:
                    self.stats.bad_escape += 1
                    self._in_frame = False
                    continue
            elif b == ESCAPE:
                self._pending_escape = True
                continue
            self._buf.append(b)
            frame = self._complete()
            if frame is not None:
                frames.append(frame)
        return frames

    def _start(self) -> None:
        self._buf.clear()
        self._in_frame = True
        self._pending_escape = False

    def _complete(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length = (buf[0] << 8) | buf[1]
        if length == 0:
            self.stats.empty += 1
            self._in_frame = False
            return None
        if length > MAX_FRAME_DATA:
            self.stats.oversize += 1
            self._in_frame = False
            return None
        if len(buf) < length + 3:
            return None
        data = bytes(buf[2:2 + length])
        self._in_frame = False
        if checksum(data) != buf[2 + length]:
            self.stats.bad_checksum += 1
            return None
        self.stats.frames += 1
        return data


# ---- frame types ---------------------------------------------------------------------------------

class FrameError(ValueError):
    """Frame data that is not a well-formed frame of the type its first byte claims."""


@dataclass(frozen=True)
class ATCommand:
    """A local AT query: the command alone, never a parameter (which would set or do something)."""
    frame_id: int
    command: str

    def encode(self) -> bytes:
        cmd = self.command.encode("ascii")
        if len(cmd) != 2:
            raise ValueError("AT command must be two ASCII characters")
        return bytes((AT_COMMAND, self.frame_id)) + cmd


@dataclass(frozen=True)
class ATResponse:
    frame_id: int
    command: str
    status: int
    value: bytes

    @property
    def number(self) -> int | None:
        """The value as the unsigned big-endian number AT settings are; None if refused or empty."""
        if self.status != 0 or not self.value:
            return None
        return int.from_bytes(self.value, "big")


@dataclass(frozen=True)
class ExplicitTx:
    frame_id: int
    dest64: int
    dest16: int
    src_endpoint: int
    dst_endpoint: int
    cluster: int
    profile: int
    payload: bytes
    radius: int = 0
    options: int = TX_OPT_APS_ENCRYPTION

    def encode(self) -> bytes:
        return (struct.pack(">BBQHBBHHBB", EXPLICIT_TX, self.frame_id, self.dest64, self.dest16,
                            self.src_endpoint, self.dst_endpoint, self.cluster, self.profile,
                            self.radius, self.options) + self.payload)


@dataclass(frozen=True)
class ExplicitRx:
    src64: int
    src16: int
    src_endpoint: int
    dst_endpoint: int
    cluster: int
    profile: int
    options: int
    payload: bytes

    @property
    def aps_encrypted(self) -> bool:
        return bool(self.options & RX_OPT_APS_ENCRYPTED)


@dataclass(frozen=True)
class TxStatus:
    frame_id: int
    dest16: int
    retries: int
    delivery: int
    discovery: int

    @property
    def ok(self) -> bool:
        return self.delivery == 0x00


@dataclass(frozen=True)
class ModemStatus:
    status: int


@dataclass(frozen=True)
class Unknown:
    frame_type: int
    data: bytes


Frame = ATResponse | ExplicitRx | TxStatus | ModemStatus | Unknown

_EXPLICIT_RX_HEADER = struct.Struct(">QHBBHHB")


def parse(data: bytes) -> Frame:
    """Frame data (as the Decoder returns it) -> a typed frame. Raises FrameError when too short."""
    if not data:
        raise FrameError("empty frame")
    kind = data[0]
    if kind == AT_RESPONSE:
        if len(data) < 5:
            raise FrameError("AT response shorter than 5 bytes")
        try:
            command = data[2:4].decode("ascii")
        except UnicodeDecodeError:
            raise FrameError("AT response with a non-ASCII command") from None
        return ATResponse(data[1], command, data[4], bytes(data[5:]))
    if kind == EXPLICIT_RX:
        if len(data) < 1 + _EXPLICIT_RX_HEADER.size:
            raise FrameError("explicit RX shorter than its header")
        fields = _EXPLICIT_RX_HEADER.unpack_from(data, 1)
        return ExplicitRx(*fields, payload=bytes(data[1 + _EXPLICIT_RX_HEADER.size:]))
    if kind == TX_STATUS:
        if len(data) != 7:
            raise FrameError("TX status must be 7 bytes")
        fid, dest16, retries, delivery, discovery = struct.unpack(">BHBBB", data[1:])
        return TxStatus(fid, dest16, retries, delivery, discovery)
    if kind == MODEM_STATUS:
        if len(data) != 2:
            raise FrameError("modem status must be 2 bytes")
        return ModemStatus(data[1])
    return Unknown(kind, bytes(data))


def format_ieee(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(8, "big"))
