"""Emulated radio and meter, without a pty: every answer byte-exact against hand-computed frames."""
import struct
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from openseg_emulator import metering
from openseg_emulator.meter_model import MeterModel, SteppedLoad
from openseg_emulator.network import Network
from openseg_emulator.radio import DELIVERY_FAILURE_DELAY_S, Radio, RadioConfig

H = bytes.fromhex
COORD_IEEE = H("000d6f000abcdef0")
METER_IEEE = H("000d6f000c4d2a17")       # the separate meter of --meter-address != 0


def explicit_tx(fid, dest64: bytes, dest16, src_ep, dst_ep, cluster, profile, payload, options=0x20):
    """An explicit TX frame built by hand from docs/han-protocol.md, independently of the emulator."""
    return (bytes([0x11, fid]) + dest64 + struct.pack(">HBBHHBB", dest16, src_ep, dst_ep, cluster, profile, 0, options)
            + payload)


def joined_radio(meter_address=0x0000, **config):
    radio = Radio(RadioConfig(join_delay_s=0.5, **config), Network(meter_address, 9), now=0.0)
    radio.tick(1.0)
    assert radio.joined
    return radio


def frames(handled):
    return [r.frame for r in handled.replies]


def render(reply, load_w=1500, multiplier=1, divisor=1000, export=False):
    """The meter answer as main sends it: 0x91 header + Read Attributes Response sampled at t=0."""
    model = MeterModel(SteppedLoad(load_w), Fraction("12345.678"), multiplier, divisor)
    s = model.sample(0)
    settings = metering.MeterSettings(0, 0, multiplier, divisor, *model.formatting(), export)
    values = metering.attribute_values(settings, s.summation_raw, s.demand_raw, s.received_raw)
    return reply.frame + metering.read_attributes_response(reply.read, values)


# ---- AT queries and joining -------------------------------------------------------------------------

def test_power_up_scanning_then_joined():
    radio = Radio(RadioConfig(join_delay_s=0.5), Network(), now=0.0)
    ai = radio.handle(b"\x08\x01AI", 0.1)
    my = radio.handle(b"\x08\x02MY", 0.1)
    assert frames(ai) == [H("8801414900ff")]
    assert frames(my) == [H("88024d5900fffe")]
    assert radio.tick(0.49) == []
    assert [r.frame for r in radio.tick(0.5)] == [H("8a02")]
    assert frames(radio.handle(b"\x08\x03AI", 0.6)) == [H("880341490000")]
    assert frames(radio.handle(b"\x08\x04MY", 0.6)) == [H("88044d59007a3c")]


@pytest.mark.parametrize("cmd,value", [
    (b"VR", "3362"), (b"HV", "1a42"), (b"AP", "02"), (b"AO", "01"), (b"SH", "0013a200"), (b"SL", "415e7c01"),
    (b"EE", "01"), (b"CH", "14"), (b"OP", "000d6f000abcdef0"), (b"OI", "1a2b"), (b"NP", "0050"), (b"DB", "3a"),
    (b"EO", "02"),
])
def test_read_only_queries(cmd, value):
    assert frames(joined_radio().handle(b"\x08\x07" + cmd, 2.0)) == [b"\x88\x07" + cmd + b"\x00" + H(value)]


def test_identity_options_are_what_the_queries_report():
    radio = joined_radio(api_mode=1, api_options=0, firmware=0x3164, hardware=0x1E46)
    assert frames(radio.handle(b"\x08\x01AP", 2)) == [H("880141500001")]
    assert frames(radio.handle(b"\x08\x01AO", 2)) == [H("8801414f0000")]
    assert frames(radio.handle(b"\x08\x01VR", 2)) == [H("88015652003164")]


def test_at_with_parameter_or_unknown_is_refused_and_nothing_changes():
    radio = joined_radio()
    assert frames(radio.handle(b"\x08\x05AP\x01", 2)) == [H("8805415003")]
    assert frames(radio.handle(b"\x08\x06ZZ", 2)) == [H("88065a5a02")]
    assert frames(radio.handle(b"\x08\x07WR", 2)) == [H("8807575202")]
    assert frames(radio.handle(b"\x08\x08AP", 2)) == [H("880841500002")]      # still 2
    assert frames(radio.handle(b"\x08\x00VR", 2)) == []                          # frame id 0: silent


