"""A hostile XBee SE radio on a pty, for driving the real `openseg-han` as a utility's security lab would.

It shares no code with the project: its own API framing (escaped mode 2), its own frame builders and its
own verdict on what the HAN sent, written from the XBee and ZigBee documents. It answers just enough for
the HAN to join, discover the meter and poll it, and meanwhile throws the hostile corpus at it: ZDO
management requests, Write Attributes, Configure Reporting, Key Establishment, Default Responses, Price,
DRLC, Messaging and OTA commands, stray TX status and AT responses, damaged framing and addresses full of
escape bait. With `storm=True` it answers every Match_Desc with a modem-status reset (a faulty radio).

Every byte the HAN writes is recorded with the time it arrived (`written`), and decoded into `frames`.
"""
from __future__ import annotations

import os
import pty
import select
import struct
import threading
import time
import tty
from pathlib import Path

# ---- framing (API mode 2), our own --------------------------------------------------------------
FLAG, ESC = 0x7E, 0x7D
NEEDS_ESCAPE = {0x7E, 0x7D, 0x11, 0x13}


def frame(data: bytes) -> bytes:
    body = len(data).to_bytes(2, "big") + data + bytes(((0xFF - sum(data)) & 0xFF,))
    out = bytearray((FLAG,))
    for b in body:
        out += bytes((ESC, b ^ 0x20)) if b in NEEDS_ESCAPE else bytes((b,))
    return bytes(out)


def unframe(stream: bytes) -> tuple[list[bytes], int]:
    """(every checksum-valid frame data in the byte stream, number of damaged frames)."""
    frames, damaged = [], 0
    for chunk in stream.split(bytes((FLAG,)))[1:]:
        raw, i = bytearray(), 0
        while i < len(chunk):
            if chunk[i] == ESC and i + 1 < len(chunk):
                raw.append(chunk[i + 1] ^ 0x20)
                i += 2
            else:
                raw.append(chunk[i])
                i += 1
        if len(raw) < 3 or len(raw) != int.from_bytes(raw[:2], "big") + 3 or (sum(raw[2:]) & 0xFF) != 0xFF:
            damaged += 1
            continue
        frames.append(bytes(raw[2:-1]))
    return frames, damaged


# ---- the network as this radio presents it ---------------------------------------------------------
RADIO_IEEE = 0x0013A2007E7D1113          # escape bait in every byte it can be
METER_IEEE = 0x7E7D11137E7D1113
METER_ENDPOINT = 0x7E                     # bait as an endpoint too
HOST_EP = 0x5E
AT_VALUES = {b"AP": b"\x02", b"AO": b"\x01", b"SH": RADIO_IEEE.to_bytes(8, "big")[:4],
             b"SL": RADIO_IEEE.to_bytes(8, "big")[4:], b"VR": b"\x33\x62", b"HV": b"\x1a\x42", b"EE": b"\x01",
             b"MY": b"\x7e\x7d"}
METER_ATTRS = {0x0000: (0x25, 6, 1_234_567), 0x0001: (0x25, 6, 0), 0x0400: (0x2A, 3, 1500),
               0x0300: (0x30, 1, 0), 0x0301: (0x22, 3, 1), 0x0302: (0x22, 3, 1000), 0x0303: (0x18, 1, 0x33),
               0x0304: (0x18, 1, 0x2B), 0x0306: (0x18, 1, 0)}


def rx(src64: int, src16: int, src_ep: int, dst_ep: int, cluster: int, profile: int, payload: bytes,
       options: int = 0x21) -> bytes:
    """An explicit RX indicator (0x91), APS-encrypted unless told otherwise."""
    return struct.pack(">BQHBBHHB", 0x91, src64, src16, src_ep, dst_ep, cluster, profile, options) + payload


def zcl_from_meter(cluster: int, fc: int, seq: int, command: int, body: bytes = b"", options: int = 0x21) -> bytes:
    return rx(METER_IEEE, 0x0000, METER_ENDPOINT, HOST_EP, cluster, 0x0109, bytes((fc, seq, command)) + body, options)


def zdo_from(src16: int, cluster: int, payload: bytes) -> bytes:
    return rx(METER_IEEE, src16, 0, 0, cluster, 0x0000, payload)


