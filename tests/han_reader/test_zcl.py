"""The ZCL Read Attributes codec: byte-exact frames, sentinels, hostile payloads."""
import struct

import pytest
from hypothesis import given, strategies as st

from openseg.han_reader import zcl


def record(attr, type_id, value_bytes):
    return struct.pack("<HBB", attr, 0, type_id) + value_bytes


def test_read_attributes_request_is_byte_exact():
    # one request for all three per-slot attributes: 0x0000 delivered, 0x0001 received, 0x0400 demand
    assert zcl.read_attributes(0x2A, zcl.POLL_READ) == bytes([0x00, 0x2A, 0x00, 0x00, 0x00, 0x01, 0x00,
                                                             0x00, 0x04])
    with pytest.raises(ValueError):
        zcl.read_attributes(1, ())


def test_parse_poll_response_with_signed_demand_and_48_bit_summation():
    payload = bytes([0x18, 0x07, 0x01]) + record(0x0000, 0x25, (0xFFFFFFFFFFFE).to_bytes(6, "little")) \
        + record(0x0400, 0x2A, (-1500).to_bytes(3, "little", signed=True))
    rsp = zcl.parse_response(payload)
    assert rsp.seq == 7 and rsp.command == zcl.CMD_READ_ATTRIBUTES_RESPONSE
    assert rsp.results[0x0000].value == 0xFFFFFFFFFFFE
    assert rsp.results[0x0400].value == -1500


def test_parse_poll_response_with_and_without_received():
    delivered = record(0x0000, 0x25, (123_456).to_bytes(6, "little"))
    demand = record(0x0400, 0x2A, (-2500).to_bytes(3, "little", signed=True))
    rsp = zcl.parse_response(bytes([0x18, 8, 0x01]) + delivered
                             + record(0x0001, 0x25, (0xFFFFFFFFFFFE).to_bytes(6, "little")) + demand)
    assert rsp.results[0x0001] == zcl.AttributeResult(0x0001, 0, 0x25, 0xFFFFFFFFFFFE)
    assert rsp.results[0x0000].value == 123_456 and rsp.results[0x0400].value == -2500
    # a meter without export measurement: UNSUPPORTED_ATTRIBUTE for 0x0001, the others as usual
    rsp = zcl.parse_response(bytes([0x18, 9, 0x01]) + delivered + bytes([0x01, 0x00, 0x86]) + demand)
    assert rsp.results[0x0001] == zcl.AttributeResult(0x0001, zcl.STATUS_UNSUPPORTED_ATTRIBUTE)
    assert rsp.results[0x0000].value == 123_456 and rsp.results[0x0400].value == -2500
    # a received register of the wrong type is malformed, like any other attribute
    with pytest.raises(zcl.ZclError, match="expected 0x25"):
        zcl.parse_response(bytes([0x18, 9, 0x01]) + record(0x0001, 0x23, bytes(4)))


def test_invalid_sentinels_are_not_values():
    payload = bytes([0x08, 0x01, 0x01]) + record(0x0000, 0x25, b"\xff" * 6) \
        + record(0x0400, 0x2A, (-0x800000).to_bytes(3, "little", signed=True))
    rsp = zcl.parse_response(payload)
    assert rsp.results[0x0000].value is None and rsp.results[0x0000].status == 0
    assert rsp.results[0x0400].value is None


def test_unsupported_attribute_and_default_response():
    rsp = zcl.parse_response(bytes([0x18, 3, 0x01, 0x00, 0x03, 0x86]))
    assert rsp.results[0x0300] == zcl.AttributeResult(0x0300, 0x86)
    rsp = zcl.parse_response(bytes([0x18, 4, 0x0B, 0x00, 0xC3]))
    assert rsp.default_status == 0xC3 and rsp.results == {}


@pytest.mark.parametrize("payload, message", [
    (bytes([0x18, 1]), "shorter"),
    (bytes([0x19, 1, 0x01]), "global"),
    (bytes([0x10, 1, 0x01]), "server to client"),
    (bytes([0x18, 1, 0x0A]), "unexpected"),
    (bytes([0x18, 1, 0x01, 0x00, 0x00, 0x00, 0x25, 1, 2]), "truncated value"),
    (bytes([0x18, 1, 0x01, 0x00, 0x04, 0x00, 0x25]) + bytes(6), "expected 0x2a"),
    (bytes([0x18, 1, 0x01, 0x00, 0x00, 0x00, 0x42, 1]), "unsupported type"),
])
def test_malformed_responses_raise_zcl_error(payload, message):
    with pytest.raises(zcl.ZclError, match=message):
        zcl.parse_response(payload)


@given(st.binary(max_size=64))
def test_any_payload_parses_or_raises_zcl_error(payload):
    try:
        zcl.parse_response(payload)
    except zcl.ZclError:
        pass


def test_manufacturer_specific_header_is_skipped():
    rsp = zcl.parse_response(bytes([0x1C, 0x34, 0x12, 9, 0x01]) + record(0x0301, 0x22, b"\x03\x00\x00"))
    assert rsp.seq == 9 and rsp.results[0x0301].value == 3
