"""XBee API framing as the radio sees it (API mode 2, escaped). Pure: bytes in, values out.

Outgoing frames are escaped and checksummed by python-xbee's `APIFrame`, the reference implementation
the project keeps beside the host's own codec, so a host that agrees with this emulator agrees with a
second implementation too. Incoming bytes are decoded by our own small state machine instead, because
APIFrame has no resynchronisation and forgets escaped mode after an empty frame, and a radio must
survive any byte stream a buggy host can produce.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from xbee.frame import APIFrame

START = 0x7E
ESCAPE = 0x7D
ESCAPED_BYTES = frozenset((0x7E, 0x7D, 0x11, 0x13))
MAX_FRAME_DATA = 255        # docs/han-protocol.md: a longer length field is garbage
_KEEP_GARBAGE = 512         # bytes of a garbage run kept for the log; the rest are only counted

# Frame types (radio side)
AT_COMMAND = 0x08
AT_COMMAND_QUEUE = 0x09
TX_REQUEST = 0x10
EXPLICIT_TX = 0x11
REMOTE_AT = 0x17
AT_RESPONSE = 0x88
MODEM_STATUS = 0x8A
TX_STATUS = 0x8B
EXPLICIT_RX = 0x91
REMOTE_AT_RESPONSE = 0x97

# Modem status values
MODEM_HARDWARE_RESET = 0x00
MODEM_JOINED = 0x02

# TX status delivery values we produce
DELIVERY_SUCCESS = 0x00
DELIVERY_NETWORK_ACK_FAILURE = 0x21
DELIVERY_NOT_JOINED = 0x22
DELIVERY_ADDRESS_NOT_FOUND = 0x24

# RX options
RX_ACKNOWLEDGED = 0x01
RX_BROADCAST = 0x02
RX_APS_ENCRYPTED = 0x20

TX_OPT_APS_ENCRYPTION = 0x20

BROADCAST64 = 0x000000000000FFFF
UNKNOWN64 = 0xFFFFFFFFFFFFFFFE
BROADCAST16 = frozenset((0xFFFC, 0xFFFD, 0xFFFF))


def checksum(data: bytes) -> int:
    return APIFrame(data).checksum()[0]


def encode(data: bytes) -> bytes:
    """One complete escaped frame for `data` (the frame data: type byte onwards)."""
    if not 1 <= len(data) <= MAX_FRAME_DATA:
        raise ValueError(f"frame data must be 1-{MAX_FRAME_DATA} bytes, not {len(data)}")
    return APIFrame(data, escaped=True).output()


def encode_with_checksum(data: bytes, checksum_byte: int) -> bytes:
    """A well-formed escaped frame carrying a chosen (possibly wrong) checksum: for fault injection."""
    body = struct.pack(">H", len(data)) + data + bytes((checksum_byte,))
    return bytes((START,)) + APIFrame.escape(body)


@dataclass(frozen=True)
class Decoded:
    """A frame whose checksum verified: `data` is the frame data, `raw` the bytes as received."""
    data: bytes
    raw: bytes


@dataclass(frozen=True)
class Damaged:
    """Bytes that are not a valid frame: garbage between frames, a bad length, a bad checksum."""
    raw: bytes
    reason: str
    dropped: int = 0      # garbage bytes beyond those kept in `raw`


class StreamDecoder:
    """Incremental decoder of an escaped API byte stream. Never raises on input; resyncs on 0x7E."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._in_frame = False
        self._raw = bytearray()          # escaped bytes of the current frame, 0x7E included
        self._body = bytearray()         # unescaped length + data + checksum
        self._escape_next = False
        self._garbage = bytearray()
        self._garbage_dropped = 0

    def feed(self, chunk: bytes) -> list[Decoded | Damaged]:
        out: list[Decoded | Damaged] = []
        for byte in chunk:
            if byte == START:
                # An unescaped 0x7E always starts a frame, even inside one: that is the resync rule.
                self._flush_garbage(out)
                if self._in_frame:
                    out.append(Damaged(bytes(self._raw), "frame cut short by a start delimiter"))
                self._start_frame()
                continue
            if not self._in_frame:
                if len(self._garbage) < _KEEP_GARBAGE:
                    self._garbage.append(byte)
                else:
                    self._garbage_dropped += 1
                continue
            self._raw.append(byte)
            if self._escape_next:
                self._escape_next = False
                byte ^= 0x20
                if byte not in ESCAPED_BYTES:
                    self._abandon(out, f"escaped byte 0x{byte:02x} is not one that needs escaping")
                    continue
            elif byte == ESCAPE:
                self._escape_next = True
                continue
            self._body.append(byte)
            self._check_progress(out)
        # Garbage is reported per chunk so that a host that sends only junk still shows up in the log.
        self._flush_garbage(out)
        return out

    def _start_frame(self) -> None:
        self._in_frame = True
        self._raw = bytearray((START,))
        self._body = bytearray()
        self._escape_next = False

    def _abandon(self, out: list, reason: str) -> None:
        out.append(Damaged(bytes(self._raw), reason))
        self._in_frame = False

    def _check_progress(self, out: list) -> None:
        if len(self._body) == 2:
            length = struct.unpack(">H", self._body)[0]
            if not 1 <= length <= MAX_FRAME_DATA:
                self._abandon(out, f"length {length} outside 1-{MAX_FRAME_DATA}")
            return
        if len(self._body) < 3:
            return
        length = struct.unpack_from(">H", self._body)[0]
        if len(self._body) < length + 3:
            return
        data = bytes(self._body[2:2 + length])
        if (sum(data) + self._body[-1]) & 0xFF != 0xFF:
            self._abandon(out, "checksum mismatch")
            return
        out.append(Decoded(data, bytes(self._raw)))
        self._in_frame = False

    def _flush_garbage(self, out: list) -> None:
        if self._garbage or self._garbage_dropped:
            out.append(Damaged(bytes(self._garbage), "bytes outside a frame", self._garbage_dropped))
            self._garbage = bytearray()
            self._garbage_dropped = 0