# The hostile corpus: frame data, or raw wire bytes (damaged framing) when the entry is a tuple.
CORPUS: list = [
    zdo_from(0x0000, 0x0034, b"\x01" + bytes(8) + b"\x00"),              # Mgmt_Leave_req to us
    zdo_from(0x0000, 0x0036, b"\x02\xff\x00"),                           # Mgmt_Permit_Joining_req
    zdo_from(0x0000, 0x0021, b"\x03" + bytes(21)),                       # Bind_req
    zdo_from(0x0000, 0x0022, b"\x04" + bytes(21)),                       # Unbind_req
    zdo_from(0x0000, 0x0038, b"\x05" + bytes(5)),                        # Mgmt_NWK_Update_req
    zdo_from(0x0000, 0x0006, b"\x06\xfd\xff\x09\x01\x01\x02\x07\x00"),   # Match_Desc_req asking us
    zdo_from(0x0000, 0x0005, b"\x07\x00\x00"),                           # Active_EP_req asking us
    zcl_from_meter(0x0000, 0x00, 0x10, 0x02, b"\x10\x00\x42\x03abc"),    # Write Attributes (Basic)
    zcl_from_meter(0x0702, 0x00, 0x11, 0x02, b"\x00\x00\x25" + bytes(6)),   # Write Attributes
    zcl_from_meter(0x0702, 0x00, 0x12, 0x06, b"\x00\x00\x00\x25\x01\x00\x3c\x00" + bytes(6)),  # Config. Rep.
    zcl_from_meter(0x0702, 0x00, 0x13, 0x00, b"\x00\x00\x00\x04"),       # Read Attributes asking us
    zcl_from_meter(0x0800, 0x01, 0x14, 0x00, b"\x01\x00\x10\x1e" + bytes(48)),   # Key Establishment
    zcl_from_meter(0x0702, 0x18, 0x15, 0x0B, b"\x00\x86"),               # stray Default Response
    zcl_from_meter(0x0702, 0x18, 0x7E, 0x0B, b"\x00\x00"),               # ... with a bait sequence
    zcl_from_meter(0x0700, 0x09, 0x16, 0x00, bytes(30)),                 # Price: Publish Price
    zcl_from_meter(0x0701, 0x09, 0x17, 0x00, bytes(23)),                 # DRLC: Load Control Event
    zcl_from_meter(0x0703, 0x09, 0x18, 0x00, b"\x01\x00\x00\x00\x00" + bytes(6) + b"\x05hello"),  # Messaging
    zcl_from_meter(0x0019, 0x19, 0x19, 0x00, b"\x00\x64"),               # OTA Image Notify
    zcl_from_meter(0x0702, 0x09, 0x1A, 0x00, bytes(8)),                  # Get Profile Response (cluster)
    zcl_from_meter(0x0702, 0x18, 0x1B, 0x01, b"\x00\x00\x00\x25" + bytes(6), options=0x01),  # unencrypted
    bytes((0x8B, 0x7E, 0x00, 0x00, 0x00, 0x00, 0x00)),                   # stray TX status
    bytes((0x8B, 0x01, 0x00, 0x00, 0x00, 0x21, 0x00)),                   # stray failed TX status
    bytes((0x88, 0x7D)) + b"WR\x00",                                     # stray AT response
    bytes((0x88, 0x02)) + b"NR\x00",
    bytes((0x8A, 0x06)),                                                 # modem status: coordinator started
    bytes((0x97, 0x01)) + bytes(12) + b"D0\x00",                         # remote AT response nobody asked
    ("wire", b"\x7e\x00\x05\x88\x01AI\x00\x00"),                         # bad checksum
    ("wire", b"\x7e\x00\x40\x91\x00"),                                   # truncated by the next frame
    ("wire", b"\x7e\x00\x03\x7d\x00\x01\x02"),                           # bad escape
    ("wire", b"\x7e\xff\xff" + bytes(16)),                               # absurd length
    ("wire", b"\x7e\x00\x00\xff"),                                       # empty frame
    ("wire", b"\x7d\x7d\x11\x13\x00\x7d"),                               # bytes outside any frame
]


# ---- our verdict on what the HAN sent ------------------------------------------------------------
READ_AT = {b"AP", b"AO", b"AI", b"SH", b"SL", b"VR", b"HV", b"EE", b"MY"}
READ_ATTRS = set(METER_ATTRS)


def verdict(data: bytes) -> str:
    """'at', 'zdo' or 'zcl' for the reads the gateway may send; 'NOT A READ' for anything else."""
    if data[:1] == b"\x08" and len(data) == 4 and data[2:4] in READ_AT:
        return "at"
    if data[:1] != b"\x11" or len(data) < 20 or data[18] != 0:
        return "NOT A READ"
    dest64, dest16, src_ep, dst_ep, cluster, profile, _, options = struct.unpack(">QHBBHHBB", data[2:20])
    payload = data[20:]
    if profile == 0 and (src_ep, dst_ep, options) == (0, 0, 0):
        if cluster == 0x0001 and (dest64, dest16) == (0, 0) and payload[1:] == bytes(4):
            return "zdo"
        if cluster == 0x0006 and (dest64, dest16) == (0xFFFF, 0xFFFD) \
                and payload[1:] == bytes.fromhex("fdff090101020700"):
            return "zdo"
    if (profile, cluster, dest64, dest16, src_ep, dst_ep, options) == (0x0109, 0x0702, METER_IEEE, 0, HOST_EP,
                                                                         METER_ENDPOINT, 0x20):
        ids = [int.from_bytes(payload[i:i + 2], "little") for i in range(3, len(payload), 2)]
        if payload[:1] == b"\x00" and payload[2:3] == b"\x00" and len(payload) % 2 == 1 and ids \
                and len(set(ids)) == len(ids) and set(ids) <= READ_ATTRS:
            return "zcl"
    return "NOT A READ"


