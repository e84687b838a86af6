"""The read-only guarantee and the pace law: the egress guard admits exactly the frames the HAN sends.

`reference_allows` is written from the issue and the ZigBee specifications, independently of the guard's
code, and the tests below compare the two *exhaustively* where the space is small enough: every frame
type byte, every two-letter AT command with and without a parameter, every ZDO cluster id at its spec
length, every ZCL frame-control value times every command id (with well-formed payloads) on Simple
Metering and on other clusters, every attribute id, every transmit option and radius, and the
destinations that matter. Hypothesis adds random frames biased towards near misses.

This file is also what the mutation run (tests/han_reader/test_egress_guard_mutation.py) runs against every mutant
of openseg/han_reader/egress_guard.py, so it must stay fast (a few seconds).
"""
import ast
import itertools
import math
import pathlib
import struct

import pytest
from hypothesis import given, settings, strategies as st

from openseg.han_reader import egress_guard, wire_requests, xbee_frames, zcl
from openseg.han_reader.egress_guard import EgressGuard, EgressRefused, Kind, Meter, check
from openseg.han_reader.link import LinkLost

ROOT = pathlib.Path(__file__).resolve().parents[2]
METER = Meter(0x00078100000ABCDE, 9)
INTERVAL = 7.0

# ---- the reference: what may leave the gateway, written plainly ------------------------------------
REF_AT = {b"AP", b"AO", b"AI", b"SH", b"SL", b"VR", b"HV", b"EE", b"MY"}
REF_ATTRIBUTES = {0x0000, 0x0001, 0x0400, 0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x0306}
REF_IEEE_ADDR_TAIL = bytes(4)                                       # NWK 0x0000, single, index 0
REF_MATCH_DESC_TAIL = bytes((0xFD, 0xFF, 0x09, 0x01, 0x01, 0x02, 0x07, 0x00))  # 0xFFFD, SE, [0x0702], []


def reference_allows(frame: bytes, meter: Meter | None = METER) -> bool:
    if frame[:1] == b"\x08":
        return len(frame) == 4 and frame[2:4] in REF_AT
    if frame[:1] != b"\x11" or len(frame) < 20:
        return False
    dest64 = int.from_bytes(frame[2:10], "big")
    dest16 = int.from_bytes(frame[10:12], "big")
    src_ep, dst_ep = frame[12], frame[13]
    cluster = int.from_bytes(frame[14:16], "big")
    profile = int.from_bytes(frame[16:18], "big")
    radius, options, payload = frame[18], frame[19], frame[20:]
    if radius != 0:
        return False
    if profile == 0x0000:
        if src_ep != 0 or dst_ep != 0 or options != 0x00:
            return False
        if cluster == 0x0001:
            return dest64 == 0 and dest16 == 0 and len(payload) == 5 and payload[1:] == REF_IEEE_ADDR_TAIL
        if cluster == 0x0006:
            return dest64 == 0xFFFF and dest16 == 0xFFFD and len(payload) == 9 and \
                payload[1:] == REF_MATCH_DESC_TAIL
        return False
    if profile != 0x0109 or cluster != 0x0702 or meter is None:
        return False
    if dest64 != meter.ieee or dest16 != 0 or src_ep != 0x5E or dst_ep != meter.endpoint or options != 0x20:
        return False
    if len(payload) < 5 or (len(payload) - 3) % 2 or payload[0] != 0x00 or payload[2] != 0x00:
        return False
    ids = [int.from_bytes(payload[i:i + 2], "little") for i in range(3, len(payload), 2)]
    return len(ids) == len(set(ids)) and all(i in REF_ATTRIBUTES for i in ids)


def guard_allows(frame: bytes, meter: Meter | None = METER) -> bool:
    try:
        kind = check(frame, meter)
    except EgressRefused:
        return False
    assert kind in (Kind.AT_QUERY, Kind.ZDO_DISCOVERY, Kind.ZCL_READ)
    return True


