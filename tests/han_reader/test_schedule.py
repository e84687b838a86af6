"""The slot schedule: no drift, every slot accounted for, late and not-polling slots become gaps; the retry
backoff."""
import pytest
from hypothesis import given, strategies as st

from openseg.han_reader.schedule import Backoff, Schedule


@pytest.mark.parametrize("interval", [7.0, 0.1, 0.3, 1 / 3])
def test_no_drift_over_ten_thousand_slots(interval):
    start = 98765.4321
    s = Schedule(start, interval)
    for k in range(10_000):
        due = s.due_mono(k)
        assert due == start + k * interval                # computed from the start, never accumulated
        missed, slot = s.claim(due)                       # a loop that wakes exactly on time
        assert (missed, slot) == ([], k)
        assert s.claim(due + interval * 0.4) == ([], None)   # nothing more until the next slot
    assert abs(s.due_mono(10_000) - (start + 10_000 * interval)) < 1e-9


def test_late_loop_turns_whole_missed_slots_into_gaps():
    s = Schedule(100.0, 7.0)
    assert s.claim(100.0) == ([], 0)
    # the process was stalled from t=101 to t=131.4: slots 1, 2, 3 (due 107, 114, 121) went by, and
    # slot 4 (due 128) is 3.4 s old, which is still within half an interval
    missed, slot = s.claim(131.4)
    assert missed == [1, 2, 3] and slot == 4
    assert [s.due_mono(k) for k in missed] == [107.0, 114.0, 121.0]


def test_a_slot_more_than_half_an_interval_old_is_late_too():
    s = Schedule(0.0, 10.0)
    s.claim(0.0)
    assert s.claim(15.0) == ([1], None)     # slot 1 was due at 10: 5 s late is not "on time"
    assert s.next == 2
    assert s.claim(20.1) == ([], 2)


def test_slots_passing_while_not_polling_are_taken_once():
    s = Schedule(0.0, 2.0)
    assert s.passed(-1.0) == []
    assert s.passed(0.0) == [0]
    assert s.passed(5.9) == [1, 2]
    assert s.passed(5.9) == []
    assert s.claim(6.0) == ([], 3)


@given(st.floats(0.05, 100.0), st.lists(st.floats(0.0, 30.0), min_size=1, max_size=60))
def test_every_slot_is_claimed_exactly_once(interval, steps):
    s = Schedule(1000.0, interval)
    now, seen = 1000.0, []
    for step in steps:
        now += step * interval
        missed, slot = s.claim(now)
        seen += missed + ([slot] if slot is not None else [])
        if slot is not None:
            assert now - s.due_mono(slot) < interval / 2
    assert seen == list(range(s.last_due(now) + 1))


def test_backoff_doubles_to_its_cap_and_resets():
    b = Backoff(1.0, 60.0)
    assert [b.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    assert b.next() == 1
