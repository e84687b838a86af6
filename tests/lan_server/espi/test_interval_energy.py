"""15-minute interval energy from register samples (openseg.lan_server.espi.interval_energy): pure, no database."""
import calendar
from fractions import Fraction
from typing import Iterable, Iterator

import pytest
from hypothesis import given, settings, strategies as st

from openseg.lan_server.espi import interval_energy as ie
from openseg.lan_server.espi.interval_energy import INTERVAL_S, Interval, RegisterSample

DAY0 = calendar.timegm((2024, 5, 1, 0, 0, 0))     # a UTC midnight, on the 15-minute grid


def polled(start: float, end: float, wh_at, step: float = 7.0, offset: float = -3.6, skip=(), slot0=0):
    """Register samples every `step` s from start + offset until end (slot k at start + offset +
    k * step, so the first one comes just before `start`); slots in `skip` are missed (the HAN sent a
    gap), so the slot numbering keeps counting through them."""
    out, slot, t = [], slot0, start + offset
    while t < end:
        if slot not in skip:
            t_ms = round(t * 1000)
            out.append(RegisterSample(t_ms, wh_at(Fraction(t_ms, 1000)), slot, int(step * 1000)))
        slot += 1
        t += step
    return out


def linear(watts):
    return lambda t: Fraction(10_000_000) + Fraction(watts) * (t - DAY0) / 3600


def test_constant_power_gives_exact_quarter_hours():
    samples = polled(DAY0, DAY0 + 3610, linear(3600))
    got = list(ie.intervals(samples))
    # The quarter from 01:00 has no sample after its end yet: four complete intervals.
    assert [iv.start for iv in got] == [DAY0, DAY0 + 900, DAY0 + 1800, DAY0 + 2700]
    assert all(iv.wh == 900 and not iv.estimated for iv in got)


def test_the_interval_in_progress_never_appears():
    samples = polled(DAY0, DAY0 + 1799, linear(1000))
    assert [iv.start for iv in ie.intervals(samples)] == [DAY0]        # not the one ending at 00:30
    assert samples[-1].t_ms < (DAY0 + 1800) * 1000


def test_a_sample_on_the_boundary_is_used_as_is():
    wh = linear(2000)
    samples = [RegisterSample((DAY0 + 900) * 1000, wh(DAY0 + 900), 0, 7000),
               RegisterSample((DAY0 + 1800) * 1000, wh(DAY0 + 1800), 128, 7000)]
    # Far apart (900 s > 2 x 7 s, 127 slots missed) but both on boundaries: nothing is interpolated.
    (iv,) = ie.intervals(samples)
    assert (iv.start, iv.wh, iv.estimated) == (DAY0 + 900, 500, False)


def test_a_gap_inside_an_interval_changes_nothing():
    # The register kept counting while slots were missed: the delta over the quarter is exact.
    with_gap = polled(DAY0, DAY0 + 2700, linear(1200), skip=range(150, 160))   # 00:17:26 - 00:18:29
    without = polled(DAY0, DAY0 + 2700, linear(1200))
    assert list(ie.intervals(with_gap)) == list(ie.intervals(without))
    assert not any(iv.estimated for iv in ie.intervals(with_gap))


def test_a_gap_across_a_boundary_marks_both_neighbours_estimated():
    # Slots 125-132 (00:14:31 - 00:15:20) missed: the 00:15 boundary is interpolated across them.
    samples = polled(DAY0, DAY0 + 3700, linear(1800), skip=range(125, 133))
    got = {iv.start - DAY0: iv for iv in ie.intervals(samples)}
    assert got[0].estimated and got[900].estimated
    assert not got[1800].estimated and not got[2700].estimated
    # A straight-line register: the estimate happens to be exact, and is still marked.
    assert all(iv.wh == 450 for iv in got.values())


