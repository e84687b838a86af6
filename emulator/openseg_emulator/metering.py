"""The meter's ZCL side: a Simple Metering server that answers reads and refuses everything else. Pure.

Only global Read Attributes is served. Every other command (writes, reporting configuration, cluster
commands, manufacturer-specific frames) gets a Default Response carrying an error status, and nothing
is ever changed: a meter that silently accepted a write would hide a host bug the tests must catch.
Attribute ids, ZCL types and status codes follow ZigBee Smart Energy 1.x and the ZCL specification.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PROFILE_SMART_ENERGY = 0x0109
CLUSTER_METERING = 0x0702

# Frame control bits
FC_TYPE_MASK = 0x03
FC_TYPE_GLOBAL = 0x00
FC_TYPE_CLUSTER = 0x01
FC_MANUFACTURER = 0x04
FC_SERVER_TO_CLIENT = 0x08
FC_DISABLE_DEFAULT_RESPONSE = 0x10

# Global commands
READ_ATTRIBUTES = 0x00
READ_ATTRIBUTES_RESPONSE = 0x01
WRITE_ATTRIBUTES = 0x02
WRITE_ATTRIBUTES_UNDIVIDED = 0x03
WRITE_ATTRIBUTES_NO_RESPONSE = 0x05
CONFIGURE_REPORTING = 0x06
DEFAULT_RESPONSE = 0x0B

# ZCL status codes
SUCCESS = 0x00
MALFORMED_COMMAND = 0x80
UNSUP_CLUSTER_COMMAND = 0x81
UNSUP_GENERAL_COMMAND = 0x82
UNSUP_MANUF_CLUSTER_COMMAND = 0x83
UNSUP_MANUF_GENERAL_COMMAND = 0x84
UNSUPPORTED_ATTRIBUTE = 0x86
READ_ONLY = 0x88
UNREPORTABLE_ATTRIBUTE = 0x8C
UNSUPPORTED_CLUSTER = 0xC3

# ZCL types: id -> size in bytes
BITMAP8, UINT24, UINT48, INT24, ENUM8 = 0x18, 0x22, 0x25, 0x2A, 0x30
TYPE_SIZE = {BITMAP8: 1, UINT24: 3, UINT48: 6, INT24: 3, ENUM8: 1}
SIGNED = {INT24}

CURRENT_SUMMATION_DELIVERED = 0x0000
CURRENT_SUMMATION_RECEIVED = 0x0001
UNIT_OF_MEASURE = 0x0300
MULTIPLIER = 0x0301
DIVISOR = 0x0302
SUMMATION_FORMATTING = 0x0303
DEMAND_FORMATTING = 0x0304
METERING_DEVICE_TYPE = 0x0306
INSTANTANEOUS_DEMAND = 0x0400

ATTRIBUTE_TYPES = {
    CURRENT_SUMMATION_DELIVERED: UINT48,
    CURRENT_SUMMATION_RECEIVED: UINT48,      # served only by a meter that measures export
    UNIT_OF_MEASURE: ENUM8,
    MULTIPLIER: UINT24,
    DIVISOR: UINT24,
    SUMMATION_FORMATTING: BITMAP8,
    DEMAND_FORMATTING: BITMAP8,
    METERING_DEVICE_TYPE: BITMAP8,
    INSTANTANEOUS_DEMAND: INT24,
}
# A read holding either of these is a slot's poll (which may also ask for CurrentSummationReceived);
# only answers to polls are subject to fault injection.
POLL_ATTRIBUTES = frozenset((CURRENT_SUMMATION_DELIVERED, INSTANTANEOUS_DEMAND))


@dataclass(frozen=True)
class ZclFrame:
    frame_control: int
    manufacturer: int | None
    seq: int
    command: int
    payload: bytes

    @classmethod
    def parse(cls, data: bytes) -> "ZclFrame | None":
        if len(data) < 3:
            return None
        fc = data[0]
        if fc & FC_MANUFACTURER:
            if len(data) < 5:
                return None
            return cls(fc, struct.unpack_from("<H", data, 1)[0], data[3], data[4], data[5:])
        return cls(fc, None, data[1], data[2], data[3:])

    @property
    def is_global(self) -> bool:
        return self.frame_control & FC_TYPE_MASK == FC_TYPE_GLOBAL


@dataclass(frozen=True)
class ReadRequest:
    """A Read Attributes the meter will answer; values are sampled when the answer is sent."""
    seq: int
    attributes: tuple[int, ...]

    @property
    def is_poll(self) -> bool:
        return bool(POLL_ATTRIBUTES.intersection(self.attributes))


@dataclass(frozen=True)
class Answer:
    """What the meter does with a ZCL frame: answer a read, send a frame, or stay silent."""
    read: ReadRequest | None = None
    payload: bytes | None = None
    note: str = ""


def default_response(request: ZclFrame, status: int) -> bytes:
    # The response travels the other way and keeps the request's manufacturer code, if any.
    fc = FC_DISABLE_DEFAULT_RESPONSE | (0 if request.frame_control & FC_SERVER_TO_CLIENT else FC_SERVER_TO_CLIENT)
    head = bytes((fc,))
    if request.manufacturer is not None:
        head = bytes((fc | FC_MANUFACTURER,)) + struct.pack("<H", request.manufacturer)
    return head + bytes((request.seq, DEFAULT_RESPONSE, request.command, status))


def encode_value(type_id: int, value: int) -> bytes:
    size = TYPE_SIZE[type_id]
    return value.to_bytes(size, "little", signed=type_id in SIGNED)


def read_attributes_response(request: ReadRequest, values: dict[int, int], max_len: int = 80) -> bytes:
    """`values` holds every attribute the meter supports; the others are answered 0x86. As ZCL
    prescribes, records that would not fit in `max_len` bytes are left out rather than split."""
    out = bytearray((FC_SERVER_TO_CLIENT | FC_DISABLE_DEFAULT_RESPONSE, request.seq, READ_ATTRIBUTES_RESPONSE))
    for attr in request.attributes:
        record = struct.pack("<H", attr)
        if attr in values:
            type_id = ATTRIBUTE_TYPES[attr]
            record += bytes((SUCCESS, type_id)) + encode_value(type_id, values[attr])
        else:
            record += bytes((UNSUPPORTED_ATTRIBUTE,))
        if len(out) + len(record) > max_len:
            break
        out += record
    return bytes(out)


def serve_metering(zcl: ZclFrame, broadcast: bool) -> Answer:
    """The Simple Metering server's reaction to one frame addressed to it."""
    if zcl.frame_control & FC_TYPE_MASK not in (FC_TYPE_GLOBAL, FC_TYPE_CLUSTER):
        return Answer(note="reserved ZCL frame type ignored")
    if zcl.is_global and zcl.manufacturer is None and not zcl.frame_control & FC_SERVER_TO_CLIENT \
            and zcl.command == READ_ATTRIBUTES:
        if len(zcl.payload) % 2:
            return _refuse(zcl, MALFORMED_COMMAND, broadcast, "Read Attributes with an odd payload")
        attrs = struct.unpack(f"<{len(zcl.payload) // 2}H", zcl.payload)
        return Answer(read=ReadRequest(zcl.seq, attrs))
    return refuse_unimplemented(zcl, broadcast)


