"""The channel message schema: what passes, and that every refusal names its field."""
import math

import msgpack
import pytest
from hypothesis import given, strategies as st

from openseg.shared_schema import messages

SCALING = {"multiplier": 3, "divisor": 10000, "unit": 0, "summation_formatting": 0x33,
           "demand_formatting": 0x24}
READING = {"v": 1, "seq": 7, "kind": "reading", "sent": 1.7e9, "slot": 3, "due": 1.7e9 - 0.1,
           "time": 1.7e9 - 0.05, "rtt_s": 0.04, "summation": 123456789, "demand": -1200, "scaling": SCALING}
GAP = {"v": 1, "seq": 8, "kind": "gap", "sent": 1.7e9, "slot": 4, "due": 1.7e9, "cause": "timeout"}
STATUS = {"v": 1, "seq": 9, "kind": "status", "sent": 1.7e9, "state": "polling", "detail": "ok",
          "meter": {"ieee": "00:0d:6f:00:0a:bc:de:f0", "nwk": 0, "endpoint": 9},
          "queries_total": 10, "queries_lost": 1,
          "lost_by_cause": {"timeout": 1, "tx-failed": 0, "zcl-status": 0, "malformed": 0},
          "frames_bad": 2, "guard_refused": 0, "channel_dropped": 0, "started": 1.7e9 - 100,
          "poll_interval_s": 7.0}


READING_EXPORT = {**READING, "received": 987654321}


@pytest.mark.parametrize("msg", [READING, READING_EXPORT, GAP, STATUS])
def test_round_trip(msg):
    assert messages.decode(messages.encode(msg)) == msg


@pytest.mark.parametrize("change, field", [
    ({"v": 2}, "v"), ({"seq": -1}, "seq"), ({"summation": 1 << 48}, "summation"),
    ({"demand": -0x800000}, "demand"), ({"time": math.nan}, "time"), ({"extra": 1}, "extra"),
    ({"scaling": {**SCALING, "divisor": 0}}, "scaling.divisor"), ({"slot": True}, "slot"),
    ({"kind": "write"}, "kind"), ({"received": 1 << 48}, "received"), ({"received": -1}, "received"),
    ({"received": 1.5}, "received"), ({"received": True}, "received"),
])
def test_bad_fields_are_named(change, field):
    with pytest.raises(messages.MessageError, match=f"^{field}"):
        messages.encode({**READING, **change})


def test_reading_needs_a_value():
    msg = {k: v for k, v in READING.items() if k not in ("summation", "demand")}
    with pytest.raises(messages.MessageError, match="carries no value"):
        messages.validate(msg)
    # the export register alone is a value; a reading without it (an older HAN) stays valid
    assert messages.validate({**msg, "received": 0})["received"] == 0
    assert "received" not in messages.decode(messages.encode(READING))
    # the largest register value a meter can report fits the store's signed 64-bit integers
    assert messages.validate({**READING, "received": messages.UINT48_MAX})["received"] < 1 << 63


def test_decode_bounds_sizes():
    with pytest.raises(messages.MessageError, match="exceeds"):
        messages.decode(b"\x80" * (messages.MAX_DATAGRAM + 1))
    with pytest.raises(messages.MessageError, match="not a msgpack map"):
        messages.decode(msgpack.packb({"v": 1, "detail": "x" * 300}))
    with pytest.raises(messages.MessageError):
        messages.decode(msgpack.packb([1, 2, 3]))


@pytest.mark.parametrize("data, fault", [
    (b"\xc1", messages.Fault.UNDECODABLE), (msgpack.packb([1, 2, 3]), messages.Fault.UNDECODABLE),
    (b"\x80" * (messages.MAX_DATAGRAM + 1), messages.Fault.UNDECODABLE),
    (msgpack.packb({**READING, "v": 2}), messages.Fault.VERSION),
    (msgpack.packb({**READING, "v": 2, "new_field": 1}), messages.Fault.VERSION),
    (msgpack.packb({**READING, "v": True}), messages.Fault.INVALID),      # True == 1, yet not a number
    (msgpack.packb({**READING, "seq": -1}), messages.Fault.INVALID),
    (msgpack.packb(7), messages.Fault.INVALID),
    (msgpack.packb({**READING, "kind": []}), messages.Fault.INVALID),     # unhashable kinds are refused too
    (msgpack.packb({**READING, "kind": {}}), messages.Fault.INVALID),
])
def test_a_refusal_says_which_fault_it_was(data, fault):
    with pytest.raises(messages.MessageError) as refused:
        messages.decode(data)
    assert refused.value.fault is fault


def test_the_enums_are_the_wire_strings():
    assert messages.HAN_STATES == ("joining", "discovering", "polling", "meter-unreachable",
                                   "meter-address-mismatch", "radio-down")
    assert messages.KINDS == ("reading", "gap", "status", "clock")
    assert messages.GAP_CAUSES == ("timeout", "tx-failed", "zcl-status", "malformed", "not-polling", "late")
    status = {"v": 1, "seq": 0, "kind": messages.Kind.STATUS, "sent": 1.0, "state": messages.HanState.POLLING}
    assert msgpack.unpackb(msgpack.packb(status)) == {**status, "kind": "status", "state": "polling"}


@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_raises_only_message_error(data):
    try:
        messages.decode(data)
    except messages.MessageError:
        pass
