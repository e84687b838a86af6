"""The HAN's one clock base for time tags: monotonic time plus an offset, re-based when the wall clock steps.

Every reading's and gap's time tag is `mono + offset`, where offset = wall - monotonic as last measured.
NTP slews the wall clock by at most 0.5 ms per second, so between two observations the offset moves by
far less than STEP_BOUND_S; a larger move is a step (NTP's first sync on a board without a real-time
clock, a person setting the date, a resume from suspend). Then:

  * tags from then on use the new offset (the newest wall clock is taken to be the right one);
  * the tags already sent on the replaced base, first..last, are all off by exactly the step, which the
    monotonic clock measures: `observe` returns a Retag so the LAN side can move them, and the history
    keeps one time line instead of two series over the same hour.

A wall clock before PLAUSIBLE_FLOOR (a board booted at 1970, or at its image's build date) is not a
time: while it is implausible nothing is tagged (the service holds its readings and gaps, with their
monotonic times, and tags them once the clock is plausible). Pure: no clock of its own.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

STEP_BOUND_S = 1.0
# No reading of this software can be older than its own release year.
PLAUSIBLE_FLOOR = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc).timestamp()


@dataclass(frozen=True)
class Retag:
    """Every tag sent from `first` to `last` (inclusive, old base) belongs `shift_s` later."""
    shift_s: float
    first: float
    last: float


class TimeBase:
    def __init__(self, mono: float, wall: float):
        self.offset = wall - mono
        self.plausible = wall >= PLAUSIBLE_FLOOR
        self.steps = 0
        self.last_step_s: float | None = None
        self._sent_offset: float | None = None     # the base of the tags sent since the last retag
        self._first: float | None = None
        self._last: float | None = None

    def observe(self, mono: float, wall: float) -> tuple[float | None, Retag | None]:
        """(the step seen now or None, the retag it calls for or None)."""
        offset = wall - mono
        self.plausible = wall >= PLAUSIBLE_FLOOR
        if abs(offset - self.offset) <= STEP_BOUND_S:
            return None, None
        step = offset - self.offset
        self.offset = offset
        self.steps += 1
        self.last_step_s = step
        retag = None
        # Moving tags onto an implausible base would move them to nowhere: wait for a plausible one.
        if self.plausible and self._first is not None:
            retag = Retag(offset - self._sent_offset, self._first, self._last)
            self._first = self._last = self._sent_offset = None
        return step, retag

    def tag(self, mono: float) -> float:
        """The wall-clock tag of monotonic time `mono`; only while plausible (the caller holds otherwise)."""
        t = mono + self.offset
        if self._first is None:
            self._first, self._sent_offset = t, self.offset
        # A held entry tagged late can be older than one tagged before it: keep the true extremes.
        self._first, self._last = min(self._first, t), max(self._last if self._last is not None else t, t)
        return t
