"""The two ZigBee Device Object requests used for discovery, and their responses. Pure: no I/O.

ZDO frames travel on profile 0x0000 between endpoints 0; a response's cluster is the request's with
bit 15 set. Payloads are little-endian. Only the two requests the HAN sends exist here, which is what the
egress guard allows on profile 0.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PROFILE = 0x0000
ENDPOINT = 0x00

IEEE_ADDR_REQ = 0x0001
MATCH_DESC_REQ = 0x0006
RESPONSE_BIT = 0x8000

STATUS_SUCCESS = 0x00


class ZdoError(ValueError):
    """A ZDO response payload that is too short or inconsistent."""


def ieee_addr_req(seq: int, nwk: int) -> bytes:
    """IEEE_addr_req for a single device (request type 0), no association list."""
    return struct.pack("<BHBB", seq, nwk, 0, 0)


def match_desc_req(seq: int, nwk_of_interest: int, profile: int, in_clusters: tuple[int, ...]) -> bytes:
    return (struct.pack("<BHHB", seq, nwk_of_interest, profile, len(in_clusters))
            + b"".join(struct.pack("<H", c) for c in in_clusters) + b"\x00")


@dataclass(frozen=True)
class IeeeAddrRsp:
    seq: int
    status: int
    ieee: int
    nwk: int


@dataclass(frozen=True)
class MatchDescRsp:
    seq: int
    status: int
    nwk: int
    endpoints: tuple[int, ...]


def parse_ieee_addr_rsp(payload: bytes) -> IeeeAddrRsp:
    if len(payload) < 2:
        raise ZdoError("IEEE_addr_rsp shorter than 2 bytes")
    seq, status = payload[0], payload[1]
    if status != STATUS_SUCCESS:
        return IeeeAddrRsp(seq, status, 0, 0xFFFF)
    if len(payload) < 12:
        raise ZdoError("IEEE_addr_rsp shorter than 12 bytes")
    ieee, nwk = struct.unpack_from("<QH", payload, 2)
    return IeeeAddrRsp(seq, status, ieee, nwk)


def parse_match_desc_rsp(payload: bytes) -> MatchDescRsp:
    if len(payload) < 2:
        raise ZdoError("Match_Desc_rsp shorter than 2 bytes")
    seq, status = payload[0], payload[1]
    if status != STATUS_SUCCESS:
        nwk = struct.unpack_from("<H", payload, 2)[0] if len(payload) >= 4 else 0xFFFF
        return MatchDescRsp(seq, status, nwk, ())
    if len(payload) < 5:
        raise ZdoError("Match_Desc_rsp shorter than 5 bytes")
    nwk, count = struct.unpack_from("<HB", payload, 2)
    endpoints = tuple(payload[5:5 + count])
    if len(endpoints) != count:
        raise ZdoError(f"Match_Desc_rsp announces {count} endpoints but carries {len(endpoints)}")
    if any(not 1 <= ep <= 240 for ep in endpoints):
        raise ZdoError("Match_Desc_rsp names an endpoint outside 1-240")
    return MatchDescRsp(seq, status, nwk, endpoints)
