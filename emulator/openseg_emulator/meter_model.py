"""The meter's registers: exact energy integration and the raw values it reports. Pure: time is passed in.

Time `t` is seconds since power-up. A load is anything with demand_w(t), delivered_ws(t) and
received_ws(t) (HouseholdProfile, or SteppedLoad here for a constant or test-controlled load). Energy
is kept as an exact Fraction, so the summation register is the exact integral of the demand and the
only rounding is the meter's own (floor to the register's resolution), which is what a test compares.

Raw values, as ZCL reports them (SE 1.x Simple Metering):
  CurrentSummationDelivered = floor(kWh × divisor ÷ multiplier), uint48, 0xFFFFFFFFFFFF being "invalid"
  CurrentSummationReceived  = the same, of the energy exported (while the demand is negative), counted
                              from `start_received_kwh`; neither register ever decreases
  InstantaneousDemand       = kW × divisor ÷ multiplier rounded half away from zero, int24 clamped to
                              ±0x7FFFFF (−0x800000 is "invalid")
A multiplier or divisor of 0 counts as 1, as the host treats it (docs/han-protocol.md).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

WS_PER_KWH = 3_600_000
UINT48_MAX_VALID = 0xFFFFFFFFFFFE
INT24_MAX_VALID = 0x7FFFFF


class Load(Protocol):
    def demand_w(self, t: float | Fraction) -> int | Fraction: ...
    def delivered_ws(self, t: float | Fraction) -> Fraction: ...
    def received_ws(self, t: float | Fraction) -> Fraction: ...


class SteppedLoad:
    """A demand that only changes when told to (constant load, or a file a test rewrites)."""

    def __init__(self, watts: int | Fraction):
        self._times: list[Fraction] = [Fraction(0)]
        self._values: list[Fraction] = [Fraction(watts)]
        self._cum_pos: list[Fraction] = [Fraction(0)]
        self._cum_neg: list[Fraction] = [Fraction(0)]

    def set_w(self, t: float | Fraction, watts: int | Fraction) -> None:
        """From time t on, the demand is `watts`. Time only moves forward."""
        t = Fraction(t)
        if t < self._times[-1]:
            raise ValueError(f"load change at {float(t)} s is before the last one at {float(self._times[-1])} s")
        watts = Fraction(watts)
        if watts == self._values[-1]:
            return
        last_t, last_v = self._times[-1], self._values[-1]
        self._cum_pos.append(self._cum_pos[-1] + max(last_v, 0) * (t - last_t))
        self._cum_neg.append(self._cum_neg[-1] + max(-last_v, 0) * (t - last_t))
        self._times.append(t)
        self._values.append(watts)

    def _segment(self, t: float | Fraction) -> int:
        if t < 0:
            raise ValueError(f"time {t} is before power-up")
        return bisect_right(self._times, Fraction(t)) - 1

    def demand_w(self, t: float | Fraction) -> Fraction:
        return self._values[self._segment(t)]

    def delivered_ws(self, t: float | Fraction) -> Fraction:
        i = self._segment(t)
        return self._cum_pos[i] + max(self._values[i], 0) * (Fraction(t) - self._times[i])

    def received_ws(self, t: float | Fraction) -> Fraction:
        i = self._segment(t)
        return self._cum_neg[i] + max(-self._values[i], 0) * (Fraction(t) - self._times[i])


def round_half_away(x: Fraction) -> int:
    n = math.floor(abs(x) + Fraction(1, 2))
    return n if x >= 0 else -n


@dataclass(frozen=True)
class Sample:
    """What the meter measured at one instant: exact values and the raw register contents."""
    t: Fraction
    kwh: Fraction                 # delivered summation
    kw: Fraction                  # instantaneous demand (negative when exporting)
    received_kwh: Fraction
    summation_raw: int            # attribute 0x0000
    demand_raw: int               # attribute 0x0400
    received_raw: int             # attribute 0x0001


class MeterModel:
    """A Simple Metering server's registers over a load: demand_w(t), energy_kwh(t) and raw values."""

    def __init__(self, load: Load, start_kwh: Fraction | int | str = Fraction("12345.678"),
                 multiplier: int = 1, divisor: int = 1000, start_received_kwh: Fraction | int | str = 0):
        for name, v in (("multiplier", multiplier), ("divisor", divisor)):
            if not 0 <= v <= 0xFFFFFF:
                raise ValueError(f"{name} must be a uint24 (0-16777215), not {v}")
        start_kwh, start_received_kwh = Fraction(start_kwh), Fraction(start_received_kwh)
        if start_kwh < 0 or start_received_kwh < 0:
            raise ValueError("start_kwh and start_received_kwh must be >= 0")
        self.load = load
        self.start_kwh = start_kwh
        self.start_received_kwh = start_received_kwh
        self.multiplier = multiplier
        self.divisor = divisor
        # Raw units per kWh (or per kW): what the attribute counts.
        self._raw_per_unit = Fraction(divisor or 1, multiplier or 1)

    def demand_w(self, t: float | Fraction) -> Fraction:
        return Fraction(self.load.demand_w(t))

    def energy_kwh(self, t: float | Fraction) -> Fraction:
        return self.start_kwh + self.load.delivered_ws(t) / WS_PER_KWH

    def received_kwh(self, t: float | Fraction) -> Fraction:
        return self.start_received_kwh + self.load.received_ws(t) / WS_PER_KWH

    def summation_raw(self, kwh: Fraction) -> int:
        return min(math.floor(kwh * self._raw_per_unit), UINT48_MAX_VALID)

    def demand_raw(self, kw: Fraction) -> int:
        return max(-INT24_MAX_VALID, min(INT24_MAX_VALID, round_half_away(kw * self._raw_per_unit)))

    def sample(self, t: float | Fraction) -> Sample:
        t = Fraction(t)
        kwh = self.energy_kwh(t)
        kw = self.demand_w(t) / 1000
        received = self.received_kwh(t)
        return Sample(t, kwh, kw, received, self.summation_raw(kwh), self.demand_raw(kw),
                      self.summation_raw(received))

    def formatting(self) -> tuple[int, int]:
        """SummationFormatting and DemandFormatting bitmaps (bits 0-2 digits right of the decimal
        point, bits 3-6 digits left): as many decimals as the register's resolution shows."""
        resolution = 1 / self._raw_per_unit
        right = 0
        while right < 7 and resolution * 10 ** right < 1:
            right += 1
        return (6 << 3) | right, (4 << 3) | right
