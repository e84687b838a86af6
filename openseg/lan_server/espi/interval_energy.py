"""15-minute interval energy from the meter's summation register. Pure: register samples in, intervals
out; no clock, no I/O, so every rule below is unit-tested without a database.

The register counts every Wh delivered, so the energy of an interval is the register's value at its
end minus its value at its start. A reading missed *inside* an interval changes nothing: the register
kept counting. What is not known exactly is the register's value *at* a 15-minute boundary, because
polls do not fall on boundaries; it is interpolated linearly between the two register samples around
the boundary (its bracket: the last sample before the boundary and the first one at or after it):

- bracket of consecutive poll slots (the HAN's slot numbers k and k + 1, so no reading or gap in
  between, and at most two poll intervals apart): the boundary value is *measured*. Its error is at
  most the energy of the one poll slot it splits, the gateway's resolution in time.
- bracket across missed slots (a gap, the HAN or the LAN process down) whose register did not go
  down and which spans at most MAX_ESTIMATE_S: the boundary value is *estimated*, and each interval
  that starts or ends there carries ReadingQuality ESTIMATED (QualityOfReading 9, "estimated using
  linear interpolation"). Nothing is invented silently.
- bracket across a register change no service could draw (`plausible_rise`: the register went down,
  or up by more than the service's power over the bracket, counted as at least one 15-minute interval
  so a meter that updates its register lazily is not mistaken for a new one: a meter replaced or
  reset, or one bad value such as a stray 0), across a wall-clock step that the HAN's slot numbers
  give away (`clock_consistent`), or longer than MAX_ESTIMATE_S: no value, and the intervals on both
  sides of that boundary are left out rather than guessed. The series restarts at the next sample.
- an interval exists only once a sample at or after its end has arrived: the interval in progress
  and intervals before the first sample never appear. An interval whose end value is below its start
  value (a reset inside it) is left out.

Sums: `espi_values` rounds each boundary value once (half-even, at the series' powerOfTenMultiplier)
and makes each interval the difference of two rounded boundaries. Any run of consecutive intervals
therefore sums exactly to the rounded register delta between its first start and its last end.

Thinning: the result depends only on each boundary's bracket and on whether the register stayed
plausible between two boundaries, so the input may be reduced to the first and the last sample of
every 15-minute bucket without changing a single interval (tests/lan_server/espi/
test_interval_energy.py proves it with its `thin`); the one exception is a lone bad
value in the middle of a bucket, which thinning drops, so that interval is counted (rightly: the
register around it is consistent). The
history store does that reduction in SQL, and a 35-day feed reads ~7 000 rows instead of ~430 000.

Local days: blocks hold the intervals that start on one local calendar day of the configured zone
(96 intervals, 92 or 100 on a DST change day). The UTC offset of every current IANA zone is a whole
number of quarter hours, so the 15-minute grid is the same in UTC and in local time.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Iterator, Protocol, Sequence, TypeVar
from zoneinfo import ZoneInfo

from openseg.shared_schema.config import DEFAULT_SERVICE_W

from .scaling import INT48_MAX, INT48_MIN, to_int

INTERVAL_S = 900
INTERVAL_MS = INTERVAL_S * 1000
# QualityOfReading (usage.xsd): 9 = "estimated using linear interpolation".
ESTIMATED = 9
# Beyond this, a straight line between two register samples says too little about the quarter
# hours in between; the intervals are left out (the register delta across them stays in the feed
# as the summation MeterReading).
MAX_ESTIMATE_S = 6 * 3600
# Two consecutive slots are at most (interval + reply timeout) apart, and the timeout is shorter
# than the interval; before the HAN has reported its interval, the production one is assumed.
DEFAULT_POLL_S = 7.0


@dataclass(frozen=True, slots=True)
class RegisterSample:
    t_ms: int                   # the reading's time tag, ms since the epoch (UTC)
    wh: Fraction                # the summation register, exactly, in Wh
    slot: int                   # the HAN's poll slot number (counts from 0 in each HAN run)
    interval_ms: int | None     # the poll interval in force, if known


@dataclass(frozen=True, slots=True)
class Interval:
    start: int                  # epoch seconds, a multiple of INTERVAL_S (but see in_progress)
    begin_wh: Fraction          # register value at start (measured or interpolated)
    end_wh: Fraction            # register value at start + duration_s
    estimated: bool
    # When the interval became known: the time tag of the sample that completed it (ms).
    available_ms: int = field(default=0, compare=False)
    duration_s: int = INTERVAL_S

    @property
    def wh(self) -> Fraction:
        return self.end_wh - self.begin_wh


def continuous(prev: RegisterSample, nxt: RegisterSample) -> bool:
    """True when `nxt` is the HAN's very next slot after `prev` (nothing missed in between)."""
    interval_ms = nxt.interval_ms or prev.interval_ms or int(DEFAULT_POLL_S * 1000)
    return nxt.slot == prev.slot + 1 and 0 < nxt.t_ms - prev.t_ms <= 2 * interval_ms


