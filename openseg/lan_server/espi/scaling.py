"""Exact conversion of the meter's raw counts to W / Wh, and the ESPI powerOfTenMultiplier rule.

The meter reports integers plus its own Multiplier and Divisor (ZCL 0x0301/0x0302); one count is
`1000 * multiplier / divisor` W (demand) or Wh (summation), because the meter's unit is kW / kWh.
Everything here is integer / Fraction arithmetic so that no value is ever rounded through a float.

The powerOfTenMultiplier rule (ESPI values are integers `v` meaning `v * 10**p` of the unit):
- If one count is a terminating decimal (its reduced denominator has no prime factor but 2 and 5),
  p is the LARGEST exponent at which every possible reading is an integer: values are then exact and
  as short as possible. Examples: 1/1000 -> 1 W per count -> p = 0; 3/10000 -> 0.3 W -> p = -1 and
  the value is 3 x raw; 1/1 -> 1000 Wh per count -> p = 3, the value is the raw count.
- Otherwise (e.g. divisor 3) no power of ten is exact; p is one decade finer than one count
  (10**p <= count/10), so distinct counts stay distinct and the rounding error (half-even) is at
  most a twentieth of a count.
- ESPI values are Int48. In the pathological case that a value would not fit, p is raised until it
  does (a 48-bit summation register times a 24-bit multiplier can exceed Int48 at any exact p).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping

# usage.xsd Int48 bounds, copied as the schema states them.
INT48_MIN = -140737488355328
INT48_MAX = 140737488355328


@dataclass(frozen=True, slots=True)
class Scaling:
    multiplier: int
    divisor: int
    unit: int = 0
    summation_formatting: int = 0
    demand_formatting: int = 0

    @classmethod
    def from_message(cls, m: dict) -> "Scaling":
        return cls(m["multiplier"], m["divisor"], m["unit"], m["summation_formatting"],
                   m["demand_formatting"])

    @property
    def step(self) -> Fraction:
        """W (or Wh) per raw count."""
        return Fraction(1000 * self.multiplier, self.divisor)


def exact(raw: int, scaling: Scaling) -> Fraction:
    """The scaled value in W (demand) or Wh (summation), exactly."""
    return raw * scaling.step


def _valuation(n: int, prime: int) -> int:
    k = 0
    while n % prime == 0:
        n //= prime
        k += 1
    return k


def _floor_log10(x: Fraction) -> int:
    """floor(log10(x)) for x > 0, exactly."""
    k = len(str(x.numerator)) - len(str(x.denominator))
    while Fraction(10) ** k > x:
        k -= 1
    while Fraction(10) ** (k + 1) <= x:
        k += 1
    return k


def is_decimal(scaling: Scaling) -> bool:
    """True when one count is a terminating decimal, i.e. some power of ten represents it exactly."""
    b = scaling.step.denominator
    b >>= _valuation(b, 2)
    while b % 5 == 0:
        b //= 5
    return b == 1


def resolution_exponent(scaling: Scaling) -> int:
    """The powerOfTenMultiplier that keeps this scaling's full resolution (module docstring)."""
    step = scaling.step
    a, b = step.numerator, step.denominator
    if b == 1:
        return _valuation(a, 10)
    if is_decimal(scaling):
        return -max(_valuation(b, 2), _valuation(b, 5))
    return _floor_log10(step) - 1


def to_int(value: Fraction, p: int) -> int:
    """value / 10**p as an integer: exact when representable, half-even rounding otherwise."""
    return round(value / Fraction(10) ** p)


def scaled_int(raw: int, scaling: Scaling, p: int) -> int:
    """Same as to_int(exact(raw, scaling), p), in plain integer arithmetic (it runs per reading)."""
    num, den = raw * 1000 * scaling.multiplier, scaling.divisor
    if p <= 0:
        num *= 10 ** -p
    else:
        den *= 10 ** p
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2):
        q += 1
    return q


def espi_exponent(largest_raw: Mapping[Scaling, int]) -> int | None:
    """One exponent for a series that may mix scalings (given as scaling -> largest |raw| seen):
    the finest any of them needs, coarsened only if a value would overflow Int48.
    None when the series is empty."""
    if not largest_raw:
        return None
    p = min(resolution_exponent(s) for s in largest_raw)
    while any(scaled_int(raw, s, p) > INT48_MAX for s, raw in largest_raw.items()):
        p += 1
    return p


def decimal_text(n: int, p: int) -> str:
    """n * 10**p written as a plain decimal number (no exponent, no trailing zeros)."""
    if p >= 0:
        return str(n * 10 ** p)
    sign = "-" if n < 0 else ""
    digits = str(abs(n)).rjust(-p + 1, "0")
    whole, frac = digits[:p], digits[p:].rstrip("0")
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def value_text(raw: int, scaling: Scaling) -> str:
    """The scaled value as decimal text at the scaling's own resolution (exact when it is decimal)."""
    p = resolution_exponent(scaling)
    return decimal_text(to_int(exact(raw, scaling), p), p)
