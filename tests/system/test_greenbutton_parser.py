"""Download My Data as a Green Button tool reads it: the Batch feed from a real `openseg-lan`, validated
against usage.xsd and parsed by the PyPI `greenbutton-objects` parser (2024.7.11), whose usage points,
reading types and interval values must match what the emulator produced.

Two sources of meter data:
- two days of the emulator's own meter (openseg_emulator.meter_model.MeterModel over its seeded
  HouseholdProfile, the classes `openseg-emulator` runs) sampled every 7 s on a simulated clock and sent
  to the LAN as the HAN would, with missed slots and a HAN restart; the quarter-hour energies are then
  checked against the model's exact energy, which only a simulated clock can give for whole days;
- the whole real chain (emulator on a pty, openseg-han, openseg-lan) for a few seconds: every reading
  in the feed is a value the emulator's frame log says the meter answered.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
from fractions import Fraction
from pathlib import Path

import pytest
from greenbutton_objects import enums as gb_enums
from greenbutton_objects import parse as gb_parse

from tests.support.channel_messages import gap, reading, status
from tests.support.espi_schema import assert_valid
from tests.support.lan_fixtures import LanServer, wait_for_channel, wait_until
from openseg_emulator.devstack import Stack
from openseg_emulator.household import HouseholdProfile
from openseg_emulator.meter_model import MeterModel
from openseg.shared_schema import messages

pytestmark = pytest.mark.integration

MULTIPLIER, DIVISOR = 3, 10000          # 0.3 W / 0.3 Wh per count
COUNT = Fraction(1000 * MULTIPLIER, DIVISOR)
POLL_S = 7.0
DAYS = 2


def parse_batch(body: bytes, tmp: Path):
    assert_valid(body)
    path = tmp / "green-button.xml"
    path.write_bytes(body)
    return gb_parse.parse_feed(str(path))


NODE_CONSUMERS = Path(__file__).parents[1] / "node" / "read_feed.mjs"


def npm_parsers(body: bytes, tmp: Path) -> dict:
    """What two independent npm Green Button parsers (@cityssm/green-button-parser, espi-parser; pinned
    in tests/node/package.json, installed by `make test`) read from a feed: tests/node/read_feed.mjs."""
    path = tmp / "npm-feed.xml"
    path.write_bytes(body)
    done = subprocess.run(["node", str(NODE_CONSUMERS), str(path)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout)


def summable(meter_readings: list[dict], flow: int = 1) -> dict:
    """The energy a tariff tool sums: the deltaData Wh MeterReading of that flow (1 import, 19 export)."""
    (mr,) = [m for m in meter_readings if m["readingType"] and m["readingType"]["uom"] == 72
             and m["readingType"]["accumulationBehaviour"] == 4 and m["readingType"]["flowDirection"] == flow]
    return mr


def raw_values(document: bytes) -> list[int]:
    """The IntervalReading values of an IntervalBlock collection, in time order."""
    root = assert_valid(document)
    espi = "{http://naesb.org/espi}"
    pairs = [(int(r.findtext(f"{espi}timePeriod/{espi}start")), int(r.findtext(f"{espi}value")))
             for r in root.iter(f"{espi}IntervalReading")]
    return [v for _, v in sorted(pairs)]


def by_uom(usage_point):
    out = {}
    for mr in usage_point.meterReadings:
        out.setdefault(mr.readingType.uom, []).append(mr)
    return out


class SimulatedMeter:
    """The emulator's meter on a simulated clock: model time 0 is wall time `t0`."""

    def __init__(self, t0: float):
        self.t0 = t0
        # A household with a 4 kW PV array: import at night, export around midday.
        self.model = MeterModel(HouseholdProfile(seed=11, start_tod_s=t0 % 86400, solar_peak_w=4000),
                                Fraction("2345.678"),
                                MULTIPLIER, DIVISOR)
        summation_fmt, demand_fmt = self.model.formatting()
        self.scaling = {"multiplier": MULTIPLIER, "divisor": DIVISOR, "unit": 0,
                        "summation_formatting": summation_fmt, "demand_formatting": demand_fmt}

    def sample(self, wall: float):
        return self.model.sample(Fraction(wall - self.t0).limit_denominator(10**6))

    def energy_wh(self, wall_from: float, wall_to: float) -> Fraction:
        m = self.model
        return (m.energy_kwh(Fraction(wall_to - self.t0)) - m.energy_kwh(Fraction(wall_from - self.t0))) * 1000

    def exported_wh(self, wall_from: float, wall_to: float) -> Fraction:
        m = self.model
        return (m.received_kwh(Fraction(wall_to - self.t0)) - m.received_kwh(Fraction(wall_from - self.t0))) * 1000