def disagreements(frames, meter: Meter | None = METER) -> list[str]:
    return [f.hex() for f in frames if guard_allows(f, meter) != reference_allows(f, meter)][:5]


def tx(cluster, profile, payload, dest64=METER.ieee, dest16=0x0000, src=0x5E, dst=9, radius=0, options=0x20,
       fid=1) -> bytes:
    return struct.pack(">BBQHBBHHBB", 0x11, fid, dest64, dest16, src, dst, cluster, profile, radius,
                       options) + payload


def zdo_tx(cluster, payload, dest64=0, dest16=0x0000, options=0x00, **kw) -> bytes:
    return tx(cluster, 0x0000, payload, dest64, dest16, 0, 0, options=options, **kw)


POLL = bytes((0x00, 7, 0x00, 0x00, 0x00, 0x00, 0x04))                  # read 0x0000, 0x0400
IEEE_REQ = zdo_tx(0x0001, bytes((3,)) + REF_IEEE_ADDR_TAIL)
MATCH_REQ = zdo_tx(0x0006, bytes((4,)) + REF_MATCH_DESC_TAIL, 0xFFFF, 0xFFFD)
READ_REQ = tx(0x0702, 0x0109, POLL)
AT_REQ = bytes((0x08, 1)) + b"AI"
ALLOWED_EXPLICIT = (IEEE_REQ, MATCH_REQ, READ_REQ)


# ---- exhaustive comparisons -------------------------------------------------------------------------
def test_the_requests_the_gateway_builds_are_allowed_and_agree_with_the_reference():
    built = [wire_requests.at_query(1, c.decode()) for c in sorted(REF_AT)] + [
        wire_requests.coordinator_ieee_addr(2, 0xFF), wire_requests.match_simple_metering(3, 0),
        wire_requests.read_meter(4, 5, METER, zcl.POLL_READ),
        wire_requests.read_meter(5, 6, METER, zcl.SCALING_READ)]
    assert [check(f, METER) for f in built] == [Kind.AT_QUERY] * 9 + [Kind.ZDO_DISCOVERY] * 2 + [Kind.ZCL_READ] * 2
    assert all(reference_allows(f) for f in built)
    assert not disagreements([AT_REQ, *ALLOWED_EXPLICIT]) and all(map(reference_allows, ALLOWED_EXPLICIT))


def test_every_frame_type_byte():
    frames = [bytes((t,)) + f[1:] for t in range(256) for f in (AT_REQ, *ALLOWED_EXPLICIT)]
    assert not disagreements(frames)
    assert sum(map(guard_allows, frames)) == 4          # 0x08 with the AT body, 0x11 with the three others


def test_every_two_letter_at_command_with_and_without_a_parameter():
    allowed = set()
    for a, b in itertools.product(range(256), repeat=2):
        query = bytes((0x08, 0x01, a, b))
        if guard_allows(query):
            allowed.add(query[2:4])
        for parameter in (b"\x00", b"\x01\x02"):
            assert not guard_allows(query + parameter), (query + parameter).hex()
    assert allowed == REF_AT
    assert not guard_allows(b"\x08\x01A") and not guard_allows(b"\x08")


# ZigBee spec 2.4.3 request payload lengths after the transaction sequence number (the fixed-size ones;
# User_Desc_set and the variable ones at their shortest).
ZDO_SPEC_TAIL = {0x0000: 10, 0x0001: 4, 0x0002: 2, 0x0003: 2, 0x0004: 3, 0x0005: 2, 0x0006: 6, 0x0010: 2,
                 0x0011: 2, 0x0012: 10, 0x0013: 11, 0x0014: 3, 0x0015: 2, 0x001C: 2, 0x001D: 9, 0x0020: 16,
                 0x0021: 21, 0x0022: 21, 0x0030: 6, 0x0031: 1, 0x0032: 1, 0x0033: 1, 0x0034: 9, 0x0035: 9,
                 0x0036: 2, 0x0037: 1, 0x0038: 5}


