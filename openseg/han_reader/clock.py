"""The two clocks the HAN process reads, behind one object so tests can drive time.

Schedules and timeouts use the monotonic clock (it never jumps when NTP steps the wall clock). Time
tags on meter values are wall-clock times, because that is what a reading's consumer compares, but they
are computed from the monotonic clock on one base that follows the wall clock's steps (time_base.py).
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
