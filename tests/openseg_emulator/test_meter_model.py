"""Emulator meter model: the register is the exact integral of the demand, and the raw values scale right."""
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

from openseg_emulator.household import DAY_S, HouseholdProfile
from openseg_emulator.meter_model import MeterModel, SteppedLoad, round_half_away


def integral_by_hand(profile, t0, t1):
    """Sum demand × duration over the profile's own change points: an independent integration."""
    points = [t0] + [p for p in profile.change_points(t0, t1) if p > t0] + [t1]
    return sum(Fraction(profile.demand_w(a)) * (Fraction(b) - Fraction(a)) for a, b in zip(points, points[1:]))


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_household_energy_is_exact_integral_of_demand(seed):
    profile = HouseholdProfile(seed=seed, start_tod_s=5 * 3600)
    t0, t1 = Fraction(12345, 7), Fraction(3 * 3600) + Fraction(1, 3)
    assert profile.delivered_ws(t1) - profile.delivered_ws(t0) == integral_by_hand(profile, t0, t1)


def test_household_demand_is_constant_between_change_points():
    profile = HouseholdProfile(seed=3, start_tod_s=7 * 3600)
    points = profile.change_points(0, 3600)
    assert len(points) > 5, "an hour around breakfast should see appliances switch"
    for a, b in zip(points, points[1:]):
        assert profile.demand_w(a) == profile.demand_w(b - 0.001) == profile.demand_w((a + b) / 2)
        assert profile.demand_w(a) != profile.demand_w(b)      # change points are real changes


def test_register_follows_profile_through_float_sample_times():
    profile = HouseholdProfile(seed=5, start_tod_s=18 * 3600)
    model = MeterModel(profile, Fraction("100"), 1, 1000)
    times = [0.0, 0.1, 7.3, 14.600000000000001, 3600.25, 7201.5]
    for a, b in zip(times, times[1:]):
        delta_kwh = model.energy_kwh(b) - model.energy_kwh(a)
        assert delta_kwh == integral_by_hand(profile, Fraction(a), Fraction(b)) / 3_600_000


def test_same_seed_same_household_different_seed_different():
    a, b, c = (HouseholdProfile(seed=s, start_tod_s=0) for s in (9, 9, 10))
    ts = [i * 97.5 for i in range(0, 900)]
    assert [a.demand_w(t) for t in ts] == [b.demand_w(t) for t in ts]
    assert [a.demand_w(t) for t in ts] != [c.demand_w(t) for t in ts]