def test_every_zdo_cluster_at_its_spec_length():
    allowed = []
    unicast, broadcast = IEEE_REQ[:14], MATCH_REQ[:14]          # header up to the cluster id
    for cluster in range(0x10000):
        tail = bytes(ZDO_SPEC_TAIL.get(cluster, 4))
        rest = struct.pack(">H", cluster) + IEEE_REQ[16:20] + b"\x05"
        frames = (unicast + rest + REF_IEEE_ADDR_TAIL, broadcast + rest + REF_MATCH_DESC_TAIL,
                  unicast + rest + tail, broadcast + rest + tail)
        allowed += [(cluster, i) for i, frame in enumerate(frames) if guard_allows(frame)]
    assert allowed == [(0x0001, 0), (0x0001, 2), (0x0006, 1)]    # spec length of IEEE_addr_req is ours
    assert all(reference_allows(zdo_tx(c, b"\x05" + REF_IEEE_ADDR_TAIL)) == (c == 1) for c in ZDO_SPEC_TAIL)
    # a byte more or less, or any other content, is refused
    for good in (IEEE_REQ, MATCH_REQ):
        assert not guard_allows(good + b"\x00") and not guard_allows(good[:-1])
        for i in range(21, len(good)):
            assert not guard_allows(good[:i] + bytes((good[i] ^ 0x01,)) + good[i + 1:])


def _zcl_body(command: int) -> bytes:
    """A well-formed body for each global command the spec defines (and attribute ids for the rest)."""
    return {0x02: b"\x00\x00\x25" + bytes(6), 0x03: b"\x00\x00\x25" + bytes(6), 0x05: b"\x00\x00\x25" + bytes(6),
            0x06: b"\x00\x00\x00\x25\x01\x00\x3c\x00" + bytes(6), 0x08: b"\x00\x00\x00", 0x0B: b"\x00\x00",
            0x0C: b"\x00\x00\x10"}.get(command, b"\x00\x00\x00\x04")


@pytest.mark.parametrize("profile, cluster", [(0x0109, 0x0702), (0x0104, 0x0702), (0x0109, 0x0703),
                                              (0x0109, 0x0800), (0x0109, 0x0700)])
def test_every_zcl_frame_control_times_every_command(profile, cluster):
    allowed = []
    for fc, command in itertools.product(range(256), repeat=2):
        manufacturer = b"\x5f\x10" if fc & 0x04 else b""
        frame = tx(cluster, profile, bytes((fc,)) + manufacturer + bytes((9, command)) + _zcl_body(command))
        if guard_allows(frame):
            allowed.append((fc, command))
        elif reference_allows(frame):
            pytest.fail(f"reference allows what the guard refuses: {frame.hex()}")
    assert allowed == ([(0x00, 0x00)] if (profile, cluster) == (0x0109, 0x0702) else [])


def test_every_attribute_id_and_the_read_sets():
    allowed = {a for a in range(0x10000) if guard_allows(tx(0x0702, 0x0109, b"\x00\x01\x00" + struct.pack("<H", a)))}
    assert allowed == REF_ATTRIBUTES
    everything = b"".join(struct.pack("<H", a) for a in sorted(REF_ATTRIBUTES))
    frames = [tx(0x0702, 0x0109, b"\x00\x01\x00" + everything),
              tx(0x0702, 0x0109, b"\x00\x01\x00" + everything + b"\x00\x00"),      # a duplicate
              tx(0x0702, 0x0109, b"\x00\x01\x00" + everything + b"\x05\x00"),      # one more, not read
              tx(0x0702, 0x0109, b"\x00\x01\x00\x00\x00\x00\x00"),
              tx(0x0702, 0x0109, b"\x00\x01\x00"), tx(0x0702, 0x0109, b"\x00\x01\x00\x00"),
              tx(0x0702, 0x0109, b"\x00\x01\x00\x00\x00\x00")]
    assert [guard_allows(f) for f in frames] == [True, False, False, False, False, False, False]
    assert not disagreements(frames)


