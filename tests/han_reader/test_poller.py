"""One slot's query against the fake radio: every lost cause, sentinels, time tags, stale replies."""
import struct

import pytest

from openseg.han_reader import poller, xbee_frames, zcl
from openseg.han_reader.discovery import Meter
from openseg.han_reader.radio import RadioReset

from tests.support.fake_radio import METER_IEEE, FakeClock, FakeRadio, Node, wire_radio

TIMEOUT = 3.0


def rig(node=None, aps=True, require_aps=True, reply_delay=0.05):
    clock = FakeClock()
    hw = FakeRadio(clock, [node or Node(endpoint=9)], aps=aps, reply_delay=reply_delay)
    radio = wire_radio(hw, require_aps=require_aps)
    hw.open()
    n = hw.meters[0]
    meter = Meter(n.ieee, n.nwk, n.endpoint)
    radio.aim_at(meter)
    return hw, radio, meter


def records(*recs):
    return b"".join(recs)


def rec(attr, type_id, value, signed=False):
    size = zcl.TYPES[type_id][1]
    return struct.pack("<HBB", attr, 0, type_id) + value.to_bytes(size, "little", signed=signed)


def test_a_reading_is_tagged_when_the_reply_arrived_with_its_round_trip():
    hw, radio, meter = rig(Node(endpoint=9, summation=0xFFFFFFFFFFFE, demand=-1500), reply_delay=0.4)
    sent_mono = hw.clock.monotonic()
    out = poller.poll_once(radio, meter, TIMEOUT)
    assert out.cause is None
    assert out.summation == 0xFFFFFFFFFFFE and out.demand == -1500      # uint48 max-1, signed int24
    assert out.received == 4_321 == hw.answers[0]["received"]
    assert out.mono == pytest.approx(sent_mono + 0.4)
    assert out.rtt_s == pytest.approx(0.4)
    assert hw.answers[0]["summation"] == 0xFFFFFFFFFFFE


@pytest.mark.parametrize("fault, cause", [
    ("drop", "timeout"), ("corrupt", "timeout"), ("tx-fail", "tx-failed"),
    ("default-response", "zcl-status"), ("malformed", "malformed"),
])
def test_each_fault_is_lost_with_its_cause(fault, cause):
    hw, radio, meter = rig()
    hw.poll_faults = [fault]
    out = poller.poll_once(radio, meter, TIMEOUT)
    assert out.cause == cause and out.summation is None and out.demand is None
    if fault == "corrupt":
        assert radio.frames_bad == 1
    # the next query is unaffected
    assert poller.poll_once(radio, meter, TIMEOUT).cause is None


def test_timeout_waits_exactly_the_response_timeout():
    hw, radio, meter = rig()
    hw.poll_faults = ["drop"]
    t0 = hw.clock.now
    assert poller.poll_once(radio, meter, TIMEOUT).cause == "timeout"
    assert hw.clock.now == pytest.approx(t0 + TIMEOUT)


def test_tx_failure_ends_the_query_without_waiting():
    hw, radio, meter = rig()
    hw.meters[0].powered = False
    t0 = hw.clock.now
    out = poller.poll_once(radio, meter, TIMEOUT)
    assert out.cause == "tx-failed" and "network ACK failure" in out.detail
    assert hw.clock.now - t0 < 0.1


@pytest.mark.parametrize("body, cause, summation, demand", [
    # both sentinels: the meter has no measurement -> not a value, lost as zcl-status
    (rec(0x0000, 0x25, 0xFFFFFFFFFFFF) + rec(0x0400, 0x2A, -0x800000, True), "zcl-status", None, None),
    # one sentinel: a reading with only the other value
    (rec(0x0000, 0x25, 0xFFFFFFFFFFFF) + rec(0x0400, 0x2A, 250, True), None, None, 250),
    (rec(0x0000, 0x25, 42) + rec(0x0400, 0x2A, -0x800000, True), None, 42, None),
    # both refused
    (struct.pack("<HB", 0, 0x86) + struct.pack("<HB", 0x0400, 0x86), "zcl-status", None, None),
    # one refused
    (rec(0x0000, 0x25, 42) + struct.pack("<HB", 0x0400, 0x86), None, 42, None),
    # neither attribute that was asked for
    (rec(0x0300, 0x30, 0), "malformed", None, None),
    # wrong type for the attribute id
    (rec(0x0000, 0x23, 42) + rec(0x0400, 0x2A, 1, True), "malformed", None, None),
    # truncated record
    (rec(0x0000, 0x25, 42)[:-2], "malformed", None, None),
])
def test_reply_contents(body, cause, summation, demand):
    hw, radio, meter = rig()
    hw.poll_faults = [lambda seq: bytes((0x18, seq, 0x01)) + body]
    out = poller.poll_once(radio, meter, TIMEOUT)
    assert (out.cause, out.summation, out.demand) == (cause, summation, demand)


RECEIVED_UNSUPPORTED = struct.pack("<HB", 0x0001, 0x86)