def test_reset_announces_and_rejoins():
    radio = joined_radio()
    assert [r.frame for r in radio.reset(10.0)] == [H("8a00")]
    assert frames(radio.handle(b"\x08\x01AI", 10.1)) == [H("8801414900ff")]
    assert [r.frame for r in radio.tick(10.5)] == [H("8a02")]


# ---- ZDO discovery ----------------------------------------------------------------------------------

def test_ieee_addr_req_to_coordinator_meter():
    tx = explicit_tx(1, bytes(8), 0x0000, 0, 0, 0x0001, 0x0000, H("2a00000000"))
    assert frames(joined_radio().handle(tx, 2)) == [
        H("8b010000000000"),
        H("91" "000d6f000abcdef0" "0000" "00" "00" "8001" "0000" "21" "2a00" "f0debc0a006f0d00" "0000"),
    ]


def test_match_desc_broadcast_answered_from_the_meter_address():
    tx = explicit_tx(2, H("000000000000ffff"), 0xFFFD, 0, 0, 0x0006, 0x0000, H("07fdff090101020700"))
    assert frames(joined_radio(0x1234).handle(tx, 2)) == [
        H("8b02fffd000000"),
        H("91" "000d6f000c4d2a17" "1234" "00" "00" "8006" "0000" "22" "07" "00" "3412" "01" "09"),
    ]


def test_match_desc_other_cluster_or_profile_no_match_is_silent():
    radio = joined_radio()
    for payload in ("07fdff09010100 0700", "07fdff04010102 0700"):   # in-cluster 0x0001; profile 0x0104
        tx = explicit_tx(3, H("000000000000ffff"), 0xFFFD, 0, 0, 0x0006, 0, H(payload))
        assert frames(radio.handle(tx, 2)) == [H("8b03fffd000000")]


def test_separate_coordinator_answers_ieee_addr_but_has_no_meter():
    radio = joined_radio(0x1234)
    tx = explicit_tx(4, bytes(8), 0x0000, 0, 0, 0x0001, 0, H("0b00000000"))
    assert frames(radio.handle(tx, 2))[1] == H("91" "000d6f000abcdef0" "0000" "0000" "8001" "0000" "21"
                                               "0b00" "f0debc0a006f0d00" "0000")
    # A host assuming the meter is the coordinator on endpoint 1 gets "unsupported cluster" from the ESI.
    read = explicit_tx(5, bytes(8), 0x0000, 0x5E, 1, 0x0702, 0x0109, H("000c000000"))
    assert frames(radio.handle(read, 2)) == [H("8b050000000000"),
                                             H("91" "000d6f000abcdef0" "0000" "01" "5e" "0702" "0109" "21"
                                               "180c0b00c3")]


def test_simple_desc_active_ep_nwk_addr():
    radio = joined_radio()
    sd = explicit_tx(6, bytes(8), 0, 0, 0, 0x0004, 0, H("08000009"))
    assert frames(radio.handle(sd, 2))[1][18:] == H("08" "00" "0000" "0a" "09" "0901" "0105" "01" "01" "0207" "00")
    sd_missing = explicit_tx(6, bytes(8), 0, 0, 0, 0x0004, 0, H("08000001"))
    assert frames(radio.handle(sd_missing, 2))[1][18:] == H("0883000000")
    ae = explicit_tx(7, bytes(8), 0, 0, 0, 0x0005, 0, H("090000"))
    assert frames(radio.handle(ae, 2))[1][13:] == H("8005" "0000" "21" "09" "00" "0000" "01" "09")
    nwk = explicit_tx(8, H("000000000000ffff"), 0xFFFD, 0, 0, 0x0000, 0, H("0a" "f0debc0a006f0d00" "0000"))
    assert frames(radio.handle(nwk, 2)) == [H("8b08fffd000000"),
                                            H("91" "000d6f000abcdef0" "0000" "0000" "8000" "0000" "22"
                                              "0a00" "f0debc0a006f0d00" "0000")]


def test_other_zdo_requests_are_refused_not_applied():
    radio = joined_radio()
    leave = explicit_tx(9, bytes(8), 0, 0, 0, 0x0034, 0, H("0c" + "00" * 8 + "00"))
    assert frames(radio.handle(leave, 2)) == [H("8b090000000000"),
                                              H("91000d6f000abcdef00000000080340000210c84")]


