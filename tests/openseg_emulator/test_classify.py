"""The emulator's own verdict on host frames, which the integration tests use to prove read-only behaviour."""
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from openseg_emulator.classify import AT_QUERY, NOT_A_READ, ZCL_READ, ZDO_READ, classify

H = bytes.fromhex


def tx(cluster, profile, payload, dst_ep=9, src_ep=0x5E, options=0x20):
    return (bytes([0x11, 1]) + bytes(8) + struct.pack(">HBBHHBB", 0, src_ep, dst_ep, cluster, profile, 0, options)
            + payload)


@pytest.mark.parametrize("cmd", ["VR", "HV", "AP", "AO", "AI", "SH", "SL", "MY", "EE", "CH", "OP", "OI", "NP",
                                 "DB", "EO"])
def test_at_queries(cmd):
    kind, detail = classify(b"\x08\x01" + cmd.encode())
    assert kind == AT_QUERY and detail == {"frame_id": 1, "command": cmd}


@pytest.mark.parametrize("frame,reason", [
    (b"\x08\x01AP\x01", "AT AP with a parameter (a write or an action)"),
    (b"\x08\x01ID\x00\x00", "AT ID with a parameter (a write or an action)"),
    (b"\x08\x01WR", "AT WR is not a read-only query"),
    (b"\x08\x01NR", "AT NR is not a read-only query"),
    (b"\x08\x01FR", "AT FR is not a read-only query"),
    (b"\x08\x01A", "AT command frame too short"),
    (b"\x09\x01VR", "AT command (queued) 0x09"),
    (H("1701") + bytes(8) + H("fffe02") + b"AP", "remote AT command 0x17"),
    (H("1001") + bytes(10) + H("0000") + b"x", "TX request 0x10"),
    (b"\x91", "unknown frame type 0x91"),
])
def test_at_and_other_frames_that_are_not_reads(frame, reason):
    kind, detail = classify(frame)
    assert kind == NOT_A_READ and detail["reason"] == reason


def test_zcl_read():
    kind, detail = classify(tx(0x0702, 0x0109, H("000700000000" "04")))
    assert kind == ZCL_READ and detail["attrs"] == ["0x0000", "0x0400"] and detail["zcl_seq"] == 7
    # Disable-default-response and any endpoint or addressing are still a read.
    assert classify(tx(0x0702, 0x0109, H("10080000000003"), dst_ep=1))[0] == ZCL_READ


@pytest.mark.parametrize("cluster,profile,payload,reason", [
    (0x0702, 0x0109, "0007020000250000000000", "ZCL global command 0x02 is not Read Attributes"),
    (0x0702, 0x0109, "0007050000250000000000", "ZCL global command 0x05 is not Read Attributes"),
    (0x0702, 0x0109, "00070600000000250a000a00", "ZCL global command 0x06 is not Read Attributes"),
    (0x0702, 0x0109, "000708000000", "ZCL global command 0x08 is not Read Attributes"),
    (0x0702, 0x0109, "010706", "cluster-specific ZCL command"),
    (0x0702, 0x0109, "04341207000000", "manufacturer-specific ZCL command"),
    (0x0702, 0x0109, "08070000000400", "ZCL command sent server to client"),
    (0x0702, 0x0109, "000700", "Read Attributes without a whole list of attribute ids"),
    (0x0702, 0x0109, "00070000", "Read Attributes without a whole list of attribute ids"),
    (0x0702, 0x0109, "0007", "ZCL frame shorter than its header"),
    (0x0702, 0x0109, "030700", "reserved ZCL frame type"),
    (0x0000, 0x0109, "00070000", "profile 0x0109 cluster 0x0000 is not Smart Energy metering"),
    (0x0702, 0x0104, "0007000000", "profile 0x0104 cluster 0x0702 is not Smart Energy metering"),
    (0x0700, 0x0109, "0007000000", "profile 0x0109 cluster 0x0700 is not Smart Energy metering"),
])
def test_zcl_frames_that_are_not_reads(cluster, profile, payload, reason):
    kind, detail = classify(tx(cluster, profile, H(payload)))
    assert kind == NOT_A_READ and detail["reason"] == reason


@pytest.mark.parametrize("cluster,name", [(0x0000, "NWK_addr_req"), (0x0001, "IEEE_addr_req"),
                                          (0x0004, "Simple_Desc_req"), (0x0005, "Active_EP_req"),
                                          (0x0006, "Match_Desc_req")])
def test_zdo_discovery(cluster, name):
    kind, detail = classify(tx(cluster, 0x0000, H("2a0000"), dst_ep=0, src_ep=0))
    assert kind == ZDO_READ and detail["zdo"] == name and detail["zdo_seq"] == 0x2A


@pytest.mark.parametrize("cluster,dst_ep", [(0x0034, 0), (0x0021, 0), (0x0036, 0), (0x0002, 0), (0x0001, 1),
                                            (0x8001, 0)])
def test_other_zdo_is_not_a_read(cluster, dst_ep):
    assert classify(tx(cluster, 0x0000, H("2a0000"), dst_ep=dst_ep))[0] == NOT_A_READ


def test_short_explicit_tx_is_not_a_read():
    assert classify(tx(0x0702, 0x0109, b"")[:19]) == (NOT_A_READ, {"reason": "explicit TX shorter than its "
                                                                             "20-byte header"})


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=255))
def test_classify_never_raises(data):
    kind, detail = classify(data)
    assert kind in (AT_QUERY, ZDO_READ, ZCL_READ, NOT_A_READ) and isinstance(detail, dict)


def test_emulator_never_imports_the_host_side():
    """The classification is only worth something as an independent second implementation."""
    code = ("import sys, openseg_emulator.main, openseg_emulator.classify;"
            "bad = sorted(m for m in sys.modules if '.'.join(m.split('.')[:2]) in ('openseg.han_reader', 'openseg.lan_server'));"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