def test_every_transmit_option_and_radius():
    for good in ALLOWED_EXPLICIT:
        for value in range(256):
            for at in (18, 19):                 # radius, options
                frame = good[:at] + bytes((value,)) + good[at + 1:]
                assert guard_allows(frame) == (value == good[at]) == reference_allows(frame), frame.hex()


def test_destinations_and_endpoints():
    dest64s = [METER.ieee, 0, 0xFFFF, 0xFFFFFFFFFFFFFFFF, METER.ieee ^ 1, 0x0013A20040A1B2C3]
    dest16s = [0x0000, 0xFFFC, 0xFFFD, 0xFFFE, 0xFFFF, 0x1234]
    endpoints = [(0x5E, 9), (0, 0), (0x5E, 8), (1, 9), (0xE8, 0xE8), (0, 9), (0x5E, 0)]
    frames = []
    for good, d64, d16, (src, dst) in itertools.product(ALLOWED_EXPLICIT, dest64s, dest16s, endpoints):
        frames.append(good[:2] + struct.pack(">QHBB", d64, d16, src, dst) + good[14:])
    assert not disagreements(frames)
    assert sum(map(guard_allows, frames)) == 3            # each request to its own destination only


def test_no_zcl_read_before_discovery_or_to_a_meter_it_did_not_find():
    assert not guard_allows(READ_REQ, None) and not reference_allows(READ_REQ, None)
    assert not guard_allows(READ_REQ, Meter(METER.ieee, 10))
    assert not guard_allows(READ_REQ, Meter(METER.ieee + 1, 9))
    assert guard_allows(IEEE_REQ, None) and guard_allows(AT_REQ, None)


# ---- random frames, biased towards near misses ----------------------------------------------------
at_frames = st.builds(lambda fid, cmd, param: bytes((0x08, fid)) + cmd + param, st.integers(0, 255),
                      st.one_of(st.sampled_from(sorted(REF_AT)), st.binary(min_size=2, max_size=2)),
                      st.one_of(st.just(b""), st.binary(min_size=1, max_size=8)))
near_misses = st.builds(lambda good, at, value: good[:at] + bytes((value,)) + good[at + 1:],
                        st.sampled_from(ALLOWED_EXPLICIT), st.integers(0, 28), st.integers(0, 255))
any_frames = st.one_of(at_frames, near_misses, st.binary(max_size=40),
                       st.builds(lambda good, extra: good + extra, st.sampled_from(ALLOWED_EXPLICIT),
                                 st.binary(min_size=1, max_size=4)))


@settings(max_examples=400, deadline=None)
@given(any_frames)
def test_guard_and_reference_agree_on_random_frames(frame):
    assert guard_allows(frame) == reference_allows(frame), frame.hex()


# ---- the guard as an object: write capability, refusals, the pace law ------------------------------
class Clock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now

    def wall(self):
        return self.now + 1e9


class Port:
    def __init__(self, fail=False):
        self.written, self.closed, self.fail = [], 0, fail

    def write(self, data):
        if self.fail:
            raise OSError(5, "Input/output error")
        self.written.append(data)

    def close(self):
        self.closed += 1


def guard_with_port(meter=METER):
    clock, port, logged = Clock(), Port(), []
    guard = EgressGuard(logged.append, clock, INTERVAL)
    guard.attach(port)
    guard.aim_at(meter)
    return guard, clock, port, logged


