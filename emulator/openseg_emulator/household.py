"""A seeded household load profile: piecewise-constant demand, generated lazily. Pure: no clock, no I/O.

Time `t` is seconds since the emulator powered up (t >= 0); `start_tod_s` says which local time of day
t = 0 was, so the morning and evening peaks land where a household has them. Demand is an integer
number of watts that only changes at whole seconds, which keeps the integral (W·s) an exact integer
however the meter is sampled.

The demand is the sum of:
  - a standby base load (router, chargers, standby LEDs), constant for the seed;
  - a fridge compressor cycling on and off;
  - lighting, re-chosen every 15 minutes, high when it is dark and people are up;
  - appliances (kettle, oven, washing machine...) that switch on at random, more often around the
    day's morning and evening peaks, whose times and heights vary from day to day;
  - with `solar_peak_w`, a PV array (negative demand) following the sun with passing clouds.

Everything is drawn from random.Random in a fixed order, so a seed always gives the same household.
"""
from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction

DAY_S = 86_400
MINUTE_S = 60
LIGHTING_BLOCK_S = 900


@dataclass(frozen=True)
class Appliance:
    name: str
    watts: tuple[int, int]            # drawn uniformly
    seconds: tuple[int, int]          # run time, drawn uniformly
    weight: float                     # how often, relative to the others
    tail: tuple[int, int, int] = (0, 0, 0)   # (watts, min s, max s) of a low second phase (wash, rinse)
    hours: tuple[float, float] = (0.0, 24.0)  # only started between these local hours


APPLIANCES = (
    Appliance("kettle", (1850, 2200), (100, 240), 3.0),
    Appliance("toaster", (800, 1000), (120, 200), 1.0, hours=(6.0, 10.0)),
    Appliance("microwave", (900, 1250), (60, 360), 2.0),
    Appliance("hair dryer", (1200, 1800), (180, 480), 0.7, hours=(6.0, 9.5)),
    Appliance("oven", (1800, 2600), (1200, 3300), 0.8, hours=(11.0, 21.0)),
    Appliance("washing machine", (1900, 2200), (600, 1200), 0.4, tail=(250, 1800, 3000), hours=(8.0, 21.0)),
    Appliance("dishwasher", (1700, 2000), (900, 1500), 0.4, tail=(120, 2400, 4200), hours=(12.0, 23.0)),
    Appliance("television", (80, 220), (1800, 7200), 1.5, hours=(12.0, 24.0)),
    Appliance("computer", (90, 300), (1800, 9000), 1.0, hours=(8.0, 24.0)),
    Appliance("vacuum cleaner", (700, 1100), (600, 1500), 0.3, hours=(9.0, 19.0)),
)
_WEIGHTS = tuple(a.weight for a in APPLIANCES)


@dataclass(frozen=True)
class DayShape:
    """The day's rhythm: when the morning and evening peaks come and how strong they are."""
    morning_h: float
    morning_amp: float
    evening_h: float
    evening_amp: float
    midday_amp: float

    @classmethod
    def draw(cls, seed: int, day: int) -> "DayShape":
        # Its own generator per day (string seeds hash stably), so the shape of day d does not
        # depend on how many appliance draws happened before it.
        rng = random.Random(f"openseg-household-day:{seed}:{day}")
        return cls(morning_h=rng.gauss(7.2, 0.5), morning_amp=rng.uniform(0.6, 1.0),
                   evening_h=rng.gauss(19.0, 0.7), evening_amp=rng.uniform(0.8, 1.2),
                   midday_amp=rng.uniform(0.1, 0.45))

    def activity(self, hour: float) -> float:
        """How busy the household is at a local hour: about 0.05 asleep, 1 at a peak."""
        def bump(center: float, width: float) -> float:
            return math.exp(-0.5 * ((hour - center) / width) ** 2)
        return (0.05 + self.morning_amp * bump(self.morning_h, 0.9)
                + self.midday_amp * bump(13.0, 1.5) + self.evening_amp * bump(self.evening_h, 1.8))


def _darkness(hour: float) -> float:
    if hour < 6.5 or hour >= 18.5:
        return 1.0
    if hour < 8.0:
        return (8.0 - hour) / 1.5
    if hour >= 17.0:
        return (hour - 17.0) / 1.5
    return 0.05


def _sun(hour: float) -> float:
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 14.0)) if 6.0 < hour < 20.0 else 0.0


