"""Emulator framing and fault injection: python-xbee agrees, hostile streams never break the decoder."""
import random

from hypothesis import given, settings, strategies as st
from xbee.frame import APIFrame

from openseg_emulator import api_frames as af
from openseg_emulator.faults import CORRUPT, DROP, FaultInjector

frame_data = st.binary(min_size=1, max_size=af.MAX_FRAME_DATA)
special_heavy = st.lists(st.sampled_from([0x7E, 0x7D, 0x11, 0x13, 0x00, 0xFF, 0x5E]), min_size=1,
                         max_size=40).map(bytes)


def decoded(items):
    return [i.data for i in items if isinstance(i, af.Decoded)]


def test_hand_computed_at_response_frame():
    # 88 01 'V' 'R' 00 33 62: sum = 0x88+0x01+0x56+0x52+0x00+0x33+0x62 = 0x1C6 -> checksum 0xFF-0xC6 = 0x39
    assert af.encode(af.at_response(1, b"VR", 0, b"\x33\x62")) == bytes.fromhex("7e00078801565200336239")


def test_escaping_of_length_data_and_checksum():
    # Modem status 0x11 would need escaping in the data; 8A 11 -> checksum 0xFF-0x9B = 0x64
    assert af.encode(b"\x8a\x11") == bytes.fromhex("7e00028a7d3164")
    data = bytes([0x01] * 0x7D) + bytes([(0xFF - 0x11 - 0x7D) & 0xFF])   # length 0x7E, checksum 0x11
    wire = af.encode(data)
    assert wire[1:5] == bytes.fromhex("007d5e01") and wire[-2:] == bytes.fromhex("7d31")


@given(st.lists(st.one_of(frame_data, special_heavy), min_size=1, max_size=6), st.integers(1, 9))
def test_decoder_reads_python_xbee_frames_split_anywhere(frames, chunk):
    wire = b"".join(APIFrame(f, escaped=True).output() for f in frames)
    dec = af.StreamDecoder()
    items = []
    for i in range(0, len(wire), chunk):
        items += dec.feed(wire[i:i + chunk])
    assert decoded(items) == frames
    assert not [i for i in items if isinstance(i, af.Damaged)]


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_decoder_never_raises_and_resyncs_after_any_bytes(junk):
    dec = af.StreamDecoder()
    dec.feed(junk)
    good = b"\x08\x01VR"
    # Whatever state the junk left behind, a delimiter starts afresh: the next frame always decodes.
    assert decoded(dec.feed(af.encode(good))) == [good]


def test_damage_is_reported_with_reasons():
    dec = af.StreamDecoder()
    good = af.encode(b"\x08\x01AI")
    bad_sum = good[:-1] + bytes([good[-1] ^ 1])
    items = dec.feed(b"\x01\x02" + bad_sum + b"\x7e\x01\x2c" + good + b"\x7e\x00\x05\x08" + good)
    reasons = [i.reason for i in items if isinstance(i, af.Damaged)]
    assert reasons == ["bytes outside a frame", "checksum mismatch", "length 300 outside 1-255",
                       "frame cut short by a start delimiter"]
    assert decoded(items) == [b"\x08\x01AI", b"\x08\x01AI"]
    assert [i.reason for i in dec.feed(b"\x7e\x00\x00")] == ["length 0 outside 1-255"]
    assert decoded(dec.feed(good)) == [b"\x08\x01AI"]


def test_bad_escape_is_damage_not_a_crash():
    dec = af.StreamDecoder()
    items = dec.feed(b"\x7e\x00\x7d\x41\x08")     # 0x41 ^ 0x20 = 0x61 needs no escaping
    assert [i.reason for i in items] == ["escaped byte 0x61 is not one that needs escaping",
                                         "bytes outside a frame"]


def test_fault_decisions_follow_the_seed_and_rates():
    a = FaultInjector(random.Random(5), 0.2, 0.3)
    b = FaultInjector(random.Random(5), 0.2, 0.3)
    fates = [a.decide() for _ in range(2000)]
    assert fates == [b.decide() for _ in range(2000)]
    drops, corrupts = fates.count(DROP), fates.count(CORRUPT)
    assert 300 < drops < 500 and 400 < corrupts < 560         # 400 and 480 expected
    assert all(FaultInjector(random.Random(1), 0, 0).decide() is None for _ in range(100))
    assert all(FaultInjector(random.Random(1), 1, 0).decide() == DROP for _ in range(100))


@settings(max_examples=200)
@given(st.integers(0, 2**32), st.one_of(frame_data, special_heavy))
def test_corrupted_frame_always_fails_checksum_and_never_desyncs(seed, data):
    inj = FaultInjector(random.Random(seed), 0, 1)
    wire, noise = inj.corrupt(data)
    dec = af.StreamDecoder()
    items = dec.feed(wire)
    assert decoded(items) == [], "a corrupted answer must never decode as a valid frame"
    assert any(isinstance(i, af.Damaged) and i.reason == "checksum mismatch" for i in items)
    assert not any(b in (0x11, 0x13) for b in wire[1:]), "still a well-formed escaped stream"
    # The host's next frame is read normally.
    assert decoded(dec.feed(af.encode(b"\x8a\x02"))) == [b"\x8a\x02"]


def test_corruption_sometimes_brings_line_noise():
    inj = FaultInjector(random.Random(3), 0, 1)
    noises = [inj.corrupt(b"\x91" + bytes(30))[1] for _ in range(200)]
    assert 60 < sum(noises) < 140