@pytest.mark.parametrize("frame, reason", ids=lambda v: v if isinstance(v, str) else v.hex()[:16], argvalues=[
    (bytes((0x08, 1)) + b"ID" + b"\x01", "parameter"),                     # set PAN id
    (bytes((0x08, 1)) + b"WR", "read-only list"),                          # write to flash
    (bytes((0x08, 1)) + b"FR", "read-only list"),                          # software reset
    (bytes((0x08, 1)) + b"CH", "read-only list"),                          # a query the HAN never sends
    (bytes((0x17, 1)) + bytes(11) + b"\x02D0\x05", "0x17"),                # remote AT
    (tx(0x0702, 0x0109, b"\x00\x01\x02\x00\x00\x25" + bytes(6)), "Read Attributes"),       # Write Attr.
    (tx(0x0702, 0x0109, b"\x00\x01\x06\x00\x00\x00\x25\x01\x00\x3c\x00" + bytes(6)), "Read Attributes"),
    (tx(0x0702, 0x0109, b"\x00\x01\x01\x00\x00"), "not Read Attributes"),  # command 0x01, even length
    (tx(0x0702, 0x0109, b"\x08\x01\x00\x00\x00"), "frame control"),        # direction bit
    (tx(0x0702, 0x0109, b"\x01\x01\x00\x00\x00"), "frame control"),        # cluster-specific
    (tx(0x0702, 0x0109, b"\x10\x01\x00\x00\x00"), "frame control"),        # no default response
    # manufacturer-specific command 0x00 of maker 0x005F: a guard that skipped the frame control would
    # read the code's high byte as "Read Attributes" and seq 0, command 0 as attribute 0x0000
    (tx(0x0702, 0x0109, b"\x04\x5f\x00\x00\x00\x00\x04"), "frame control"),
    (tx(0x0702, 0x0109, POLL, options=0x00), "transmit options"),          # unencrypted read
    (tx(0x0702, 0x0109, POLL, 0xFFFF, 0xFFFD, dst=0xFF), "not to the meter"),   # broadcast read
    (tx(0x0703, 0x0109, POLL), "not allowed"),                             # Messaging
    (tx(0x0800, 0x0109, POLL), "not allowed"),                             # Key Establishment
    (zdo_tx(0x0034, b"\x01" + bytes(9)), "not a request"),                 # Mgmt_Leave_req
    (zdo_tx(0x0036, b"\x01\xff\x00", 0xFFFF, 0xFFFC), "not a request"),    # Mgmt_Permit_Joining_req
    (zdo_tx(0x0021, b"\x01" + bytes(21)), "not a request"),                # Bind_req
    (zdo_tx(0x0022, b"\x01" + bytes(21)), "not a request"),                # Unbind_req
    (zdo_tx(0x0038, b"\x01" + bytes(5), 0xFFFF, 0xFFFD), "not a request"),  # Mgmt_NWK_Update_req
    (zdo_tx(0x0000, b"\x01" + bytes(10)), "not a request"),                # NWK_addr_req (11 bytes)
    (zdo_tx(0x0001, b"\x01" + REF_IEEE_ADDR_TAIL, 0xFFFF, 0xFFFD), "destination"),   # broadcast IEEE
    (zdo_tx(0x0001, b"\x01" + REF_IEEE_ADDR_TAIL + b"\x00"), "payload"),
])
def test_named_frames_are_refused_logged_and_counted(frame, reason):
    guard, _, port, logged = guard_with_port()
    with pytest.raises(EgressRefused, match=reason):
        guard.send(frame)
    assert port.written == [] and guard.refused == 1 and guard.sent == 0
    assert len(logged) == 1 and logged[0].startswith(f"egress-guard: REFUSED frame {frame[:32].hex()}: ")


def test_an_allowed_frame_is_written_escaped_and_counted():
    guard, _, port, logged = guard_with_port()
    assert guard.send(READ_REQ) == Kind.ZCL_READ and guard.send(AT_REQ) == Kind.AT_QUERY
    assert port.written == [xbee_frames.encode(READ_REQ), xbee_frames.encode(AT_REQ)]
    assert (guard.sent, guard.refused, logged) == (2, 0, [])