def test_a_real_load_step_inside_a_gap_is_estimated_not_invented():
    # 0 W until 00:14:50, then 3600 W; the readings around it are missing.
    def wh(t):
        return Fraction(5000) + max(Fraction(0), t - (DAY0 + 890)) * 1
    samples = polled(DAY0, DAY0 + 2700, wh, skip=range(120, 135))
    got = {iv.start - DAY0: iv for iv in ie.intervals(samples)}
    truth_0 = wh(DAY0 + 900) - wh(DAY0)
    assert got[0].estimated and got[900].estimated
    assert got[0].wh != truth_0                       # interpolation cannot know where the step was
    assert got[0].wh + got[900].wh == wh(DAY0 + 1800) - wh(DAY0)   # but the sum over both is exact


def test_gaps_longer_than_the_estimate_limit_leave_intervals_out():
    slots_per_limit = int(ie.MAX_ESTIMATE_S / 7) + 5
    samples = polled(DAY0, DAY0 + ie.MAX_ESTIMATE_S + 3 * 3600, linear(500),
                     skip=range(300, 300 + slots_per_limit))
    got = [iv.start - DAY0 for iv in ie.intervals(samples)]
    before, after = -3.6 + 299 * 7, -3.6 + (300 + slots_per_limit) * 7     # around the gap
    lost_from = before // INTERVAL_S * INTERVAL_S      # its end boundary falls in the gap
    lost_to = after // INTERVAL_S * INTERVAL_S         # its start boundary falls in the gap
    assert all(not lost_from <= s <= lost_to for s in got)
    assert lost_from - INTERVAL_S in got and lost_to + INTERVAL_S in got
    # Just under the limit: estimated instead.
    short = polled(DAY0, DAY0 + ie.MAX_ESTIMATE_S + 3 * 3600, linear(500),
                   skip=range(300, 300 + slots_per_limit - 10))
    est = [iv for iv in ie.intervals(short) if iv.estimated]
    assert est and all(iv.wh == Fraction(500 * 900, 3600) for iv in ie.intervals(short))


def test_a_register_that_goes_down_is_never_bridged():
    up = polled(DAY0, DAY0 + 1790, linear(1000))                       # until 00:29:48
    after = polled(DAY0 + 1810, DAY0 + 4000, lambda t: Fraction(3) + (t - DAY0) / 10, slot0=len(up))
    got = [iv.start - DAY0 for iv in ie.intervals(up + after)]
    # The 00:30 boundary lies in the bracket across the drop: 00:15 and 00:30 intervals are left out.
    assert 0 in got and 900 not in got and 1800 not in got and 2700 in got


def test_a_han_restart_is_not_a_continuous_bracket():
    first = polled(DAY0, DAY0 + 890, linear(720))                     # slots 0..127, until 00:14:46
    second = polled(DAY0 + 905, DAY0 + 2800, linear(720), slot0=0)   # the HAN counts from 0 again
    got = {iv.start - DAY0: iv for iv in ie.intervals(first + second)}
    assert got[0].estimated and got[900].estimated and not got[1800].estimated


def test_samples_out_of_time_order_are_refused():
    a, b = polled(DAY0, DAY0 + 20, linear(1))[:2]
    with pytest.raises(ValueError):
        list(ie.intervals([b, a]))


def test_espi_values_telescope_to_the_rounded_register_delta():
    # 0.3 Wh per count and an uneven load: boundary values are fractions of a Wh.
    def wh(t):
        return Fraction(123456789 * 3, 10) + (t - DAY0) * Fraction(1234, 3600) + (t - DAY0) ** 2 / 10**6
    run = list(ie.intervals(polled(DAY0, DAY0 + 6 * 3600, wh)))
    for p in (-1, 0, 1, 2):
        values = [v for _, v in ie.espi_values(run, p)]
        first, last = run[0], run[-1]
        assert sum(values) == round(last.end_wh / Fraction(10) ** p) - round(first.begin_wh / Fraction(10) ** p)
        assert all(abs(v * Fraction(10) ** p - iv.wh) <= Fraction(10) ** p for iv, v in zip(run, values))


