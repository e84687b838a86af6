"""Energy exported on the LAN side: readings -> history store -> the 15-minute series of its own and the
chart JSON, for a solar day where the meter reports CurrentSummationReceived, with missed slots and
readings that lack the export value."""
import json
from fractions import Fraction

import pytest

from tests.support.channel_messages import SCALING_3_10000, T0, Clock, gap, reading, status
from openseg.lan_server.state import history_store as hs
from openseg.lan_server.espi import interval_energy as ie
from openseg.lan_server.http import web_resources
from openseg.lan_server.state.history_source import StoreSource
from openseg.lan_server.state.readings import Readings
from openseg.lan_server.espi.scaling import Scaling

STEP = Scaling.from_message(SCALING_3_10000).step      # 0.3 Wh per count


def solar_w(t):
    """Net demand: a morning import, a midday export that changes every minute, an evening import."""
    hour = (t - (T0 - 6 * 3600)) / 3600
    k = int(t // 60)
    return -(1500 + (k * 7919) % 2000) if 1.5 <= hour <= 4.5 else 300 + (k * 104729) % 900


class SolarFeed:
    def __init__(self, tmp_path, *, store=True, hours=6.0, missed=(), no_export=()):
        self.clock = Clock(T0)
        self.store = hs.HistoryStore(str(tmp_path / hs.FILE_NAME), 35, clock=self.clock,
                                     log=lambda _: None) if store else None
        self.r = Readings(30.0, clock=self.clock, history=self.store)
        self.r.apply(status(0, T0 - hours * 3600, poll_interval_s=7.0))
        imported = exported = Fraction(0)
        self.truth = []         # (t, raw summation, raw received or None)
        n = int(hours * 3600 / 7)
        for slot in range(n):
            t = T0 - (n - slot) * 7 + 0.2
            w = solar_w(t)
            imported += Fraction(max(w, 0) * 7, 3600) / STEP
            exported += Fraction(max(-w, 0) * 7, 3600) / STEP
            if slot in missed:
                self.r.apply(gap(slot + 1, slot, t))
                continue
            received = None if slot in no_export else int(exported) + 1_000_000
            self.r.apply(reading(slot + 1, slot, t, summation=int(imported) + 40_000_000,
                                 demand=round(w / STEP), received=received))
            self.truth.append((t, int(imported) + 40_000_000, received))
        if self.store:
            self.store.flush()

    def close(self):
        if self.store:
            self.store.close()


# With 3085 slots ending at T0 (T0 % 900 == 800), the quarter-hour boundary T0 - 9800 falls between
# slots 1684 and 1685: readings without export around it make that boundary estimated in the export
# series only.
NO_EXPORT = set(range(1682, 1688)) | {2500}
BOUNDARY = T0 - 800 - 9000


@pytest.fixture
def feed(tmp_path):
    f = SolarFeed(tmp_path, missed=set(range(1500, 1520)), no_export=NO_EXPORT)
    yield f
    f.close()


def test_each_register_is_its_own_15_minute_series(feed):
    source = StoreSource(feed.r.snapshot(history=False), feed.store)
    with source.consistent():
        imported = list(ie.intervals(source.register(None, None, "summation")))
        exported = list(ie.intervals(source.register(None, None, "received")))
    # the received series is built from the export values alone, by the same rules as the import one
    samples = [ie.RegisterSample(hs.t_ms_of(t), STEP * rec, slot, 7000)
               for slot, (t, _, rec) in enumerate(feed.truth) if rec is not None]
    assert exported == list(ie.intervals(_renumbered(feed, samples)))
    # both series cover the same quarter hours here (no decrease, no long gap)
    assert [iv.start for iv in exported] == [iv.start for iv in imported] and len(exported) == 6 * 4 - 1
    # export only around midday, import only outside it; both never decrease
    assert all(iv.wh >= 0 for iv in exported + imported)
    assert sum(iv.wh > 0 for iv in exported) >= 10 and exported[0].wh == 0 and exported[-1].wh == 0
    # a run of intervals sums to the register delta between its ends
    assert sum(iv.wh for iv in exported) == exported[-1].end_wh - exported[0].begin_wh
    # readings without export make an estimated boundary in that series only
    assert [iv.start for iv in exported if iv.estimated] == [BOUNDARY - 900, BOUNDARY]
    assert not any(iv.estimated for iv in imported)


def _renumbered(feed, samples):
    """RegisterSamples carry the HAN's slot numbers: take them from the store, not from the truth list."""
    with feed.store.reading() as rd, rd.snapshot():
        slots = {x.t_ms: x.slot for x in rd.rows(quantity="received")}
    return [ie.RegisterSample(s.t_ms, s.wh, slots[s.t_ms], s.interval_ms) for s in samples]


def test_chart_json_from_the_store_equals_memory_and_carries_export(feed, tmp_path):
    (tmp_path / "mem").mkdir()
    memory = SolarFeed(tmp_path / "mem", store=False, missed=set(range(1500, 1520)), no_export=NO_EXPORT)
    a = web_resources.history_json(feed.r, {"minutes": "180"}).body
    assert a == web_resources.history_json(memory.r, {"minutes": "180"}).body
    points = json.loads(a, parse_float=Fraction)["points"]
    assert all(set(p) == {"time", "slot", "demand_w", "summation_wh", "received_wh"} for p in points)
    shown = [t for t, _, _ in feed.truth if t >= T0 - 180 * 60]
    truth = feed.truth[-len(shown):]
    assert len(points) == len(truth)
    for p, (_, imported, received) in zip(points, truth):
        assert p["received_wh"] == (None if received is None else STEP * received)
        assert p["summation_wh"] == STEP * imported
    exported = [p["received_wh"] for p in points if p["received_wh"] is not None]
    assert exported == sorted(exported) and exported[-1] > exported[0]     # never decreases


def test_snapshot_keeps_the_latest_export_value_apart():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    r.apply(reading(1, 1, clock.advance(7), received=10))
    r.apply(reading(2, 2, clock.advance(7)))                  # the next one without export
    snap = r.snapshot()
    assert snap.latest.received is None and snap.latest_received.received == 10
    assert snap.latest_with("received") is snap.latest_received
    assert snap.latest_with("summation") is snap.latest and snap.latest_with("demand") is snap.latest


# -- ESPI: the export MeterReadings --------------------------------------------------------------------
ATOM, ESPI = "{http://www.w3.org/2005/Atom}", "{http://naesb.org/espi}"


def _espi(r, path, params=None):
    from tests.support.espi_schema import assert_valid
    resp = web_resources.espi(r, path=path, params=params or {}, subscription="s", base_url="https://gw:8443",
                              time_zone="Europe/Paris")
    assert resp.status == 200, (path, resp.status, resp.body[:200])
    return assert_valid(resp.body)


def _by_mr(root):
    """{MeterReading id: [(start, duration, value)]} of the IntervalBlocks in a feed."""
    out = {}
    for e in root.iter(f"{ATOM}entry"):
        self_href = [l.get("href") for l in e.findall(f"{ATOM}link") if l.get("rel") == "self"][0]
        if e.find(f"{ATOM}content/{ESPI}IntervalBlock") is not None:
            mr = self_href.split("/MeterReading/")[1].split("/")[0]
            out.setdefault(mr, []).extend(
                (int(r.findtext(f"{ESPI}timePeriod/{ESPI}start")), int(r.findtext(f"{ESPI}timePeriod/{ESPI}duration")),
                 int(r.findtext(f"{ESPI}value"))) for r in e.iter(f"{ESPI}IntervalReading"))
    return out


def test_download_my_data_carries_export_as_its_own_reverse_meter_readings(feed):
    """MeterReading 4: exported energy per quarter hour (deltaData, flowDirection 19, the received
    register's own series); 5: the export register (bulkQuantity, 19), its current value in the Batch."""
    batch = _espi(feed.r, "Batch/Subscription/s")
    types = {e.find(f"{ATOM}content/{ESPI}ReadingType") is not None and
             [l.get("href") for l in e.findall(f"{ATOM}link") if l.get("rel") == "self"][0].rsplit("/", 1)[1]:
             {c.tag.replace(ESPI, ""): int(c.text) for c in e.find(f"{ATOM}content/{ESPI}ReadingType")}
             for e in batch.iter(f"{ATOM}entry") if e.find(f"{ATOM}content/{ESPI}ReadingType") is not None}
    assert sorted(types) == ["1", "2", "3", "4", "5"]
    assert {k: types["4"][k] for k in ("accumulationBehaviour", "flowDirection", "kind", "uom", "intervalLength")} \
        == {"accumulationBehaviour": 4, "flowDirection": 19, "kind": 12, "uom": 72, "intervalLength": 900}
    assert (types["5"]["accumulationBehaviour"], types["5"]["flowDirection"]) == (1, 19)
    values = _by_mr(batch)
    p = types["4"]["powerOfTenMultiplier"]
    source = StoreSource(feed.r.snapshot(history=False), feed.store)
    with source.consistent():
        exported = list(ie.intervals(source.register(None, None, "received")))
    complete = sorted(v for v in values["4"] if v[1] == 900)
    assert [(s, d) for s, d, _ in complete] == [(iv.start, 900) for iv in exported]
    assert [v for *_, v in complete] == [v for _, v in ie.espi_values(exported, p)]
    # the export register's current value is the newest reading that carried it
    (last,) = values["5"]
    latest = [rec for _, _, rec in feed.truth if rec is not None][-1]
    assert Fraction(last[2]) * Fraction(10) ** types["5"]["powerOfTenMultiplier"] == STEP * latest


def test_a_meter_without_export_has_no_export_meter_readings(tmp_path):
    clock = Clock(T0)
    store = hs.HistoryStore(str(tmp_path / hs.FILE_NAME), 35, clock=clock, log=lambda _: None)
    r = Readings(30.0, clock=clock, history=store)
    r.apply(status(0, T0 - 3600, poll_interval_s=7.0))
    for k in range(400):
        r.apply(reading(k + 1, k, T0 - 3600 + 7 * k, summation=10_000 + k))
    store.flush()
    mrs = _espi(r, "Subscription/s/UsagePoint/1/MeterReading")
    assert [e.findtext(f"{ATOM}title") for e in mrs.iter(f"{ATOM}entry")] == [
        "Instantaneous demand", "Energy delivered (meter register)", "Energy delivered per 15 minutes"]
    for mr in ("4", "5"):
        assert web_resources.espi(r, path=f"Subscription/s/UsagePoint/1/MeterReading/{mr}", params={},
                                  subscription="s", base_url="https://gw:8443", time_zone="UTC").status == 404
    store.close()