def test_the_pace_law():
    guard, clock, port, logged = guard_with_port()
    assert guard.explicit_free_at() == guard.explicit_floor_at() == -math.inf
    guard.send(IEEE_REQ)
    assert guard.explicit_free_at() == 100.0 + INTERVAL                # the HAN's aim: a whole interval
    assert guard.explicit_floor_at() == pytest.approx(100.0 + 0.9 * INTERVAL)   # the law: 0.9 x
    for frame in (MATCH_REQ, READ_REQ, IEEE_REQ):          # every frame to the meter, whatever kind
        clock.now = 100.0 + 0.9 * INTERVAL - 0.001
        with pytest.raises(EgressRefused) as refused:
            guard.send(frame)
        assert str(refused.value) == ("pace: 6.299 s after the previous frame to the meter, less than 0.9 x "
                                      "the 7 s poll interval")
    assert guard.refused == 3 and len(logged) == 3 and len(port.written) == 1
    guard.send(AT_REQ)                                     # AT queries stay local: not paced
    assert guard.explicit_free_at() == 100.0 + INTERVAL   # refusals and AT queries do not move the pace
    clock.now = guard.explicit_floor_at()
    guard.send(READ_REQ)                                   # exactly at the floor: allowed
    assert guard.explicit_free_at() == clock.now + INTERVAL and guard.sent == 3
    clock.now += 1.0
    with pytest.raises(EgressRefused):
        guard.send(bytes((0x08, 1)) + b"WR")               # a refused AT frame is still refused
    assert len(port.written) == 3


def test_a_failed_write_still_sets_the_pace():
    """A write that fails part-way (a write timeout, a USB adapter pulled) may have put the frame on the
    wire; after the port is reopened the next frame to the meter still waits for the floor from it."""
    guard, clock, _, logged = guard_with_port()
    guard.attach(Port(fail=True))
    with pytest.raises(LinkLost, match="write failed"):
        guard.send(READ_REQ)
    assert guard.explicit_free_at() == 100.0 + INTERVAL and guard.sent == 0
    guard.attach(Port())                                   # the port reopened a second later
    clock.now += 1.0
    with pytest.raises(EgressRefused, match="pace"):
        guard.send(IEEE_REQ)
    clock.now = 100.0 + 0.9 * INTERVAL
    assert guard.send(IEEE_REQ) == Kind.ZDO_DISCOVERY


def test_the_write_capability_is_attached_detached_and_lost():
    clock, logged = Clock(), []
    guard = EgressGuard(logged.append, clock, INTERVAL)
    with pytest.raises(LinkLost, match="not open"):
        guard.send(AT_REQ)
    first, second = Port(), Port()
    guard.attach(first)
    guard.attach(first)                                    # the same port again is not closed
    assert first.closed == 0
    guard.attach(second)                                   # a new port replaces (and closes) the old
    assert first.closed == 1
    guard.send(AT_REQ)
    assert second.written and not first.written
    guard.attach(None)
    assert second.closed == 1
    with pytest.raises(LinkLost):
        guard.send(AT_REQ)
    broken = Port(fail=True)
    guard.attach(broken)
    with pytest.raises(LinkLost, match="write failed: .*Input/output error"):
        guard.send(AT_REQ)
    assert broken.closed == 1                             # a failed port is given up
    with pytest.raises(LinkLost, match="not open"):
        guard.send(AT_REQ)
    assert guard.sent == 1


def test_a_port_that_fails_to_close_is_still_let_go():
    guard, _, _, _ = guard_with_port()

    class Stuck(Port):
        def close(self):
            raise OSError(5, "gone")
    guard.attach(Stuck())
    guard.attach(None)
    with pytest.raises(LinkLost):
        guard.send(AT_REQ)


# ---- the allow-list is what the code sends, no more ------------------------------------------------
def test_the_at_list_is_exactly_the_queries_the_code_sends():
    sent = set()
    for path in (ROOT / "openseg" / "han_reader").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("at_query", "at_number") \
                    and isinstance(node.args[0], ast.Constant):
                sent.add(node.args[0].value)
    assert sent == set(egress_guard.AT_QUERIES) == {c.decode() for c in REF_AT}
    assert all(egress_guard.AT_QUERIES[c].strip() for c in sent)            # each has its reason


def test_the_attribute_list_is_exactly_what_the_code_reads():
    read = {a.id for a in zcl.POLL_READ + zcl.SCALING_READ}
    # 0x0001 CurrentSummationReceived: admitted now for the energy-exported poll (issue 13)
    assert set(egress_guard.METERING_ATTRIBUTES) == read | {0x0001} == REF_ATTRIBUTES
    assert set(egress_guard.ZDO_REQUESTS) == {0x0001, 0x0006}