REGISTER_STEPS = st.lists(st.tuples(st.floats(0.5, 2000.0), st.integers(0, 5000), st.integers(1, 3),
                                    st.booleans()), min_size=0, max_size=120)


def build(steps):
    out, t, wh, slot = [], DAY0 * 1000 - 50_000, Fraction(10**6), 0
    for dt_s, dwh, dslot, reset in steps:
        t += int(dt_s * 1000)
        wh = Fraction(dwh, 7) if reset and dwh % 11 == 0 else wh + Fraction(dwh, 7)
        slot += dslot
        out.append(RegisterSample(t, wh, slot, 7000))
    return out


def thin(samples: Iterable[RegisterSample]) -> Iterator[RegisterSample]:
    """The first and the last sample of each 15-minute bucket (time order kept): all `intervals`
    needs, which is what the history store's SQL reads (test_history_store checks its intervals)."""
    bucket = None
    first = last = None
    for s in samples:
        k = s.t_ms // ie.INTERVAL_MS
        if k != bucket:
            if first is not None:
                yield first
                if last is not first:
                    yield last
            bucket, first, last = k, s, s
        else:
            last = s
    if first is not None:
        yield first
        if last is not first:
            yield last



@settings(max_examples=300, deadline=None)
@given(REGISTER_STEPS)
def test_thinning_to_first_and_last_per_quarter_changes_nothing(steps):
    samples = build(steps)
    thinned = list(thin(samples))
    assert len(thinned) <= 2 * len({s.t_ms // ie.INTERVAL_MS for s in samples})
    assert list(ie.intervals(thinned)) == list(ie.intervals(samples))


@settings(max_examples=300, deadline=None)
@given(REGISTER_STEPS)
def test_intervals_are_complete_ordered_and_never_negative(steps):
    samples = build(steps)
    got = list(ie.intervals(samples))
    starts = [iv.start for iv in got]
    assert starts == sorted(set(starts)) and all(s % INTERVAL_S == 0 for s in starts)
    for iv in got:
        assert iv.wh >= 0
        # Complete: a sample at or after its end exists, and one at or before its start.
        assert samples[-1].t_ms >= (iv.start + INTERVAL_S) * 1000 and samples[0].t_ms <= iv.start * 1000
    # Consecutive intervals share their boundary value, so sums telescope.
    for a, b in zip(got, got[1:]):
        if b.start == a.start + INTERVAL_S:
            assert a.end_wh == b.begin_wh


# -- local days ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("zone, date, hours", [
    ("UTC", (2024, 3, 31), 24),
    ("Europe/Paris", (2024, 3, 31), 23),            # spring forward
    ("Europe/Paris", (2024, 10, 27), 25),           # fall back
    ("America/New_York", (2024, 3, 10), 23),
    ("Asia/Kathmandu", (2024, 5, 1), 24),           # +05:45: still on the quarter-hour grid
    ("America/Havana", (2024, 3, 10), 23),          # DST starts at midnight: the day begins at 01:00
])
def test_day_blocks_follow_the_local_calendar(zone, date, hours):
    import datetime as dt
    from zoneinfo import ZoneInfo
    tz = ZoneInfo(zone)
    noon = int(dt.datetime(*date, 12, tzinfo=tz).timestamp())
    start = ie.day_start(noon, zone)
    end = ie.next_day_start(start, zone)
    assert (end - start) == hours * 3600
    assert dt.datetime.fromtimestamp(start, tz).date() == dt.date(*date)
    assert dt.datetime.fromtimestamp(start - 1, tz).date() < dt.date(*date)
    assert ie.is_day_start(start, zone) and not ie.is_day_start(start + INTERVAL_S, zone)
    run = [Interval(t, Fraction(0), Fraction(1), False)
           for t in range(start - 2 * INTERVAL_S, end + 2 * INTERVAL_S, INTERVAL_S)]
    blocks = list(ie.day_blocks(run, zone))
    assert [len(b) for _, b in blocks] == [2, hours * 4, 2]
    assert blocks[1][0] == start and blocks[2][0] == end
