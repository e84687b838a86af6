"""Exact scaling of raw meter counts and the powerOfTenMultiplier rule (openseg/lan_server/espi/scaling.py)."""
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from openseg.lan_server.espi import scaling as sc
from openseg.lan_server.espi.scaling import Scaling

UINT24 = st.integers(1, (1 << 24) - 1)
RAW = st.integers(-(1 << 23) + 1, (1 << 48) - 1)      # InstantaneousDemand .. CurrentSummationDelivered
# Real meters mostly use powers of ten; draw those often so the exact branch is well exercised.
DIVISOR = st.one_of(UINT24, st.sampled_from([1, 10, 100, 1000, 10000, 100000, 1000000, 8, 4096, 3, 7]))


@pytest.mark.parametrize("m, d, p, raw, text", [
    (3, 10000, -1, 1500, "450"),                 # 0.3 W per count
    (3, 10000, -1, 123456789, "37037036.7"),
    (3, 10000, -1, -1201, "-360.3"),
    (1, 1000, 0, 1500, "1500"),                  # 1 W per count
    (1, 1000, 0, 123456789, "123456789"),
    (1, 1, 3, 42, "42000"),                      # 1 kWh per count: ESPI value = raw, p = 3
    (5, 100000, -2, 3, "0.15"),                  # 0.05 W per count
    (1, 3, 1, 1, "330"),                         # 333.3 W per count: not decimal, one decade finer
])
def test_known_scalings(m, d, p, raw, text):
    s = Scaling(m, d)
    assert sc.resolution_exponent(s) == p
    assert sc.value_text(raw, s) == text


@given(UINT24, DIVISOR, RAW)
def test_value_times_power_of_ten_is_exact_when_representable(m, d, raw):
    s = Scaling(m, d)
    p = sc.resolution_exponent(s)
    value = sc.scaled_int(raw, s, p)
    exact = Fraction(raw * 1000 * m, d)
    if sc.is_decimal(s):
        assert value * Fraction(10) ** p == exact
        # ... and p is the largest exponent that is exact for every count (here: for one count).
        assert (s.step / Fraction(10) ** (p + 1)).denominator != 1
    else:
        assert abs(value * Fraction(10) ** p - exact) <= Fraction(10) ** p / 2
        # one decade finer than a count, no finer
        assert 10 * Fraction(10) ** p <= s.step < 100 * Fraction(10) ** p


@given(UINT24, DIVISOR, RAW, st.integers(-14, 14))
def test_integer_path_matches_fraction_rounding(m, d, raw, p):
    s = Scaling(m, d)
    assert sc.scaled_int(raw, s, p) == sc.to_int(sc.exact(raw, s), p) == round(sc.exact(raw, s) / Fraction(10) ** p)


@given(st.dictionaries(st.builds(Scaling, UINT24, DIVISOR), RAW.map(abs), min_size=1, max_size=4))
def test_espi_exponent_fits_int48_and_is_as_fine_as_possible(largest):
    p = sc.espi_exponent(largest)
    finest = min(sc.resolution_exponent(s) for s in largest)
    assert p >= finest
    assert all(sc.scaled_int(raw, s, p) <= sc.INT48_MAX for s, raw in largest.items())
    if p > finest:          # coarsened only because a value did not fit one step finer
        assert any(sc.scaled_int(raw, s, p - 1) > sc.INT48_MAX for s, raw in largest.items())


def test_espi_exponent_of_nothing_is_none():
    assert sc.espi_exponent({}) is None


def test_a_full_48_bit_register_is_coarsened_to_fit_int48():
    s = Scaling(1, 1)                            # 1 kWh per count: p = 3, value = raw
    top = (1 << 48) - 1                          # > Int48 max (2**47)
    p = sc.espi_exponent({s: top})
    assert p == 4 and sc.scaled_int(top, s, p) <= sc.INT48_MAX


@given(st.integers(-(10 ** 20), 10 ** 20), st.integers(-15, 15))
def test_decimal_text_is_exact(n, p):
    text = sc.decimal_text(n, p)
    assert "e" not in text.lower()
    assert Decimal(text) == Decimal(n).scaleb(p)
    if "." in text:
        assert not text.endswith("0")
