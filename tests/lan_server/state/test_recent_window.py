"""Readings' recent window: a ring of packed columns that gives back exactly what went in, and takes
all its memory when it is made (recent_window.py says why)."""
import math
import tracemalloc

import pytest

from openseg.lan_server.espi.scaling import Scaling
from openseg.lan_server.state.entries import CHANNEL_LOST, Gap, Reading
from openseg.lan_server.state.readings import Readings
from openseg.lan_server.state.recent_window import RecentWindow
from openseg.shared_schema.messages import INT24_MIN, UINT48_MAX
from tests.support.channel_messages import Clock, gap, reading

SCALING = Scaling(multiplier=1, divisor=1000, unit=0, summation_formatting=0x33, demand_formatting=0x24)


def _reading(i: int, **kw) -> Reading:
    fields = dict(seq=i, slot=i, due=1.7e9 + i - 0.25, time=1.7e9 + i + 0.123456, rtt_s=0.031, summation=1000 + i,
                  demand=-5 * i, scaling=SCALING, interval_s=1.0, received=None)
    return Reading(**{**fields, **kw})


def test_what_goes_in_comes_out_exactly_none_and_extremes_included():
    entries = [
        _reading(0),
        _reading(1, summation=None, demand=None, received=None, interval_s=None),
        _reading(2, summation=UINT48_MAX, demand=INT24_MIN + 1, received=UINT48_MAX, rtt_s=3600.0),
        _reading(3, summation=0, demand=0, received=0, interval_s=0.001),
        Gap(seq=4, slot=4, due=1.7e9 + 4.5, cause="timeout"),
        Gap(seq=5, slot=5, due=1.7e9 + 5.5, cause=CHANNEL_LOST),
        _reading(6, scaling=Scaling(3, 10000, 0, 0x33, 0x24)),
    ]
    w = RecentWindow(10)
    for e in entries:
        w.append(e)
    assert w.entries() == tuple(entries)
    assert [type(e) for e in w.entries()] == [Reading] * 4 + [Gap] * 2 + [Reading]
    assert w.first_time() == entries[0].time and w.last_time() == entries[-1].time
    assert RecentWindow(3).entries() == () and RecentWindow(3).first_time() is None


def test_a_full_ring_keeps_the_newest_and_popleft_and_replace_keep_order():
    w = RecentWindow(5)
    for i in range(12):
        w.append(_reading(i))
    assert [e.seq for e in w.entries()] == [7, 8, 9, 10, 11] and len(w) == 5
    w.popleft()
    w.popleft()
    assert [e.seq for e in w.entries()] == [9, 10, 11]
    w.append(_reading(12))
    assert [e.seq for e in w.entries()] == [9, 10, 11, 12]
    w.replace(_reading(i) for i in range(20, 28))
    assert [e.seq for e in w.entries()] == [23, 24, 25, 26, 27]
    w.replace([])
    assert w.entries() == () and len(w) == 0
    with pytest.raises(IndexError):
        w.popleft()


def test_a_copy_does_not_follow_the_window():
    w = RecentWindow(4)
    for i in range(3):
        w.append(_reading(i))
    c = w.copy()
    w.append(_reading(3))
    w.append(_reading(4))
    w.popleft()
    assert [e.seq for e in c.entries()] == [0, 1, 2]
    assert [e.seq for e in w.entries()] == [2, 3, 4]


def test_a_gap_keeps_one_shared_cause_string_not_the_message_copy():
    w = RecentWindow(2)
    cause = "".join(["time", "out"])               # a fresh object, as msgpack decodes one
    w.append(Gap(seq=1, slot=1, due=1.0, cause=cause))
    kept = w.entries()[0].cause
    assert kept == "timeout" and kept is not cause and type(kept) is str


def test_the_window_takes_its_memory_when_made_and_no_more_as_it_fills():
    """The property the window exists for: Readings at 1-s polls, filled twice over, holds no more
    Python memory than when it was made (a deque of Reading objects grew ~300 bytes a reading)."""
    clock = Clock()
    tracemalloc.start()
    try:
        r = Readings(30.0, history_s=2000.0, clock=clock)
        r.apply(reading(0, 0, clock.advance(1.0)))
        made = tracemalloc.get_traced_memory()[0]
        for i in range(1, 4001):
            r.apply(reading(i, i, clock.advance(1.0), summation=10_000_000 + i, demand=1000 + i % 7))
            if i % 500 == 0:
                r.apply(gap(i + 10_000, i + 10_000, clock() + 0.5, cause="timeout"))
        grown = tracemalloc.get_traced_memory()[0] - made
    finally:
        tracemalloc.stop()
    assert len(r) == 2000
    assert grown < 4000, f"the window grew by {grown} bytes while filling"


def test_any_mix_of_appends_inserts_and_poplefts_matches_a_sorted_list():
    """Against an independent reference: a plain list kept in time order with bisect (equal times: the
    newcomer after), trimmed to capacity from the old end, over random operations that wrap the ring."""
    import bisect
    import random
    rng = random.Random(16)
    for capacity in (1, 2, 7, 50):
        w, ref = RecentWindow(capacity), []
        for n in range(600):
            op = rng.random()
            if op < 0.15 and ref:
                w.popleft()
                del ref[0]
                continue
            t = (ref[-1].time if ref else 1.7e9) + rng.choice([-30.0, -3.0, 0.0, 0.0, 1.0, 1.0, 2.5]) \
                if op < 0.85 else rng.uniform(1.6e9, 1.8e9)
            e = (_reading(n, time=t, due=t - 0.2) if rng.random() < 0.7
                 else Gap(seq=n, slot=n, due=t, cause=rng.choice(["timeout", "late", CHANNEL_LOST])))
            if len(ref) == capacity:
                del ref[0]
            if not ref or ref[-1].time <= e.time:
                w.append(e)
                ref.append(e)
            else:
                w.insert(e)
                ref.insert(bisect.bisect_right([x.time for x in ref], e.time), e)
            assert w.entries() == tuple(ref), (capacity, n)
        assert len(w) == len(ref)


def test_readings_size_the_window_for_the_configured_poll():
    assert Readings(30.0, history_s=3 * 3600.0, poll_interval_s=7.0).max_entries == 1543
    assert Readings(30.0, history_s=3 * 3600.0).max_entries == 10800          # 1-s polls, the fastest
    with pytest.raises(ValueError):
        Readings(30.0, poll_interval_s=0.0)