def plausible_rise(prev_wh: Fraction | float, prev_ms: int, nxt_wh: Fraction | float, nxt_ms: int,
                   max_w: float) -> bool:
    """Could an energy register (delivered or received) have gone from prev to nxt? Never down, and up
    by at most `max_w` over the time between them, counted as at least one interval. The one rule for
    every register series, so the page, the status and the feed agree on what a meter change is. A
    bound, not a value: float arithmetic is precise enough, and the live check per reading uses it."""
    if nxt_wh < prev_wh:
        return False
    return nxt_wh - prev_wh <= max_w * max(nxt_ms - prev_ms, INTERVAL_MS) / 3_600_000


def clock_consistent(prev: RegisterSample, nxt: RegisterSample) -> bool:
    """Within one HAN run, slot k is due k intervals after slot 0 on the monotonic clock, so two
    samples' time tags must be as far apart as their slots, within one interval (reply times vary by
    less than the timeout). Farther off, the wall clock stepped in between and the tags cannot be
    compared. Slots that do not increase belong to another run: nothing to compare."""
    if nxt.slot <= prev.slot:
        return True
    interval_ms = nxt.interval_ms or prev.interval_ms or int(DEFAULT_POLL_S * 1000)
    return abs(nxt.t_ms - prev.t_ms - (nxt.slot - prev.slot) * interval_ms) <= interval_ms


def _bracket_kind(prev: RegisterSample, nxt: RegisterSample, max_w: float) -> str | None:
    """'measured', 'estimated', or None when no boundary inside this bracket can be given a value."""
    if not plausible_rise(prev.wh, prev.t_ms, nxt.wh, nxt.t_ms, max_w) or not clock_consistent(prev, nxt):
        return None
    if continuous(prev, nxt):
        return "measured"
    if nxt.t_ms - prev.t_ms <= MAX_ESTIMATE_S * 1000:
        return "estimated"
    return None