@pytest.fixture(scope="module")
def two_days(tmp_path_factory):
    """A real openseg-lan fed two days of 7-s polls of the emulator's meter, ending now."""
    workdir = Path(tempfile.mkdtemp(prefix="gb-", dir="/tmp"))      # short: AF_UNIX path limit
    lan = LanServer(workdir)
    lan.start()
    cfg = tomllib.loads(Path(lan.config).read_text())
    sock_path = str(Path(lan.config).parent / cfg["channel"]["socket_path"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    now = time.time()
    t0 = now - DAYS * 86400 - 60
    meter = SimulatedMeter(t0)
    slots = int((now - t0 - 30) / POLL_S)
    # Missed: 25 slots around a quarter-hour boundary on day 1 (the HAN sent gaps), and a HAN restart
    # (numbering from 0 again) 30 hours in; both must show as estimated quarter hours.
    boundary = (t0 + 30 * 3600) // 900 * 900 - 8 * 3600
    missed = {k for k in range(slots) if boundary - 90 < t0 + 30 + k * POLL_S < boundary + 85}
    restart_at = int(30 * 3600 / POLL_S)
    sent = {}
    seq = 0
    sock.sendto(messages.encode(status(seq, t0, poll_interval_s=POLL_S)), sock_path)
    for k in range(slots):
        seq += 1
        slot = k if k < restart_at else k - restart_at
        due = t0 + 30 + k * POLL_S
        t = due + 0.18 + (k % 13) / 100          # the reply's arrival: the reading's time tag
        if k in missed:
            msg = gap(seq, slot, due)
        else:
            s = meter.sample(t)
            msg = reading(seq, slot, t, summation=s.summation_raw, demand=s.demand_raw, received=s.received_raw,
                          scaling=meter.scaling)
            sent[int(t)] = (t, s)
        sock.sendto(messages.encode(msg), sock_path)          # blocking: nothing dropped
    wait_until(lambda: json.loads(lan.request("/api/v1/status")[2])["channel"]["received"] == slots + 1,
               60, "the LAN to take every datagram")
    yield lan, meter, sent, missed, boundary
    sock.close()
    lan.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def test_download_my_data_is_read_by_greenbutton_objects(two_days, tmp_path):
    lan, meter, sent, missed, boundary = two_days
    code, headers, body = lan.request(f"/espi/1_1/resource/Batch/Subscription/{lan.subscription}?download=1")
    assert code == 200 and "attachment" in headers.get("content-disposition", "")
    usage_points = parse_batch(body, tmp_path)

    assert len(usage_points) == 1
    (up,) = usage_points
    assert up.serviceCategory == gb_enums.ServiceKind.electricity
    mrs = by_uom(up)
    assert len(up.meterReadings) == 5           # import and export: register and quarter hours each
    (demand,) = mrs[gb_enums.UomType.watts]
    register, energy = sorted((mr for mr in mrs[gb_enums.UomType.wattHours]
                               if mr.readingType.flowDirection == gb_enums.FlowDirectionType.forward),
                              key=lambda mr: mr.readingType.accumulationBehaviour.value)
    rt_d, rt_r, rt_e = demand.readingType, register.readingType, energy.readingType
    assert (rt_d.accumulationBehaviour, rt_d.kind) == (gb_enums.AccumulationBehaviourType.instantaneous,
                                                       gb_enums.KindType.power)
    assert rt_r.accumulationBehaviour == gb_enums.AccumulationBehaviourType.bulkQuantity
    assert (rt_e.accumulationBehaviour, rt_e.kind, rt_e.intervalLength) == (
        gb_enums.AccumulationBehaviourType.deltaData, gb_enums.KindType.energy, 900)
    assert rt_r.flowDirection == rt_e.flowDirection == gb_enums.FlowDirectionType.forward

    # Demand and register: raw 7-s samples are not summable usage data, so Download My Data carries
    # their current value only, exactly the meter's last raw value scaled.
    last_t, last_s = sent[max(sent)]
    for mr, raw_of in ((demand, lambda s: s.demand_raw), (register, lambda s: s.summation_raw)):
        (ir,) = mr.intervalReadings
        assert int(ir.timePeriod.start.timestamp()) == int(last_t)
        assert ir._value * Fraction(10) ** mr.readingType.powerOfTenMultiplier == raw_of(last_s) * COUNT
        assert ir.timePeriod.duration.total_seconds() == POLL_S

    # Quarter hours over both days, against the model's exact energy.
    p = rt_e.powerOfTenMultiplier
    assert p == rt_r.powerOfTenMultiplier
    readings = sorted(energy.intervalReadings, key=lambda ir: ir.timePeriod.start)
    # The last one is the quarter hour in progress, from its boundary to the newest sample.
    *quarters, progress = readings
    p_start = int(progress.timePeriod.start.timestamp())
    assert p_start % 900 == 0 and p_start + progress.timePeriod.duration.total_seconds() == int(last_t)
    assert len(quarters) >= DAYS * 96 - 8
    demand_max_w = max(float(s.kw) * 1000 for _, s in sent.values())
    # Each boundary value is off by at most one register count (the meter floors) plus the energy of
    # the 7-s slot it is interpolated across.
    per_boundary = float(COUNT) + demand_max_w * (POLL_S + 0.2) / 3600
    estimated = set()
    for ir in quarters:
        start = int(ir.timePeriod.start.timestamp())
        assert ir.timePeriod.duration.total_seconds() == 900
        value = ir._value * Fraction(10) ** p
        truth = meter.energy_wh(start, start + 900)
        qualities = {rq.quality for rq in ir.readingQualities}
        if qualities:
            assert qualities == {gb_enums.QualityOfReading.estimatedUsingLinearInterpolation}
            estimated.add(start)
        else:
            assert abs(value - truth) <= 2 * per_boundary, (start, float(value), float(truth))
    # The missed slots straddle `boundary`; the HAN restart is another estimated boundary.
    assert {boundary - 900, boundary} <= estimated
    assert 2 <= len(estimated) <= 4
    # Over a whole run of consecutive quarters the errors do not add up: only the two ends count.
    run = [ir for ir in quarters if int(ir.timePeriod.start.timestamp()) > boundary + 900]
    run_start = int(run[0].timePeriod.start.timestamp())
    run_end = int(run[-1].timePeriod.start.timestamp()) + 900
    assert all(int(b.timePeriod.start.timestamp()) - int(a.timePeriod.start.timestamp()) == 900
               for a, b in zip(run, run[1:]))
    total = sum(ir._value for ir in run) * Fraction(10) ** p
    assert abs(total - meter.energy_wh(run_start, run_end)) <= 2 * per_boundary + 1
    # What a tariff tool does: sum every reading of the energy MeterReading. The emulator's truth over
    # the same span (first quarter start to the newest sample), within 0.1 %.
    first = int(readings[0].timePeriod.start.timestamp())
    everything = sum(ir._value for ir in readings) * Fraction(10) ** p
    truth = meter.energy_wh(first, last_t)
    assert abs(everything - truth) <= truth / 1000, (float(everything), float(truth))


def test_independent_npm_parsers_read_the_same_kwh_and_times(two_days, tmp_path):
    """Two npm parsers and greenbutton-objects on the same Download My Data (two days of a solar
    household with missed readings and a HAN restart): every quarter hour at the same time with the same
    value, and the sums of the import and the export energy MeterReadings each within 0.1 % of the
    emulator meter's own registers."""
    lan, meter, sent, missed, boundary = two_days
    code, _, body = lan.request(f"/espi/1_1/resource/Batch/Subscription/{lan.subscription}")
    assert code == 200
    (up,) = parse_batch(body, tmp_path)
    feed_updated = assert_valid(body).findtext("{http://www.w3.org/2005/Atom}updated")
    last_t = sent[max(sent)][0]
    npm = npm_parsers(body, tmp_path)
    for flow, truth_of in ((gb_enums.FlowDirectionType.forward, meter.energy_wh),
                           (gb_enums.FlowDirectionType.reverse, meter.exported_wh)):
        energy = [mr for mr in up.meterReadings
                  if mr.readingType.intervalLength == 900 and mr.readingType.flowDirection == flow][0]
        p = energy.readingType.powerOfTenMultiplier
        reference = sorted((int(ir.timePeriod.start.timestamp()), int(ir.timePeriod.duration.total_seconds()),
                            ir._value) for ir in energy.intervalReadings)
        truth = truth_of(reference[0][0], last_t)
        assert truth > 1000                          # kWh both ways over two days
        for name, read in [("greenbutton-objects", None)] + list(npm.items()):
            if read is None:
                got = reference
            else:
                # The feed head's time, not "Invalid Date" (its children once each redeclared xmlns).
                assert read["updated"].replace(".000Z", "Z") == feed_updated, name
                mr = summable(read["meterReadings"], flow.value)
                assert mr["readingType"]["powerOfTenMultiplier"] == p and mr["readingType"]["intervalLength"] == 900
                got = sorted(tuple(r) for r in mr["readings"])
                assert got == reference, name
            kwh = sum(v for _, _, v in got) * Fraction(10) ** p
            assert abs(kwh - truth) <= truth / 1000, (name, flow, float(kwh), float(truth))


def test_a_window_of_the_batch_is_read_too(two_days, tmp_path):
    lan, meter, sent, missed, boundary = two_days
    lo = time.gmtime(time.time() - 36 * 3600)
    hi = time.gmtime(time.time() - 30 * 3600)
    params = (f"published-min={time.strftime('%Y-%m-%dT%H:%M:%SZ', lo)}"
              f"&published-max={time.strftime('%Y-%m-%dT%H:%M:%SZ', hi)}")
    code, _, body = lan.request(f"/espi/1_1/resource/Batch/Subscription/{lan.subscription}?{params}")
    assert code == 200
    (up,) = parse_batch(body, tmp_path)
    lo_s, hi_s = time.mktime(lo) - time.timezone, time.mktime(hi) - time.timezone
    for mr in up.meterReadings:
        starts = [ir.timePeriod.start.timestamp() for ir in mr.intervalReadings]
        assert all(lo_s <= s < hi_s for s in starts)
        # The quarter hours of the window; the current values (now) are outside it.
        assert len(starts) == (24 if mr.readingType.intervalLength == 900 else 0)


def test_the_real_chain_emulator_han_lan(tmp_path):
    workdir = Path(tempfile.mkdtemp(prefix="gs-", dir="/tmp"))
    try:
        with Stack(workdir, poll_interval_s=0.4, emulator_args=["--multiplier", str(MULTIPLIER), "--divisor",
                                                                 str(DIVISOR), "--seed", "5",
                                                                 "--join-delay-s", "0.2"]) as stack:
            wait_for_channel(stack, 25, 60)
            code, _, body = stack.get(f"/espi/1_1/resource/Batch/Subscription/{stack.subscription}")
            assert code == 200
            mr_path = f"/espi/1_1/resource/Subscription/{stack.subscription}/UsagePoint/1/MeterReading"
            raw = [stack.get(f"{mr_path}/{mr}/IntervalBlock?published-min=2000-01-01T00:00:00Z")[2] for mr in "12"]
            answers = [f for f in stack.frames() if f.get("event") == "answer" and "0x0000" in f.get("attrs", {})]
        (up,) = parse_batch(body, tmp_path)
        # The npm parsers read the live feed's energy like greenbutton-objects does.
        energy = [mr for mr in up.meterReadings if mr.readingType.intervalLength == 900
                  and mr.readingType.flowDirection == gb_enums.FlowDirectionType.forward][0]
        reference = sorted((int(ir.timePeriod.start.timestamp()), int(ir.timePeriod.duration.total_seconds()),
                            ir._value) for ir in energy.intervalReadings)
        assert reference
        for name, read in npm_parsers(body, tmp_path).items():
            assert sorted(tuple(r) for r in summable(read["meterReadings"])["readings"]) == reference, name
        mrs = by_uom(up)
        assert len(up.meterReadings) == 5         # the emulator's meter reports energy exported
        (demand,) = mrs[gb_enums.UomType.watts]
        # The import register (MeterReading 2): the export register (5) is bulkQuantity too, and
        # greenbutton-objects holds MeterReadings in a set, so only flowDirection tells them apart.
        (register,) = [mr for mr in mrs[gb_enums.UomType.wattHours]
                       if mr.readingType.accumulationBehaviour == gb_enums.AccumulationBehaviourType.bulkQuantity
                       and mr.readingType.flowDirection == gb_enums.FlowDirectionType.forward]
        # The raw samples, from their own collections (read with lxml: they are not a Batch).
        demand_values, register_values = (
            [v * Fraction(10) ** mr.readingType.powerOfTenMultiplier for v in raw_values(doc)]
            for mr, doc in ((demand, raw[0]), (register, raw[1])))
        assert len(demand_values) >= 20
        # The Batch's current values are the last of them.
        for mr, series in ((demand, demand_values), (register, register_values)):
            (ir,) = mr.intervalReadings
            assert ir._value * Fraction(10) ** mr.readingType.powerOfTenMultiplier == series[-1]
        answered = [(a["attrs"]["0x0400"] * COUNT, a["attrs"]["0x0000"] * COUNT) for a in answers]
        # Every reading in the feed is one the meter answered, in the order it answered them.
        pairs = list(zip(demand_values, register_values))
        it = iter(answered)
        assert all(any(pair == ans for ans in it) for pair in pairs), (pairs[:3], answered[:3])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