def test_household_has_peaks_and_plausible_range():
    profile = HouseholdProfile(seed=11, start_tod_s=0)
    samples = {h: [] for h in range(24)}
    for day in range(7):
        for minute in range(0, 24 * 60, 2):
            t = day * DAY_S + minute * 60
            samples[minute // 60].append(profile.demand_w(t))
    mean = {h: sum(v) / len(v) for h, v in samples.items()}
    night = (mean[2] + mean[3] + mean[4]) / 3
    assert max(mean[h] for h in range(17, 22)) > 2.5 * night, mean
    assert max(mean[h] for h in range(6, 10)) > 1.5 * night, mean
    every = [w for v in samples.values() for w in v]
    assert min(every) >= profile.base_w >= 90
    assert max(every) < 12_000


def test_solar_export_goes_negative_by_day_and_is_counted_as_received():
    profile = HouseholdProfile(seed=2, start_tod_s=0, solar_peak_w=4000)
    noon = [profile.demand_w(12 * 3600 + m * 60) for m in range(120)]
    assert min(noon) < 0
    assert all(profile.demand_w(2 * 3600 + m * 60) > 0 for m in range(60))
    assert profile.received_ws(14 * 3600) > 0 and profile.received_ws(5 * 3600) == 0


def test_received_register_starts_where_told_and_only_counts_export():
    load = SteppedLoad(1200)
    load.set_w(100, -3600)          # exporting 3.6 kW from t = 100 s
    load.set_w(200, 500)
    meter = MeterModel(load, start_kwh="10", start_received_kwh="7.25", multiplier=1, divisor=1000)
    assert meter.sample(50).received_raw == 7250 and meter.sample(100).received_raw == 7250
    s = meter.sample(150)
    assert s.received_kwh == Fraction("7.25") + Fraction(50 * 3600, 3_600_000) and s.received_raw == 7300
    assert s.summation_raw == 10_000 + 1200 * 100 // 3600 and s.demand_raw == -3600
    later = [meter.sample(t) for t in range(0, 400, 7)]
    for a, b in zip(later, later[1:]):          # neither register ever decreases
        assert b.received_raw >= a.received_raw and b.summation_raw >= a.summation_raw
    assert later[-1].received_raw == 7350
    with pytest.raises(ValueError):
        MeterModel(load, start_received_kwh=-1)


def test_stepped_load_integrates_exactly():
    load = SteppedLoad(1000)
    load.set_w(Fraction(10), 2500)
    load.set_w(0.5 + 20, -300)      # a float time, as the emulator's clock gives
    assert load.delivered_ws(30) == 1000 * 10 + 2500 * Fraction(21, 2)
    assert load.received_ws(30) == 300 * Fraction(19, 2)
    assert load.demand_w(10) == 2500 and load.demand_w(9.999) == 1000
    with pytest.raises(ValueError):
        load.set_w(5, 100)


def test_scaling_multiplier_3_divisor_10000():
    model = MeterModel(SteppedLoad(1500), Fraction("12345.678"), multiplier=3, divisor=10000)
    s = model.sample(3600)
    assert s.kwh == Fraction("12347.178")
    assert s.summation_raw == 41157260          # 12347.178 × 10000 ÷ 3, exactly
    assert s.demand_raw == 5000                 # 1.5 kW × 10000 ÷ 3
    # One more second: + 1500 W·s = 1/2400 kWh = 1.3888... raw units; 41157261.3888... floors
    assert model.sample(3601).summation_raw == 41157261
    assert model.sample(3600 + Fraction(12, 25)).summation_raw == 41157260   # 0.48 s: 0.6666... units


def test_default_scaling_and_floor():
    model = MeterModel(SteppedLoad(1000), Fraction("12345.678"), 1, 1000)
    assert model.sample(0).summation_raw == 12345678
    assert model.sample(3.599).summation_raw == 12345678      # 0.99972 Wh: not yet a whole raw unit
    assert model.sample(3.6).summation_raw == 12345679        # exactly 1 Wh
    assert model.sample(0).demand_raw == 1000


def test_zero_multiplier_and_divisor_count_as_one():
    model = MeterModel(SteppedLoad(2000), Fraction(5), multiplier=0, divisor=0)
    assert model.sample(0).summation_raw == 5 and model.sample(0).demand_raw == 2


def test_demand_rounds_half_away_from_zero_and_clamps_to_int24():
    assert [round_half_away(Fraction(x, 2)) for x in (1, 3, -1, -3)] == [1, 2, -1, -2]
    assert MeterModel(SteppedLoad(Fraction(3, 2)), 0, 1, 1000).sample(0).demand_raw == 2
    assert MeterModel(SteppedLoad(Fraction(-3, 2)), 0, 1, 1000).sample(0).demand_raw == -2
    huge = MeterModel(SteppedLoad(9_000_000), 0, 1, 1_000_000)
    assert huge.sample(0).demand_raw == 0x7FFFFF
    assert MeterModel(SteppedLoad(-9_000_000), 0, 1, 1_000_000).sample(0).demand_raw == -0x7FFFFF


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.floats(0, 20000, allow_nan=False), min_size=2, max_size=6),
       st.integers(1, 0xFFFFFF), st.integers(1, 0xFFFFFF))
def test_summation_raw_is_floor_of_exact_energy(seed, times, multiplier, divisor):
    model = MeterModel(HouseholdProfile(seed=seed, start_tod_s=seed % DAY_S), Fraction("12345.678"),
                       multiplier, divisor)
    times = sorted(times)
    raws = [model.sample(t).summation_raw for t in times]
    assert raws == sorted(raws), "the register never runs backwards"
    for t, raw in zip(times, raws):
        exact = model.energy_kwh(t) * divisor / multiplier
        assert raw <= exact < raw + 1 or raw == 0xFFFFFFFFFFFE


def test_formatting_shows_the_register_resolution():
    assert MeterModel(SteppedLoad(0), 0, 1, 1000).formatting() == (0x33, 0x23)
    assert MeterModel(SteppedLoad(0), 0, 1, 1).formatting() == (0x30, 0x20)
    assert MeterModel(SteppedLoad(0), 0, 3, 10000).formatting() == (0x34, 0x24)