# ---- frames the radio sends ------------------------------------------------------------------------

def at_response(frame_id: int, command: bytes, status: int, value: bytes = b"") -> bytes:
    return bytes((AT_RESPONSE, frame_id)) + command + bytes((status,)) + value


def modem_status(status: int) -> bytes:
    return bytes((MODEM_STATUS, status))


def tx_status(frame_id: int, dest16: int, retries: int, delivery: int, discovery: int) -> bytes:
    return struct.pack(">BBHBBB", TX_STATUS, frame_id, dest16, retries, delivery, discovery)


def explicit_rx(src64: int, src16: int, src_ep: int, dst_ep: int, cluster: int, profile: int,
                options: int, payload: bytes) -> bytes:
    return struct.pack(">BQHBBHHB", EXPLICIT_RX, src64, src16, src_ep, dst_ep, cluster, profile,
                       options) + payload


def remote_at_response(frame_id: int, dest64: int, dest16: int, command: bytes, status: int) -> bytes:
    return struct.pack(">BBQH", REMOTE_AT_RESPONSE, frame_id, dest64, dest16) + command + bytes((status,))


@dataclass(frozen=True)
class ExplicitTx:
    frame_id: int
    dest64: int
    dest16: int
    src_ep: int
    dst_ep: int
    cluster: int
    profile: int
    radius: int
    options: int
    payload: bytes

    HEADER = struct.Struct(">BBQHBBHHBB")

    @classmethod
    def parse(cls, data: bytes) -> "ExplicitTx | None":
        if len(data) < cls.HEADER.size or data[0] != EXPLICIT_TX:
            return None
        _, fid, d64, d16, sep, dep, cl, pr, rad, opt = cls.HEADER.unpack_from(data)
        return cls(fid, d64, d16, sep, dep, cl, pr, rad, opt, data[cls.HEADER.size:])