@pytest.mark.parametrize("body, cause, values, detail", [
    # all three: a reading with export
    (rec(0x0000, 0x25, 42) + rec(0x0001, 0x25, 7) + rec(0x0400, 0x2A, -900, True), None, (42, 7, -900), ""),
    # a meter that does not measure export: a reading without it, and nothing to report
    (rec(0x0000, 0x25, 42) + RECEIVED_UNSUPPORTED + rec(0x0400, 0x2A, 900, True), None, (42, None, 900), ""),
    # received flagged invalid: a reading without it, said so
    (rec(0x0000, 0x25, 42) + rec(0x0001, 0x25, 0xFFFFFFFFFFFF) + rec(0x0400, 0x2A, 1, True), None,
     (42, None, 1), "received invalid"),
    # only the export register usable: still a reading
    (struct.pack("<HB", 0, 0x86) + rec(0x0001, 0x25, 7) + struct.pack("<HB", 0x0400, 0x86), None,
     (None, 7, None), "summation status 0x86, demand status 0x86"),
    # nothing usable, export unsupported: lost as zcl-status, not a reading
    (struct.pack("<HB", 0, 0x86) + RECEIVED_UNSUPPORTED + struct.pack("<HB", 0x0400, 0x86), "zcl-status",
     (None, None, None), "summation status 0x86, demand status 0x86"),
    # only the export register answered: the others missing from the reply
    (rec(0x0001, 0x25, 7), None, (None, 7, None), "summation missing, demand missing"),
])
def test_received_register(body, cause, values, detail):
    hw, radio, meter = rig()
    hw.poll_faults = [lambda seq: bytes((0x18, seq, 0x01)) + body]
    out = poller.poll_once(radio, meter, TIMEOUT)
    assert (out.cause, (out.summation, out.received, out.demand), out.detail) == (cause, values, detail)


def test_unsupported_received_is_not_a_lost_query():
    hw, radio, meter = rig(Node(endpoint=9, unsupported={0x0001}))
    c = poller.Counters()
    for _ in range(3):
        out = poller.poll_once(radio, meter, TIMEOUT)
        c.count(out)
        assert out.cause is None and out.received is None and out.detail == ""
        assert out.summation is not None and out.demand is not None
    assert (c.queries_total, c.queries_lost) == (3, 0)
    # and the meter got one read per slot, holding all three attributes
    reads = [f["frame"] for f in hw.frame_log if f["class"] == "zcl-read"]
    assert len(reads) == 3 and all(r.endswith(zcl.read_attributes(0, zcl.POLL_READ)[3:]) for r in reads)


def test_a_late_reply_to_an_earlier_query_is_not_taken_for_this_one():
    hw, radio, meter = rig(reply_delay=0.05)
    stale_seq = []

    def stale_then_nothing(seq):
        stale_seq.append(seq)
        return bytes((0x18, (seq - 1) & 0xFF, 0x01)) + rec(0x0000, 0x25, 1) + rec(0x0400, 0x2A, 1, True)
    hw.poll_faults = [stale_then_nothing]
    assert poller.poll_once(radio, meter, TIMEOUT).cause == "timeout"
    # a damaged stale reply (unparsable, other seq) is skipped too, not blamed on this query
    hw.poll_faults = [lambda seq: bytes((0x18, (seq - 1) & 0xFF, 0x01, 0x00))]
    assert poller.poll_once(radio, meter, TIMEOUT).cause == "timeout"


def test_replies_from_another_address_or_endpoint_are_not_the_meters():
    hw, radio, meter = rig(Node(endpoint=9))
    wrong_ep = Meter(METER_IEEE, 0x0000, 8)      # the fake answers 0x24 for an unknown endpoint
    radio.aim_at(wrong_ep)      # the guard sends reads only where discovery aimed it
    assert poller.poll_once(radio, wrong_ep, TIMEOUT).cause == "tx-failed"
    radio.aim_at(meter)

    def from_elsewhere(seq):
        frame = hw._rx(0x1111, 0x2222, 9, 0x5E, 0x0702, 0x0109, bytes((0x18, seq, 0x01)) +
                       rec(0x0000, 0x25, 5) + rec(0x0400, 0x2A, 5, True))
        hw.emit(frame)
        return None
    hw.poll_faults = ["drop"]
    hw.at(hw.clock.now + 0.01, lambda: from_elsewhere(radio._zcl_seq))
    assert poller.poll_once(radio, meter, TIMEOUT).cause == "timeout"


def test_unencrypted_replies_are_ignored_and_counted_unless_allowed():
    hw, radio, meter = rig(aps=False)
    assert poller.poll_once(radio, meter, TIMEOUT).cause == "timeout"
    assert radio.distrusted == 1
    hw, radio, meter = rig(aps=False, require_aps=False)
    assert poller.poll_once(radio, meter, TIMEOUT).cause is None


def test_modem_status_reset_while_waiting_is_raised():
    hw, radio, meter = rig()
    hw.poll_faults = ["drop"]
    hw.at(hw.clock.now + 1.0, lambda: hw.reset())
    with pytest.raises(RadioReset) as exc:
        poller.poll_once(radio, meter, TIMEOUT)
    assert exc.value.status == xbee_frames.MODEM_HARDWARE_RESET


def test_counters():
    c = poller.Counters()
    for cause in [None, "timeout", "timeout", None, "tx-failed", "malformed", "zcl-status"]:
        c.count(poller.PollOutcome(cause))
    assert (c.queries_total, c.queries_lost) == (7, 5)
    assert c.lost_by_cause == {"timeout": 2, "tx-failed": 1, "zcl-status": 1, "malformed": 1}
    assert c.consecutive_lost == 3
