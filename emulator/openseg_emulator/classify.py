"""Which kind of frame the host sent: the emulator's own, independent verdict for the frame log.

The gateway promises the utility that it only ever *reads* the HAN. Tests prove it by checking that
every frame in the emulator's log is classed as a read, so this classification must not share code
with the host's egress guard (han_reader); it is a second implementation, deliberately written from
docs/han-protocol.md and the ZigBee specifications alone, and conservative: whatever is not clearly one
of the three kinds of read below is "not-a-read".

  at-query       AT command 0x08 without a parameter, for one of the read-only commands in AT_QUERIES
  zdo-discovery  explicit TX on profile 0x0000 to endpoint 0, cluster NWK_addr/IEEE_addr/Simple_Desc/
                 Active_EP/Match_Desc request
  zcl-read       explicit TX on profile 0x0109 cluster 0x0702 carrying a ZCL global Read Attributes,
                 client to server, without manufacturer code, with a whole number of attribute ids
  not-a-read     everything else: AT with a parameter or of another command, queued AT (0x09), remote
                 AT (0x17), plain TX (0x10), writes, reporting configuration, cluster commands, other
                 clusters or profiles, other ZDO requests, malformed frames
"""
from __future__ import annotations

import struct
from typing import Any

AT_QUERIES = frozenset(("VR", "HV", "AP", "AO", "AI", "SH", "SL", "MY", "EE", "CH", "OP", "OI", "NP", "DB", "EO"))
ZDO_DISCOVERY = {0x0000: "NWK_addr_req", 0x0001: "IEEE_addr_req", 0x0004: "Simple_Desc_req",
                 0x0005: "Active_EP_req", 0x0006: "Match_Desc_req"}
FRAME_NAMES = {0x08: "AT command", 0x09: "AT command (queued)", 0x10: "TX request", 0x11: "explicit TX",
               0x17: "remote AT command", 0x21: "create source route", 0x24: "register joining device"}

AT_QUERY, ZDO_READ, ZCL_READ, NOT_A_READ = "at-query", "zdo-discovery", "zcl-read", "not-a-read"


def _hex16(v: int) -> str:
    return f"0x{v:04x}"


def classify(data: bytes) -> tuple[str, dict[str, Any]]:
    """(class, detail) for the frame data (type byte onwards) of one checksum-valid host frame."""
    if not data:
        return NOT_A_READ, {"reason": "empty frame"}
    kind = data[0]
    if kind == 0x08:
        return _at(data)
    if kind == 0x11:
        return _explicit(data)
    name = FRAME_NAMES.get(kind, "unknown frame type")
    return NOT_A_READ, {"reason": f"{name} 0x{kind:02x}", "frame_id": data[1] if len(data) > 1 else None}


def _at(data: bytes) -> tuple[str, dict[str, Any]]:
    if len(data) < 4:
        return NOT_A_READ, {"reason": "AT command frame too short"}
    command = data[2:4].decode("ascii", errors="replace")
    parameter = data[4:]
    detail: dict[str, Any] = {"frame_id": data[1], "command": command}
    if parameter:
        detail["parameter"] = parameter.hex()
        detail["reason"] = f"AT {command} with a parameter (a write or an action)"
        return NOT_A_READ, detail
    if command not in AT_QUERIES:
        detail["reason"] = f"AT {command} is not a read-only query"
        return NOT_A_READ, detail
    return AT_QUERY, detail


def _explicit(data: bytes) -> tuple[str, dict[str, Any]]:
    if len(data) < 20:
        return NOT_A_READ, {"reason": "explicit TX shorter than its 20-byte header"}
    frame_id = data[1]
    dest64 = int.from_bytes(data[2:10], "big")
    dest16, = struct.unpack(">H", data[10:12])
    src_ep, dst_ep = data[12], data[13]
    cluster, profile = struct.unpack(">HH", data[14:18])
    radius, options = data[18], data[19]
    payload = data[20:]
    detail: dict[str, Any] = {
        "frame_id": frame_id, "dest64": f"{dest64:016x}", "dest16": _hex16(dest16), "src_ep": src_ep,
        "dst_ep": dst_ep, "cluster": _hex16(cluster), "profile": _hex16(profile), "radius": radius,
        "options": f"0x{options:02x}", "payload": payload.hex(),
    }
    if profile == 0x0000:
        if dst_ep != 0:
            detail["reason"] = "ZDO profile to an application endpoint"
            return NOT_A_READ, detail
        if cluster not in ZDO_DISCOVERY:
            detail["reason"] = f"ZDO cluster {_hex16(cluster)} is not a discovery request"
            return NOT_A_READ, detail
        detail["zdo"] = ZDO_DISCOVERY[cluster]
        if payload:
            detail["zdo_seq"] = payload[0]
        return ZDO_READ, detail
    if profile != 0x0109 or cluster != 0x0702:
        detail["reason"] = f"profile {_hex16(profile)} cluster {_hex16(cluster)} is not Smart Energy metering"
        return NOT_A_READ, detail
    if len(payload) < 3:
        detail["reason"] = "ZCL frame shorter than its header"
        return NOT_A_READ, detail
    fc = payload[0]
    detail["zcl_frame_control"] = f"0x{fc:02x}"
    if fc & 0x03 != 0x00:
        detail["reason"] = "cluster-specific ZCL command" if fc & 0x03 == 0x01 else "reserved ZCL frame type"
        return NOT_A_READ, detail
    if fc & 0x04:
        detail["reason"] = "manufacturer-specific ZCL command"
        return NOT_A_READ, detail
    if fc & 0x08:
        detail["reason"] = "ZCL command sent server to client"
        return NOT_A_READ, detail
    seq, command = payload[1], payload[2]
    detail["zcl_seq"] = seq
    detail["zcl_command"] = f"0x{command:02x}"
    if command != 0x00:
        detail["reason"] = f"ZCL global command 0x{command:02x} is not Read Attributes"
        return NOT_A_READ, detail
    ids = payload[3:]
    if not ids or len(ids) % 2:
        detail["reason"] = "Read Attributes without a whole list of attribute ids"
        return NOT_A_READ, detail
    detail["attrs"] = [_hex16(a) for a in struct.unpack(f"<{len(ids) // 2}H", ids)]
    return ZCL_READ, detail
