"""The schedules: the poll's slots (`Schedule`) and retry delays (`Backoff`). Pure arithmetic, no clock.

Slot k is due at start + k * interval. Due times are computed from the start every time, never by
adding the interval to the previous due time, so ten thousand slots later the schedule has not drifted
by a rounding error. Every slot ends as exactly one reading or one gap; a slot is never skipped
silently:

  * a slot the loop reaches while it is not polling (joining, discovering, radio down) becomes a gap
    with cause "not-polling" (`passed`);
  * a slot the loop reaches more than half an interval after it was due (the process was stalled or
    suspended) becomes a gap with cause "late" (`claim`). Querying it anyway would put two queries
    closer together than the utility allows and tag a value far from its slot.

Due times are monotonic; the service tags them on its one wall-clock base (time_base.py), the same base
as the readings' tags, so a gap and a reading can never disagree about where a slot lies in time.

A retry (the port reopened, discovery tried again) waits a delay from `Backoff`: base, doubling, capped.
"""
from __future__ import annotations

import math

LATE_FRACTION = 0.5


class Schedule:
    def __init__(self, start_mono: float, interval: float):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.start_mono = start_mono
        self.interval = interval
        self.next = 0               # the first slot not yet turned into a reading or a gap

    def due_mono(self, slot: int) -> float:
        return self.start_mono + slot * self.interval

    def last_due(self, now_mono: float) -> int:
        """The highest slot due at or before now (-1 before the start)."""
        k = math.floor((now_mono - self.start_mono) / self.interval)
        # The division can land one off either way right at a due time; settle it on due_mono itself.
        while self.due_mono(k + 1) <= now_mono:
            k += 1
        while k >= 0 and self.due_mono(k) > now_mono:
            k -= 1
        return max(k, -1)

    def passed(self, now_mono: float) -> list[int]:
        """Take every slot due by now; the caller reports them as gaps ("not-polling")."""
        last = self.last_due(now_mono)
        slots = list(range(self.next, last + 1))
        self.next = max(self.next, last + 1)
        return slots

    def claim(self, now_mono: float) -> tuple[list[int], int | None]:
        """Take the slots due by now: (missed slots, the slot to query now or None).

        The newest due slot is queried if the loop is within half an interval of its due time; every
        older one, and the newest too when it is later than that, is missed ("late").
        """
        slots = self.passed(now_mono)
        if not slots:
            return [], None
        newest = slots[-1]
        if now_mono - self.due_mono(newest) < LATE_FRACTION * self.interval:
            return slots[:-1], newest
        return slots, None


class Backoff:
    """Retry delays: base, doubling, capped. Pure, so tests can read the sequence."""

    def __init__(self, base: float, cap: float):
        self.base, self.cap = base, cap
        self._next = base

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.base

    def saturate(self) -> None:
        """Go straight to the cap (what cannot change quickly should not be retried quickly)."""
        self._next = self.cap
