"""XBee API framing: round trips, cross-checks against python-xbee, and hostile byte streams."""
import struct

from hypothesis import given, settings, strategies as st
from xbee.frame import APIFrame

from openseg.han_reader import xbee_frames as xf

frame_data = st.binary(min_size=1, max_size=xf.MAX_FRAME_DATA)
# Bias towards the bytes that need escaping, where codecs go wrong.
special_heavy = st.lists(st.sampled_from([0x7E, 0x7D, 0x11, 0x13, 0x00, 0xFF, 0x20, 0x5E]),
                         min_size=1, max_size=64).map(bytes)


def reference_decode(wire: bytes) -> bytes:
    """Decode one escaped frame with python-xbee, the independent implementation."""
    frame = APIFrame(escaped=True)
    for i in range(len(wire)):
        frame.fill(wire[i:i + 1])
    frame.parse()
    return frame.data


@given(st.one_of(frame_data, special_heavy))
def test_our_encoder_matches_python_xbee(data):
    assert xf.encode(data) == APIFrame(data, escaped=True).output()
    assert reference_decode(xf.encode(data)) == data


@given(st.one_of(frame_data, special_heavy))
def test_our_decoder_reads_python_xbee_output(data):
    decoder = xf.Decoder()
    assert decoder.feed(APIFrame(data, escaped=True).output()) == [data]
    assert decoder.stats.bad_frames == 0


@given(st.lists(st.one_of(frame_data, special_heavy), min_size=1, max_size=8),
       st.integers(1, 7))
def test_stream_split_anywhere_decodes_the_same(frames, chunk):
    wire = b"".join(xf.encode(f) for f in frames)
    decoder = xf.Decoder()
    out = []
    for i in range(0, len(wire), chunk):
        out += decoder.feed(wire[i:i + chunk])
    assert out == frames


def test_escaped_bytes_never_appear_raw_after_the_delimiter():
    wire = xf.encode(bytes([0x7E, 0x7D, 0x11, 0x13]) * 4)
    assert not any(b in (0x7E, 0x11, 0x13) for b in wire[1:])


def test_length_and_checksum_are_escaped_too():
    # 0x7E bytes of data -> length byte 0x7E must be escaped; choose data whose checksum is 0x11.
    data = bytes([0x01] * 0x7D) + bytes([(0xFF - 0x11 - 0x7D) & 0xFF])
    assert xf.checksum(data) == 0x11 and len(data) == 0x7E
    wire = xf.encode(data)
    assert wire[1:5] == bytes([0x00, 0x7D, 0x5E, 0x01])
    assert wire[-2:] == bytes([0x7D, 0x31])
    assert xf.Decoder().feed(wire) == [data]


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_garbage_never_raises_and_is_accounted(noise):
    decoder = xf.Decoder()
    frames = decoder.feed(noise)
    for f in frames:                      # whatever came out passed its checksum
        assert 1 <= len(f) <= xf.MAX_FRAME_DATA
        try:
            xf.parse(f)
        except xf.FrameError:
            pass


@given(st.binary(max_size=80), st.one_of(frame_data, special_heavy))
def test_resynchronises_after_garbage(noise, data):
    decoder = xf.Decoder()
    decoder.feed(noise)
    assert decoder.feed(xf.encode(data)) == [data]


def test_damage_is_counted_by_kind():
    good = xf.encode(b"\x8a\x02")
    bad_sum = bytearray(good)
    bad_sum[-1] ^= 0x01
    decoder = xf.Decoder()
    frames = decoder.feed(b"\x00\x01" + bytes(bad_sum) + good[:3] + good + b"\x7e\x00\x00" + good
                          + b"\x7e\x7f\xff" + good + b"\x7e\x00\x7d\x01" + good)
    assert frames == [b"\x8a\x02"] * 4
    s = decoder.stats
    assert (s.garbage_bytes, s.bad_checksum, s.truncated, s.empty, s.oversize, s.bad_escape) == (2, 1, 1, 1, 1, 1)
    assert s.bad_frames == 5 and s.frames == 4


def test_empty_frame_does_not_lose_escaped_mode():
    """python-xbee forgets escaped mode after an empty frame; ours must not."""
    data = b"\x91" + bytes([0x7D, 0x7E, 0x11]) * 6
    decoder = xf.Decoder()
    assert decoder.feed(b"\x7e\x00\x00\xff" + xf.encode(data)) == [data]


def test_parse_frame_types():
    rx = struct.pack(">BQHBBHHB", 0x91, 0x000D6F000ABCDEF0, 0x0000, 9, 0x5E, 0x0702, 0x0109, 0x21) + b"\x18\x01\x01"
    frame = xf.parse(rx)
    assert isinstance(frame, xf.ExplicitRx)
    assert (frame.src64, frame.src16, frame.src_endpoint, frame.cluster, frame.profile) == \
        (0x000D6F000ABCDEF0, 0, 9, 0x0702, 0x0109)
    assert frame.aps_encrypted and frame.payload == b"\x18\x01\x01"
    assert xf.parse(b"\x88\x05AI\x00\xff") == xf.ATResponse(5, "AI", 0, b"\xff")
    assert xf.parse(b"\x8b\x07\x00\x00\x00\x21\x00") == xf.TxStatus(7, 0, 0, 0x21, 0)
    assert not xf.parse(b"\x8b\x07\x00\x00\x00\x21\x00").ok
    assert xf.parse(b"\x8a\x00") == xf.ModemStatus(0)
    assert xf.parse(b"\x95\x01") == xf.Unknown(0x95, b"\x95\x01")


@given(st.sampled_from([0x88, 0x91, 0x8B, 0x8A]), st.binary(max_size=40))
def test_parse_short_or_odd_frames_raises_only_frame_error(kind, rest):
    try:
        xf.parse(bytes((kind,)) + rest)
    except xf.FrameError:
        pass


def test_explicit_tx_layout_and_aps_option():
    frame = xf.ExplicitTx(0x42, 0x0013A20041000001, 0xFFFE, 0x5E, 9, 0x0702, 0x0109, b"\x00\x01\x00\x00\x00")
    data = frame.encode()
    assert data[:2] == b"\x11\x42" and data[18] == 0 and data[19] == xf.TX_OPT_APS_ENCRYPTION
    assert data[14:18] == b"\x07\x02\x01\x09"