# ---- every refusal says exactly why (the log line an auditor reads) ---------------------------------
@pytest.mark.parametrize("frame, meter, message", [
    (b"", METER, "empty frame"),
    (bytes((0x17, 1)) + bytes(12), METER, "frame type 0x17 is not allowed"),
    (READ_REQ[:19], METER, "explicit frame shorter than its header"),
    (READ_REQ[:20], METER, "ZCL frame is not a Read Attributes with whole attribute ids"),   # header only
    (READ_REQ[:18] + b"\x05" + READ_REQ[19:], METER, "radius 5 (only 0, the network's maximum, is sent)"),
    (AT_REQ + b"\x01", METER, "AT command with a parameter (only queries are allowed)"),
    (bytes((0x08, 1)) + b"WR", METER, "AT command 'WR' is not on the read-only list"),
    (zdo_tx(0x0034, b"\x01" + bytes(9)), METER, "ZDO cluster 0x0034 is not a request the gateway sends"),
    (IEEE_REQ[:12] + b"\x00\x01" + IEEE_REQ[14:], METER, "IEEE_addr_req not between endpoints 0"),
    (IEEE_REQ[:2] + MATCH_REQ[2:12] + IEEE_REQ[12:], METER,
     "IEEE_addr_req to 000000000000ffff/0xfffd, not to its one destination"),
    (MATCH_REQ[:19] + b"\x20" + MATCH_REQ[20:], METER, "Match_Desc_req with transmit options 0x20"),
    (IEEE_REQ + b"\x00", METER, "IEEE_addr_req with a payload other than the gateway's own"),
    (tx(0x0702, 0x0104, POLL), METER, "profile 0x0104 cluster 0x0702 is not allowed"),
    (READ_REQ, None, "ZCL frame before discovery found the meter"),
    (tx(0x0702, 0x0109, POLL, dest64=0xABCD, dst=7), METER,
     "ZCL frame to 000000000000abcd/0x0000 endpoint 94->7, not to the meter"),
    (tx(0x0702, 0x0109, POLL, options=0x00), METER,
     "ZCL frame with transmit options 0x00 (APS encryption only)"),
    (tx(0x0702, 0x0109, POLL[:-1]), METER, "ZCL frame is not a Read Attributes with whole attribute ids"),
    (tx(0x0702, 0x0109, b"\x10\x01\x00\x00\x00"), METER, "ZCL frame control 0x10 is not a plain global request"),
    (tx(0x0702, 0x0109, b"\x00\x01\x02\x07\x00"), METER, "ZCL command 0x02 is not Read Attributes"),
    (tx(0x0702, 0x0109, b"\x00\x01\x00\x00\x00\x00\x00"), METER,
     "Read Attributes of ['0x0', '0x0'], not each of the read set once"),
])
def test_each_refusal_names_its_reason(frame, meter, message):
    with pytest.raises(EgressRefused) as refused:
        check(frame, meter)
    assert str(refused.value) == message


def test_a_guard_not_yet_aimed_refuses_reads_but_not_discovery():
    clock, port, logged = Clock(), Port(), []
    guard = EgressGuard(logged.append, clock, INTERVAL)
    guard.attach(port)
    with pytest.raises(EgressRefused, match="before discovery"):
        guard.send(READ_REQ)
    assert guard.send(IEEE_REQ) == Kind.ZDO_DISCOVERY
    guard.aim_at(METER)
    clock.now += INTERVAL
    assert guard.send(READ_REQ) == Kind.ZCL_READ
    guard.aim_at(None)
    clock.now += INTERVAL
    with pytest.raises(EgressRefused, match="before discovery"):
        guard.send(READ_REQ)
    with pytest.raises(LinkLost) as lost:
        EgressGuard(logged.append, clock, INTERVAL).send(AT_REQ)
    assert str(lost.value) == "the serial port is not open"
