"""The two clocks the HAN process reads, behind one object so tests can drive time.

Schedules and timeouts use the monotonic clock (it never jumps when NTP steps the wall clock);
time tags on meter values use the wall clock, because that is what a reading's consumer compares.
"""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def wall(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()