class HouseholdProfile:
    """demand_w(t), delivered_ws(t), received_ws(t) of a seeded household; exact rationals."""

    def __init__(self, seed: int = 0, start_tod_s: float = 0.0, solar_peak_w: int = 0):
        if solar_peak_w < 0:
            raise ValueError("solar_peak_w must be >= 0")
        self.seed = seed
        self.start_tod_s = start_tod_s % DAY_S
        self.solar_peak_w = solar_peak_w
        self._rng = random.Random(seed)
        self.base_w = self._rng.randint(90, 180)
        self._fridge_w = self._rng.randint(80, 140)
        self._fridge_cursor = self._rng.randint(0, 1800)     # start of the next compressor run
        self._cloud = 1.0
        self._days: dict[int, DayShape] = {}
        # Contributions (start_s, end_s, watts) that may still cover time at or after the horizon.
        self._intervals: list[tuple[int, int, int]] = []
        # Finished segments: demand values[i] on [times[i], times[i+1]); cumulative energy at times[i].
        self._times: list[int] = []
        self._values: list[int] = []
        self._cum_pos: list[int] = []
        self._cum_neg: list[int] = []
        self._horizon = 0          # demand is final on [0, horizon)

    # ---- queries ------------------------------------------------------------------------------
    def demand_w(self, t: float | Fraction) -> int:
        i = self._segment(t)
        return self._values[i]

    def delivered_ws(self, t: float | Fraction) -> Fraction:
        """Energy drawn from the grid over [0, t], in watt-seconds, exactly."""
        i = self._segment(t)
        return self._cum_pos[i] + max(self._values[i], 0) * (Fraction(t) - self._times[i])

    def received_ws(self, t: float | Fraction) -> Fraction:
        """Energy exported to the grid over [0, t] (solar surplus), in watt-seconds, exactly."""
        i = self._segment(t)
        return self._cum_neg[i] + max(-self._values[i], 0) * (Fraction(t) - self._times[i])

    def change_points(self, t_from: float, t_to: float) -> list[int]:
        """Times in [t_from, t_to) where the demand changes: for tests and for inspecting a seed."""
        self._extend(t_to)
        lo = bisect_right(self._times, t_from)
        hi = bisect_right(self._times, t_to)
        return [x for x in self._times[lo:hi] if x < t_to]

    def hour_of(self, t: float) -> float:
        return ((self.start_tod_s + t) % DAY_S) / 3600.0

    # ---- generation ---------------------------------------------------------------------------
    def _segment(self, t: float | Fraction) -> int:
        if t < 0:
            raise ValueError(f"time {t} is before power-up")
        self._extend(t)
        return bisect_right(self._times, t) - 1

    def _extend(self, t: float | Fraction) -> None:
        while self._horizon <= t:
            start = self._horizon
            self._generate_minute(start)
            self._finalise(start, start + MINUTE_S)
            self._horizon = start + MINUTE_S

    def _day(self, t: int) -> DayShape:
        day = int((self.start_tod_s + t) // DAY_S)
        shape = self._days.get(day)
        if shape is None:
            shape = self._days[day] = DayShape.draw(self.seed, day)
            for old in [d for d in self._days if d < day - 1]:
                del self._days[old]
        return shape

    def _generate_minute(self, start: int) -> None:
        rng = self._rng
        end = start + MINUTE_S
        hour = self.hour_of(start)
        shape = self._day(start)
        activity = shape.activity(hour)

        while self._fridge_cursor < end:
            on_s = rng.randint(420, 1080)
            self._intervals.append((self._fridge_cursor, self._fridge_cursor + on_s, self._fridge_w))
            self._fridge_cursor += on_s + rng.randint(1200, 2700)

        if start % LIGHTING_BLOCK_S == 0:
            lights = round(_darkness(hour) * min(activity, 1.0) * rng.uniform(150, 450))
            if lights:
                self._intervals.append((start, start + LIGHTING_BLOCK_S, lights))

        # Roughly one appliance start an hour at night's edge, one every few minutes at a peak.
        if rng.random() < 0.01 + 0.12 * activity:
            appliance = rng.choices(APPLIANCES, _WEIGHTS)[0]
            if appliance.hours[0] <= hour < appliance.hours[1]:
                on = start + rng.randrange(MINUTE_S)
                off = on + rng.randint(*appliance.seconds)
                self._intervals.append((on, off, rng.randint(*appliance.watts)))
                tail_w, tail_min, tail_max = appliance.tail
                if tail_w:
                    self._intervals.append((off, off + rng.randint(tail_min, tail_max), tail_w))

        if self.solar_peak_w:
            # Clouds drift: a slowly wandering factor, redrawn a little every minute.
            self._cloud = min(1.0, max(0.2, self._cloud + rng.uniform(-0.15, 0.15)))
            pv = round(self.solar_peak_w * _sun(hour) * self._cloud)
            if pv:
                self._intervals.append((start, end, -pv))

    def _finalise(self, start: int, end: int) -> None:
        points = {start}
        for s, e, _ in self._intervals:
            if start < s < end:
                points.add(s)
            if start < e < end:
                points.add(e)
        for p in sorted(points):
            value = self.base_w + sum(w for s, e, w in self._intervals if s <= p < e)
            if self._values and self._values[-1] == value:
                continue
            if self._times:
                last_t, last_v = self._times[-1], self._values[-1]
                cum_pos = self._cum_pos[-1] + max(last_v, 0) * (p - last_t)
                cum_neg = self._cum_neg[-1] + max(-last_v, 0) * (p - last_t)
            else:
                cum_pos = cum_neg = 0
            self._times.append(p)
            self._values.append(value)
            self._cum_pos.append(cum_pos)
            self._cum_neg.append(cum_neg)
        self._intervals = [iv for iv in self._intervals if iv[1] > end]