# ---- ZCL metering -------------------------------------------------------------------------------------

def read_tx(attrs, fid=3, seq=0x11, dest64=COORD_IEEE, dest16=0x0000, ep=9, options=0x20, cluster=0x0702,
            profile=0x0109):
    payload = bytes([0x00, seq, 0x00]) + b"".join(struct.pack("<H", a) for a in attrs)
    return explicit_tx(fid, dest64, dest16, 0x5E, ep, cluster, profile, payload, options)


def test_poll_read_byte_exact():
    handled = joined_radio().handle(read_tx([0x0000, 0x0400]), 2)
    status, reply = handled.replies
    assert status.frame == H("8b030000000000") and status.delay_s == 0
    assert reply.read.is_poll and reply.source == "meter"
    assert render(reply) == H("91" "000d6f000abcdef0" "0000" "09" "5e" "0702" "0109" "21"
                              "181101" "0000" "00" "25" "4e61bc000000" "0004" "00" "2a" "dc0500")


def test_scaling_read_byte_exact_and_unsupported_attributes():
    reply = joined_radio().handle(read_tx([0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x0306, 0x0001, 0x0200]),
                                  2).replies[1]
    assert not reply.read.is_poll
    assert render(reply, multiplier=3, divisor=10000)[18:] == H(
        "181101" "0003" "00" "30" "00" "0103" "00" "22" "030000" "0203" "00" "22" "102700"
        "0303" "00" "18" "34" "0403" "00" "18" "24" "0603" "00" "18" "00" "0100" "86" "0002" "86")


def test_negative_demand_and_received_summation_with_export():
    reply = joined_radio().handle(read_tx([0x0400, 0x0001]), 2).replies[1]
    assert render(reply, load_w=-2500, export=True)[18:] == H("181101" "0004" "00" "2a" "3cf6ff" "0100" "00" "25"
                                                              "000000000000")


@pytest.mark.parametrize("zcl,answer", [
    ("0005020000250000000000", "18050b0288"),        # Write Attributes -> READ_ONLY
    ("000503000025000000000000", "18050b0388"),      # Write Attributes Undivided
    ("00050600000000250a000a00", "18050b068c"),      # Configure Reporting
    ("000508000000", "18050b0882"),                  # Read Reporting Configuration: not served
    ("010506", "18050b0681"),                        # cluster-specific (Get Snapshot)
    ("04341205000000", "1c3412050b0084"),   # manufacturer-specific Read Attributes
    ("10050000", "18050b0080"),                      # Read Attributes with half an attribute id
])
def test_non_reads_get_error_default_responses(zcl, answer):
    tx = explicit_tx(3, COORD_IEEE, 0, 0x5E, 9, 0x0702, 0x0109, H(zcl))
    handled = joined_radio().handle(tx, 2)
    assert len(handled.replies) == 2 and handled.replies[0].frame == H("8b030000000000")
    assert handled.replies[1].frame[18:] == H(answer)
    assert handled.replies[1].read is None


def test_wrong_endpoint_profile_cluster_or_no_encryption():
    radio = joined_radio()
    ok_status = [H("8b030000000000")]
    assert frames(radio.handle(read_tx([0], ep=1), 2)) == ok_status                   # no such endpoint
    assert frames(radio.handle(read_tx([0], profile=0x0104), 2)) == ok_status         # other profile
    assert frames(radio.handle(read_tx([0], options=0x00), 2)) == ok_status           # not APS-encrypted
    other = frames(radio.handle(read_tx([0], cluster=0x0703), 2))
    assert other == ok_status + [H("91000d6f000abcdef00000095e0703010921" "18110b00c3")]


def test_reply_delay_applies_to_zcl_only():
    radio = joined_radio(reply_delay_s=0.25)
    assert [r.delay_s for r in radio.handle(read_tx([0]), 2).replies] == [0, 0.25]
    zdo = explicit_tx(1, bytes(8), 0, 0, 0, 0x0001, 0, H("2a00000000"))
    assert [r.delay_s for r in radio.handle(zdo, 2).replies] == [0, 0]


def test_no_aps_encryption_option():
    reply = joined_radio(aps_encryption=False).handle(read_tx([0]), 2).replies[1]
    assert reply.frame[17] == 0x01


# ---- delivery failures ---------------------------------------------------------------------------------