class HostileRadio:
    def __init__(self, link: Path, storm: bool = False, corpus_every_s: float = 0.05):
        self.link = link
        self.storm = storm
        self.corpus_every_s = corpus_every_s
        self.master, self._slave = pty.openpty()
        tty.setraw(self._slave)
        link.symlink_to(os.ttyname(self._slave))
        self.written: list[tuple[float, bytes]] = []      # (monotonic time, bytes) as the HAN wrote them
        self.frames: list[tuple[float, bytes]] = []       # (monotonic time, frame data) decoded
        self.resets = 0
        self.damaged = 0                                  # frames from the HAN that did not decode
        self.corpus_sent = 0
        self._joined = True
        self._buffer = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HostileRadio":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        os.close(self.master)
        os.close(self._slave)

    def _send(self, data: bytes) -> None:
        with self._lock:
            os.write(self.master, frame(data))

    def _run(self) -> None:
        next_corpus = time.monotonic() + 1.0
        index = 0
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            now = time.monotonic()
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                if data:
                    self.written.append((now, data))
                    self._take(now, data)
            if now >= next_corpus:
                entry = CORPUS[index % len(CORPUS)]
                with self._lock:
                    os.write(self.master, entry[1] if isinstance(entry, tuple) else frame(entry))
                index += 1
                self.corpus_sent += 1
                next_corpus = now + self.corpus_every_s

    def _take(self, now: float, data: bytes) -> None:
        self._buffer += data
        cut = self._buffer.rfind(bytes((FLAG,)))
        complete, damaged = unframe(self._buffer[:cut] if cut > 0 else b"")
        rest = self._buffer[cut:] if cut >= 0 else b""
        self.damaged += damaged
        last, _ = unframe(rest)
        if last:                      # the frame after the last flag is already whole
            complete += last
            rest = b""
        self._buffer = rest
        for data_ in complete:
            self.frames.append((now, data_))
            self._answer(data_)

    def _answer(self, data: bytes) -> None:
        if data[0] == 0x08 and len(data) >= 4:
            command = data[2:4]
            value = b"\x00" if command == b"AI" and self._joined else b"\xff" if command == b"AI" \
                else AT_VALUES.get(command)
            self._send(bytes((0x88, data[1])) + command + (b"\x00" + value if value is not None else b"\x02"))
            return
        if data[0] != 0x11 or len(data) < 20:
            return
        fid = data[1]
        dest16, _, _, cluster, profile = struct.unpack(">HBBHH", data[10:18])
        payload = data[20:]
        if not self._joined:
            self._send(bytes((0x8B, fid)) + struct.pack(">H", dest16) + b"\x00\x22\x00")
            return
        self._send(bytes((0x8B, fid)) + struct.pack(">H", dest16) + b"\x00\x00\x00")
        if profile == 0 and cluster == 0x0006:
            if self.storm:
                self.resets += 1
                self._joined = False
                self._send(b"\x8a\x00")                              # hardware reset
                threading.Timer(0.05, self._rejoin).start()
                return
            self._send(zdo_from(0x0000, 0x8006, bytes((payload[0], 0, 0, 0, 1, METER_ENDPOINT))))
        elif profile == 0 and cluster == 0x0001:
            self._send(zdo_from(0x0000, 0x8001, bytes((payload[0], 0)) + METER_IEEE.to_bytes(8, "little")
                                + b"\x00\x00"))
        elif profile == 0x0109 and cluster == 0x0702 and len(payload) >= 5:
            body = b""
            for i in range(3, len(payload) - 1, 2):
                attr = int.from_bytes(payload[i:i + 2], "little")
                if attr in METER_ATTRS:
                    kind, size, value = METER_ATTRS[attr]
                    body += struct.pack("<HBB", attr, 0, kind) + value.to_bytes(size, "little", signed=kind == 0x2A)
                else:
                    body += struct.pack("<HB", attr, 0x86)
            self._send(zcl_from_meter(0x0702, 0x18, payload[1], 0x01, body))

    def _rejoin(self) -> None:
        if self._stop.is_set():
            return
        self._joined = True
        try:
            self._send(b"\x8a\x02")                                  # joined
        except OSError:
            pass            # the test has ended and the pty is closed

    # ---- what the HAN did ------------------------------------------------------------------------
    def explicit_times(self) -> list[float]:
        return [t for t, data in self.frames if data[:1] == b"\x11"]
