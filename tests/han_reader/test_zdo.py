"""The ZDO discovery codec: byte-exact frames, hostile payloads."""
import pytest
from hypothesis import given, strategies as st

from openseg.han_reader import zdo


def test_zdo_requests_are_byte_exact():
    assert zdo.ieee_addr_req(5, 0x0000) == bytes([5, 0, 0, 0, 0])
    assert zdo.match_desc_req(6, 0xFFFD, 0x0109, (0x0702,)) == bytes([6, 0xFD, 0xFF, 0x09, 0x01, 1, 0x02, 0x07, 0])


def test_zdo_responses():
    rsp = zdo.parse_ieee_addr_rsp(bytes([5, 0]) + (0x000D6F000ABCDEF0).to_bytes(8, "little") + b"\x00\x00")
    assert rsp == zdo.IeeeAddrRsp(5, 0, 0x000D6F000ABCDEF0, 0x0000)
    assert zdo.parse_ieee_addr_rsp(bytes([5, 0x81])).status == 0x81
    rsp = zdo.parse_match_desc_rsp(bytes([6, 0, 0x34, 0x12, 2, 9, 11]))
    assert rsp == zdo.MatchDescRsp(6, 0, 0x1234, (9, 11))
    with pytest.raises(zdo.ZdoError):
        zdo.parse_match_desc_rsp(bytes([6, 0, 0x34, 0x12, 3, 9]))
    with pytest.raises(zdo.ZdoError):
        zdo.parse_match_desc_rsp(bytes([6, 0, 0x34, 0x12, 1, 0]))


@given(st.binary(max_size=32))
def test_zdo_parsers_raise_only_zdo_error(payload):
    for parse in (zdo.parse_ieee_addr_rsp, zdo.parse_match_desc_rsp):
        try:
            parse(payload)
        except zdo.ZdoError:
            pass