def intervals(samples: Iterable[RegisterSample], max_w: float = DEFAULT_SERVICE_W) -> Iterator[Interval]:
    """Every complete interval the samples (in time order) determine, in time order; `max_w` is the
    most power the service can draw (the plausibility bound)."""
    prev: RegisterSample | None = None
    # The most recent boundary reached: (ms, value or None, estimated).
    last: tuple[int, Fraction | None, bool] | None = None
    broken = False      # a bracket since the last boundary had no value: the interval ending next is out
    for s in samples:
        if prev is None:
            if s.t_ms % INTERVAL_MS == 0:
                last = (s.t_ms, s.wh, False)
            prev = s
            continue
        if s.t_ms < prev.t_ms:
            raise ValueError("register samples must be in time order")
        kind = _bracket_kind(prev, s, max_w)
        broken = broken or kind is None
        # Boundaries b with prev.t < b <= s.t; one exactly at s.t is measured by s itself.
        b = (prev.t_ms // INTERVAL_MS + 1) * INTERVAL_MS
        span = s.t_ms - prev.t_ms
        while b <= s.t_ms:
            if b == s.t_ms:
                here = (b, s.wh, False)
            elif kind is None:
                here = (b, None, False)
            else:
                here = (b, prev.wh + (s.wh - prev.wh) * Fraction(b - prev.t_ms, span),
                        kind == "estimated")
            if last is not None and last[0] == b - INTERVAL_MS and last[1] is not None \
                    and here[1] is not None and here[1] >= last[1] and not broken:
                yield Interval(last[0] // 1000, last[1], here[1], last[2] or here[2], s.t_ms)
            last = here
            broken = False
            b += INTERVAL_MS
        prev = s


def in_progress(samples: Sequence[RegisterSample], max_w: float = DEFAULT_SERVICE_W) -> Interval | None:
    """The quarter hour in progress, up to the newest sample: from its boundary (valued as `intervals`
    values boundaries, ESTIMATED when bridged), or from the first sample after that boundary when none
    can be valued (the first run of an installation, a long gap), or from the sample after a register
    decrease inside it. Its duration is the time covered so far (0 on the boundary itself). None
    without samples. With the complete intervals before it, it covers the register up to the newest
    sample, so the energy shown always adds up to what the meter counted."""
    if not samples:
        return None
    last = samples[-1]
    b = last.t_ms // INTERVAL_MS * INTERVAL_MS
    i = next(k for k, s in enumerate(samples) if s.t_ms >= b)
    first = samples[i]
    begin_ms, begin_wh, estimated = first.t_ms, first.wh, False
    if first.t_ms != b and i > 0:
        prev = samples[i - 1]
        kind = _bracket_kind(prev, first, max_w)
        if kind is not None:
            begin_ms, estimated = b, kind == "estimated"
            begin_wh = prev.wh + (first.wh - prev.wh) * Fraction(b - prev.t_ms, first.t_ms - prev.t_ms)
    for prev, s in zip(samples[i:], samples[i + 1:]):
        # A reset, a meter change or a bad value inside the quarter: count from after it.
        if not plausible_rise(prev.wh, prev.t_ms, s.wh, s.t_ms, max_w) or not clock_consistent(prev, s):
            begin_ms, begin_wh, estimated = s.t_ms, s.wh, False
    start = begin_ms // 1000
    return Interval(start, begin_wh, last.wh, estimated, last.t_ms, last.t_ms // 1000 - start)


def espi_values(run: Iterable[Interval], p: int) -> Iterator[tuple[Interval, int]]:
    """Each interval with its ESPI value in units of 10**p Wh: the difference of its two boundary
    values, each rounded once, so consecutive values sum to the rounded register delta. Clamped to
    Int48, which a 15-minute delta of a real register never approaches."""
    for iv in run:
        value = to_int(iv.end_wh, p) - to_int(iv.begin_wh, p)
        yield iv, max(INT48_MIN, min(INT48_MAX, value))


# -- local days ---------------------------------------------------------------------------------------
def day_start(t: float, zone: str) -> int:
    """Epoch second at which the local calendar day containing `t` begins."""
    tz = ZoneInfo(zone)
    day = dt.datetime.fromtimestamp(t, tz).date()
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp())
    # Where a DST change skips midnight itself, the day begins at the first instant it exists;
    # every such change falls on a quarter hour.
    while dt.datetime.fromtimestamp(start, tz).date() < day:
        start += INTERVAL_S
    while start > t or dt.datetime.fromtimestamp(start - 1, tz).date() == day:
        start -= INTERVAL_S
    return start


def next_day_start(start: int, zone: str) -> int:
    """The start of the local day after the one starting at `start` (a local day lasts 23 to 25
    hours, so 26 hours later is always within the next one)."""
    return day_start(start + 26 * 3600, zone)


class _HasStart(Protocol):
    @property
    def start(self) -> int: ...


_Starts = TypeVar("_Starts", bound=_HasStart)


def is_day_start(t: int, zone: str) -> bool:
    return day_start(t, zone) == t


def day_blocks(run: Iterable[_Starts], zone: str) -> Iterator[tuple[int, list[_Starts]]]:
    """(local day start, the items starting that day) in time order, for anything with a `start` in
    epoch s (intervals, ESPI points); empty days are skipped."""
    current: list[_Starts] = []
    start = end = None
    for iv in run:
        if end is None or not start <= iv.start < end:
            if current:
                yield start, current
            start = day_start(iv.start, zone)
            end = next_day_start(start, zone)
            current = []
        current.append(iv)
    if current:
        yield start, current