def test_not_joined_explicit_tx_fails_0x22_without_reply():
    radio = Radio(RadioConfig(join_delay_s=5), Network(), now=0.0)
    assert frames(radio.handle(read_tx([0]), 1)) == [H("8b03fffd002200")]


def test_meter_powered_off():
    radio = joined_radio()
    radio.network.meter.powered = False
    handled = radio.handle(read_tx([0, 0x0400]), 2)
    assert [(r.delay_s, r.frame) for r in handled.replies] == [(DELIVERY_FAILURE_DELAY_S, H("8b030000032100"))]
    match = explicit_tx(2, H("000000000000ffff"), 0xFFFD, 0, 0, 0x0006, 0, H("07fdff090101020700"))
    assert frames(radio.handle(match, 2)) == [H("8b02fffd000000")]
    ieee = explicit_tx(1, bytes(8), 0, 0, 0, 0x0001, 0, H("2a00000000"))
    assert frames(radio.handle(ieee, 2)) == [H("8b010000032100")]
    radio.network.meter.powered = True
    assert len(radio.handle(read_tx([0]), 2).replies) == 2


def test_addressing_by_64_bit_with_stale_16_bit_and_unknown_devices():
    radio = joined_radio(0x1234)
    handled = radio.handle(read_tx([0], dest64=METER_IEEE, dest16=0xFFFE), 2)
    assert handled.replies[0].frame == H("8b031234000001")      # discovered 0x1234
    assert handled.replies[1].frame[:11] == H("91") + METER_IEEE + H("1234")
    lost = radio.handle(read_tx([0], dest64=H("0011223344556677")), 2)
    assert [(r.delay_s, r.frame) for r in lost.replies] == [(DELIVERY_FAILURE_DELAY_S, H("8b03fffd032401"))]
    assert frames(radio.handle(read_tx([0], dest64=H("0013a200415e7c01")), 2)) == [H("8b037a3c002300")]


def test_remote_at_and_plain_tx_are_refused():
    radio = joined_radio()
    remote = H("1701") + COORD_IEEE + H("0000") + H("02") + b"AP" + b"\x01"
    assert frames(radio.handle(remote, 2)) == [H("9701") + COORD_IEEE + H("0000") + b"AP" + H("04")]
    plain = H("1002") + COORD_IEEE + H("0000") + H("0000") + b"hello"
    assert frames(radio.handle(plain, 2)) == [H("8b020000000000")]


@pytest.mark.parametrize("data", [b"\x11", b"\x08", b"\x08\x01A", b"\x17\x01", b"\x10", b"\xff\x00",
                                  explicit_tx(1, bytes(8), 0, 0, 0, 0x0006, 0, b"\x01\x02"),
                                  explicit_tx(1, bytes(8), 0, 0, 0, 0x0006, 0, H("07fdff0901ff")),
                                  explicit_tx(1, bytes(8), 0, 0x5E, 9, 0x0702, 0x0109, b"\x04\x00")])
def test_malformed_frames_never_crash(data):
    joined_radio().handle(data, 2)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(min_size=1, max_size=255),
    st.builds(lambda kind, rest: bytes([kind]) + rest, st.sampled_from([0x08, 0x09, 0x10, 0x11, 0x17]),
              st.binary(max_size=40)),
    st.builds(lambda dest, cl, pr, ep, opt, payload: explicit_tx(1, dest, 0xFFFE, 0, ep, cl, pr, payload, opt),
              st.sampled_from([bytes(8), COORD_IEEE, METER_IEEE, H("000000000000ffff"), H("fffffffffffffffe")]),
              st.sampled_from([0x0000, 0x0001, 0x0004, 0x0005, 0x0006, 0x0034, 0x0702, 0x0700, 0x8001]),
              st.sampled_from([0x0000, 0x0109, 0xFFFF]), st.sampled_from([0, 1, 9, 0xFF]),
              st.sampled_from([0x00, 0x20]), st.binary(max_size=30))))
def test_any_host_frame_gets_well_formed_answers(data):
    for radio in (joined_radio(), joined_radio(0x1234)):
        for reply in radio.handle(data, 2).replies:
            frame = render(reply) if reply.read else reply.frame
            assert 1 <= len(frame) <= 255 and frame[0] in (0x88, 0x8B, 0x91, 0x97)
