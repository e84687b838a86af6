"""ZCL Read Attributes for the Smart Energy Simple Metering cluster. Pure: no I/O.

The attributes and their types are declared as data (after zigpy's `zcl/clusters/smartenergy.py`), so
the one request this gateway builds and the one response it parses are both checked against the same
table. Only the *global Read Attributes* command is ever built here: there is no write helper to misuse.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PROFILE_SMART_ENERGY = 0x0109
CLUSTER_SIMPLE_METERING = 0x0702

# Frame control: bits 0-1 frame type (00 = global), bit 2 manufacturer specific, bit 3 direction
# (1 = server to client), bit 4 disable default response.
FC_GLOBAL_CLIENT_TO_SERVER = 0x00
FC_TYPE_MASK = 0x03
FC_MANUFACTURER = 0x04
FC_SERVER_TO_CLIENT = 0x08

CMD_READ_ATTRIBUTES = 0x00
CMD_READ_ATTRIBUTES_RESPONSE = 0x01
CMD_DEFAULT_RESPONSE = 0x0B

STATUS_SUCCESS = 0x00
STATUS_UNSUPPORTED_ATTRIBUTE = 0x86

# ZCL data types we can meet: id -> (name, size in bytes, signed)
TYPES = {
    0x18: ("bitmap8", 1, False),
    0x20: ("uint8", 1, False),
    0x21: ("uint16", 2, False),
    0x22: ("uint24", 3, False),
    0x23: ("uint32", 4, False),
    0x25: ("uint48", 6, False),
    0x28: ("int8", 1, True),
    0x29: ("int16", 2, True),
    0x2A: ("int24", 3, True),
    0x2B: ("int32", 4, True),
    0x30: ("enum8", 1, False),
}

# The ZCL "invalid value" of each type: a meter reports it when it has no valid measurement.
INVALID = {0x25: 0xFFFFFFFFFFFF, 0x2A: -0x800000}


@dataclass(frozen=True)
class Attribute:
    id: int
    name: str
    type: int


# Simple Metering server attributes the gateway reads (ZigBee Smart Energy 1.x, table D.2x).
CURRENT_SUMMATION_DELIVERED = Attribute(0x0000, "CurrentSummationDelivered", 0x25)
CURRENT_SUMMATION_RECEIVED = Attribute(0x0001, "CurrentSummationReceived", 0x25)   # energy exported
UNIT_OF_MEASURE = Attribute(0x0300, "UnitOfMeasure", 0x30)
MULTIPLIER = Attribute(0x0301, "Multiplier", 0x22)
DIVISOR = Attribute(0x0302, "Divisor", 0x22)
SUMMATION_FORMATTING = Attribute(0x0303, "SummationFormatting", 0x18)
DEMAND_FORMATTING = Attribute(0x0304, "DemandFormatting", 0x18)
METERING_DEVICE_TYPE = Attribute(0x0306, "MeteringDeviceType", 0x18)
INSTANTANEOUS_DEMAND = Attribute(0x0400, "InstantaneousDemand", 0x2A)

ATTRIBUTES = {a.id: a for a in (CURRENT_SUMMATION_DELIVERED, CURRENT_SUMMATION_RECEIVED, UNIT_OF_MEASURE,
                                MULTIPLIER, DIVISOR, SUMMATION_FORMATTING, DEMAND_FORMATTING,
                                METERING_DEVICE_TYPE, INSTANTANEOUS_DEMAND)}

SCALING_READ = (UNIT_OF_MEASURE, MULTIPLIER, DIVISOR, SUMMATION_FORMATTING, DEMAND_FORMATTING,
                METERING_DEVICE_TYPE)
# One read per slot. A meter that does not measure export answers 0x0001 with UNSUPPORTED_ATTRIBUTE.
POLL_READ = (CURRENT_SUMMATION_DELIVERED, CURRENT_SUMMATION_RECEIVED, INSTANTANEOUS_DEMAND)

# UnitOfMeasure values (SE 1.x): only 0x00 (kW & kWh, binary) is electric in a form we scale.
UNITS = {0x00: "kW & kWh", 0x01: "m3 & m3/h", 0x02: "ft3 & ft3/h", 0x03: "ccf & ccf/h",
         0x04: "US gl & US gl/h", 0x05: "IMP gl & IMP gl/h", 0x06: "BTUs & BTU/h",
         0x07: "liters & l/h", 0x08: "kPA (gauge)", 0x09: "kPA (absolute)"}
UNIT_KW_KWH = 0x00


class ZclError(ValueError):
    """A ZCL payload that is malformed or not the expected answer."""


def read_attributes(seq: int, attributes: tuple[Attribute, ...]) -> bytes:
    """A global Read Attributes request, client to server, no manufacturer code."""
    if not attributes:
        raise ValueError("read at least one attribute")
    return (bytes((FC_GLOBAL_CLIENT_TO_SERVER, seq & 0xFF, CMD_READ_ATTRIBUTES))
            + b"".join(struct.pack("<H", a.id) for a in attributes))


@dataclass(frozen=True)
class AttributeResult:
    id: int
    status: int
    type: int | None = None
    value: int | None = None      # None when status != success or the value is the type's "invalid"


@dataclass(frozen=True)
class ZclResponse:
    seq: int
    command: int
    results: dict[int, AttributeResult]   # for Read Attributes Response
    default_status: int | None = None     # for a Default Response: the status it carries


def _value(type_id: int, raw: bytes) -> int:
    _, size, signed = TYPES[type_id]
    return int.from_bytes(raw[:size], "little", signed=signed)


def parse_response(payload: bytes) -> ZclResponse:
    """Parse a server-to-client global command: Read Attributes Response or Default Response."""
    if len(payload) < 3:
        raise ZclError("ZCL frame shorter than 3 bytes")
    fc = payload[0]
    if fc & FC_TYPE_MASK != 0:
        raise ZclError("not a global ZCL command")
    if not fc & FC_SERVER_TO_CLIENT:
        raise ZclError("ZCL frame is not server to client")
    pos = 1
    if fc & FC_MANUFACTURER:
        pos += 2
    if len(payload) < pos + 2:
        raise ZclError("ZCL frame shorter than its header")
    seq, command = payload[pos], payload[pos + 1]
    pos += 2
    if command == CMD_DEFAULT_RESPONSE:
        if len(payload) != pos + 2:
            raise ZclError("Default Response must carry command id and status")
        return ZclResponse(seq, command, {}, default_status=payload[pos + 1])
    if command != CMD_READ_ATTRIBUTES_RESPONSE:
        raise ZclError(f"unexpected ZCL command 0x{command:02x}")
    results: dict[int, AttributeResult] = {}
    while pos < len(payload):
        if len(payload) < pos + 3:
            raise ZclError("truncated attribute record")
        attr_id, status = struct.unpack_from("<HB", payload, pos)
        pos += 3
        if status != STATUS_SUCCESS:
            results[attr_id] = AttributeResult(attr_id, status)
            continue
        if len(payload) < pos + 1:
            raise ZclError(f"attribute 0x{attr_id:04x}: missing type")
        type_id = payload[pos]
        pos += 1
        if type_id not in TYPES:
            raise ZclError(f"attribute 0x{attr_id:04x}: unsupported type 0x{type_id:02x}")
        size = TYPES[type_id][1]
        if len(payload) < pos + size:
            raise ZclError(f"attribute 0x{attr_id:04x}: truncated value")
        expected = ATTRIBUTES.get(attr_id)
        if expected is not None and expected.type != type_id:
            raise ZclError(f"attribute 0x{attr_id:04x}: type 0x{type_id:02x}, expected 0x{expected.type:02x}")
        value: int | None = _value(type_id, payload[pos:pos + size])
        if INVALID.get(type_id) == value:
            value = None
        results[attr_id] = AttributeResult(attr_id, status, type_id, value)
        pos += size
    return ZclResponse(seq, command, results)
