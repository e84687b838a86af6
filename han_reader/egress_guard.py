"""The egress guard: the one place every byte bound for the radio passes, and the read-only guarantee.

Auditors: this file is the whole of it. `EgressGuard.send` is the only caller of the serial port's write
(see `link.SerialLink.write_raw` and tests/test_egress_guard.py, which checks that nothing else calls
it). A frame goes out only if `check` classifies it as one of three read-only kinds:

  (a) a local AT command (0x08) with no parameter, for a command in READ_ONLY_AT;
  (b) a ZDO discovery request: profile 0x0000, endpoints 0 -> 0, cluster in ZDO_DISCOVERY, with the
      exact payload length that request has (so nothing can ride along);
  (c) a ZCL global Read Attributes: profile 0x0109, cluster 0x0702, frame type 00, client to server,
      no manufacturer code, command 0x00, one or more 2-byte attribute ids.

Everything else (remote AT 0x17, AT with a parameter, any other frame type, Write Attributes,
Configure Reporting, cluster-specific commands, any other cluster or profile) raises EgressRefused, is
logged and counted, and never reaches the port. The check parses the frame itself rather than trusting
the builders in zcl/zdo, so a bug there cannot widen what is allowed.
"""
from __future__ import annotations

import struct
from typing import Callable

from . import xbee_frames

READ_ONLY_AT = frozenset({"AI", "MY", "SH", "SL", "OP", "OI", "CH", "VR", "HV", "AP", "AO", "NP",
                          "EE", "EO", "DB"})

# ZDO discovery requests -> the payload length they must have (Match_Desc is variable, see below).
ZDO_DISCOVERY = {
    0x0000: 12,   # NWK_addr_req: seq, IEEE(8), request type, start index
    0x0001: 5,    # IEEE_addr_req: seq, NWK(2), request type, start index
    0x0004: 4,    # Simple_Desc_req: seq, NWK(2), endpoint
    0x0005: 3,    # Active_EP_req: seq, NWK(2)
    0x0006: None,  # Match_Desc_req: seq, NWK(2), profile(2), n-in, in(2n), n-out, out(2m)
}
PROFILE_ZDO = 0x0000
PROFILE_SMART_ENERGY = 0x0109
CLUSTER_SIMPLE_METERING = 0x0702
ZCL_READ_ATTRIBUTES = 0x00
# Frame control bits that may be set on an allowed read: only "disable default response" (bit 4).
# Frame type (bits 0-1) must be 00 (global), manufacturer-specific (bit 2) and direction (bit 3) clear.
ZCL_FC_ALLOWED_BITS = 0x10

_EXPLICIT_HEADER = struct.Struct(">BBQHBBHHBB")   # type, id, dest64, dest16, src-ep, dst-ep, cluster,
                                                  # profile, radius, options


class EgressRefused(Exception):
    """A frame that is not a read or discovery request; it was not sent."""


def _match_desc_length_ok(payload: bytes) -> bool:
    if len(payload) < 6:
        return False
    n_in = payload[5]
    out_at = 6 + 2 * n_in
    if len(payload) < out_at + 1:
        return False
    return len(payload) == out_at + 1 + 2 * payload[out_at]


def check(frame: bytes) -> str:
    """Classify unescaped frame data as 'at-query', 'zdo-discovery' or 'zcl-read'; else raise."""
    if not frame:
        raise EgressRefused("empty frame")
    kind = frame[0]
    if kind == xbee_frames.AT_COMMAND:
        if len(frame) != 4:
            raise EgressRefused("AT command with a parameter (only queries are allowed)")
        command = frame[2:4].decode("ascii", "replace")
        if command not in READ_ONLY_AT:
            raise EgressRefused(f"AT command {command!r} is not on the read-only list")
        return "at-query"
    if kind != xbee_frames.EXPLICIT_TX:
        raise EgressRefused(f"frame type 0x{kind:02x} is not allowed")
    if len(frame) < _EXPLICIT_HEADER.size:
        raise EgressRefused("explicit frame shorter than its header")
    _, _, _, _, src_ep, dst_ep, cluster, profile, _, _ = _EXPLICIT_HEADER.unpack_from(frame)
    payload = frame[_EXPLICIT_HEADER.size:]
    if profile == PROFILE_ZDO:
        if src_ep != 0 or dst_ep != 0:
            raise EgressRefused("ZDO request not between endpoints 0")
        if cluster not in ZDO_DISCOVERY:
            raise EgressRefused(f"ZDO cluster 0x{cluster:04x} is not a discovery request")
        want = ZDO_DISCOVERY[cluster]
        if not (_match_desc_length_ok(payload) if want is None else len(payload) == want):
            raise EgressRefused(f"ZDO request 0x{cluster:04x} with a malformed payload")
        return "zdo-discovery"
    if profile != PROFILE_SMART_ENERGY or cluster != CLUSTER_SIMPLE_METERING:
        raise EgressRefused(f"profile 0x{profile:04x} cluster 0x{cluster:04x} is not allowed")
    if len(payload) < 5 or (len(payload) - 3) % 2:
        raise EgressRefused("ZCL frame is not a Read Attributes with whole attribute ids")
    frame_control, command = payload[0], payload[2]
    if frame_control & ~ZCL_FC_ALLOWED_BITS:
        raise EgressRefused(f"ZCL frame control 0x{frame_control:02x} is not a plain global request")
    if command != ZCL_READ_ATTRIBUTES:
        raise EgressRefused(f"ZCL command 0x{command:02x} is not Read Attributes")
    return "zcl-read"


class EgressGuard:
    """Holds the port's write function; nothing else in the HAN process is given it."""

    def __init__(self, write: Callable[[bytes], object], log: Callable[[str], None]):
        self._write = write
        self._log = log
        self.sent = 0
        self.refused = 0

    def send(self, frame: bytes) -> str:
        try:
            kind = check(frame)
        except EgressRefused as exc:
            self.refused += 1
            self._log(f"egress-guard: REFUSED frame {frame[:32].hex()}: {exc}")
            raise
        self._write(xbee_frames.encode(frame))
        self.sent += 1
        return kind