def refuse_unimplemented(zcl: ZclFrame, broadcast: bool) -> Answer:
    """An error Default Response for a command this server does not perform; nothing is applied."""
    if not zcl.is_global:
        status = UNSUP_MANUF_CLUSTER_COMMAND if zcl.manufacturer is not None else UNSUP_CLUSTER_COMMAND
        return _refuse(zcl, status, broadcast, f"cluster-specific command 0x{zcl.command:02x} refused")
    if zcl.manufacturer is not None:
        return _refuse(zcl, UNSUP_MANUF_GENERAL_COMMAND, broadcast, "manufacturer-specific command refused")
    if zcl.command in (WRITE_ATTRIBUTES, WRITE_ATTRIBUTES_UNDIVIDED, WRITE_ATTRIBUTES_NO_RESPONSE):
        return _refuse(zcl, READ_ONLY, broadcast, f"write command 0x{zcl.command:02x} refused, nothing written")
    if zcl.command == CONFIGURE_REPORTING:
        return _refuse(zcl, UNREPORTABLE_ATTRIBUTE, broadcast, "Configure Reporting refused")
    return _refuse(zcl, UNSUP_GENERAL_COMMAND, broadcast, f"global command 0x{zcl.command:02x} refused")


def refuse_cluster(zcl: ZclFrame, broadcast: bool, cluster: int) -> Answer:
    return _refuse(zcl, UNSUPPORTED_CLUSTER, broadcast, f"cluster 0x{cluster:04x} not on this endpoint")


def _refuse(zcl: ZclFrame, status: int, broadcast: bool, note: str) -> Answer:
    # ZCL: no Default Response to a broadcast, and none to a response command (that would loop).
    if broadcast or (zcl.is_global and zcl.command == DEFAULT_RESPONSE):
        return Answer(note=note + " (no Default Response)")
    return Answer(payload=default_response(zcl, status), note=f"{note}: Default Response 0x{status:02x}")


@dataclass(frozen=True)
class MeterSettings:
    """The meter's fixed attributes (options of the command line)."""
    unit: int = 0x00                 # kW & kWh
    device_type: int = 0x00          # electric
    multiplier: int = 1
    divisor: int = 1000
    summation_formatting: int = 0x33
    demand_formatting: int = 0x23
    export: bool = True              # serves CurrentSummationReceived (False: answers it 0x86)


def attribute_values(settings: MeterSettings, summation_raw: int, demand_raw: int,
                     received_raw: int) -> dict[int, int]:
    values = {
        CURRENT_SUMMATION_DELIVERED: summation_raw,
        UNIT_OF_MEASURE: settings.unit,
        MULTIPLIER: settings.multiplier,
        DIVISOR: settings.divisor,
        SUMMATION_FORMATTING: settings.summation_formatting,
        DEMAND_FORMATTING: settings.demand_formatting,
        METERING_DEVICE_TYPE: settings.device_type,
        INSTANTANEOUS_DEMAND: demand_raw,
    }
    if settings.export:
        values[CURRENT_SUMMATION_RECEIVED] = received_raw
    return values
