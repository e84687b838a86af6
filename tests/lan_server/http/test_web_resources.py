"""The JSON answers (/api/v1/current, /status, /history) and the Response shape the server relies on."""
import json
import re
from decimal import Decimal

import pytest

from tests.support.channel_messages import SCALING_1_1000, SCALING_3_10000, T0, Clock, gap, reading, status
from openseg.lan_server.http import web_resources
from openseg.lan_server.state.readings import Readings

ISO_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def body(resp):
    assert resp.content_type == "application/json" and resp.status == 200
    # Decimal keeps what the text says: the test sees the exact digits that went over the wire.
    return json.loads(resp.body, parse_float=Decimal)


@pytest.mark.parametrize("scaling, demand, summation, demand_w, summation_wh", [
    (SCALING_3_10000, 1234, 987654321, Decimal("370.2"), Decimal("296296296.3")),
    (SCALING_3_10000, -7, 1, Decimal("-2.1"), Decimal("0.3")),
    (SCALING_1_1000, 1234, 987654321, 1234, 987654321),
    # A full 48-bit register at 0.3 Wh per count: more digits than a double holds, all kept.
    (SCALING_3_10000, 1, (1 << 48) - 1, Decimal("0.3"), Decimal("84442493013196.5")),
])
def test_current_is_exactly_scaled(scaling, demand, summation, demand_w, summation_wh):
    clock = Clock()
    r = Readings(30.0, clock=clock)
    r.apply(reading(1, 1, T0 - 2.5, demand=demand, summation=summation, scaling=scaling))
    js = body(web_resources.current_json(r))
    assert js["demand_w"] == demand_w and js["summation_wh"] == summation_wh
    assert js["time"] == "2023-11-14T22:13:17.500Z" and ISO_MS.fullmatch(js["time"])
    assert js["age_s"] == Decimal("2.5") and js["status"] == "ok"


def test_current_no_data_then_stale_and_invalid_quantity():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    assert body(web_resources.current_json(r)) == {"demand_w": None, "summation_wh": None, "received_wh": None,
                                                   "time": None, "age_s": None, "status": "no-data"}
    r.apply(reading(1, 1, clock(), demand=None))
    js = body(web_resources.current_json(r))
    assert js["demand_w"] is None and js["summation_wh"] is not None and js["status"] == "ok"
    clock.advance(31)
    assert body(web_resources.current_json(r))["status"] == "stale"


@pytest.mark.parametrize("scaling, received, received_wh", [
    (SCALING_3_10000, 4_000_001, Decimal("1200000.3")),
    (SCALING_1_1000, 0, 0),
    (SCALING_3_10000, (1 << 48) - 1, Decimal("84442493013196.5")),    # every digit of a full register
])
def test_current_carries_energy_exported_exactly_scaled(scaling, received, received_wh):
    r = Readings(30.0, clock=Clock())
    r.apply(reading(1, 1, T0 - 1, demand=-2500, summation=987654321, scaling=scaling, received=received))
    js = body(web_resources.current_json(r))
    assert js["received_wh"] == received_wh and js["summation_wh"] is not None and js["demand_w"] < 0
    # a meter that does not report export (an older HAN, or 0x0001 unsupported): null, not a stale value
    r.apply(reading(2, 2, T0 - 0.5, demand=300, summation=987654322, scaling=scaling))
    js = body(web_resources.current_json(r))
    assert js["received_wh"] is None and js["demand_w"] > 0


def test_status_reports_what_the_han_side_said_and_how_old_it_is():
    clock = Clock(T0 - 60)
    r = Readings(30.0, clock=clock, monotonic=clock)         # the LAN process started at T0 - 60
    clock.advance(60.0)
    counters = {"received": 5, "rejected": 1, "rejected_by_reason": {"foreign-uid": 1}, "seq_gaps": 0,
                "seq_missing": 0, "han_restarts": 0, "last_seq": 4}
    js = body(web_resources.status_json(r, counters, lan_started=T0 - 60))
    assert js["state"] is None and js["han_silent"] is True and js["report_age_s"] is None
    assert js["lan_uptime_s"] == 60 and js["channel"] == {**counters, "lost_slots": 0}

    r.apply(status(0, clock(), state="polling", started=T0 - 300, queries_total=120, queries_lost=3))
    clock.advance(12.0)
    js = body(web_resources.status_json(r, counters, lan_started=T0 - 60))
    assert js["state"] == "polling" and js["detail"] == "polling the meter"
    assert js["meter"] == {"ieee": "00:0d:6f:00:0a:bc:de:f0", "nwk": 0x1234, "nwk_hex": "0x1234", "endpoint": 9}
    assert (js["queries_total"], js["queries_lost"]) == (120, 3)
    assert js["lost_by_cause"] == {"malformed": 0, "timeout": 3, "tx-failed": 0, "zcl-status": 0}
    assert (js["frames_bad"], js["guard_refused"], js["channel_dropped"]) == (2, 0, 0)
    assert js["report_age_s"] == 12 and js["han_uptime_s"] == 312 and js["lan_uptime_s"] == 72
    assert js["han_silent"] is False and js["poll_interval_s"] == 7
    assert ISO_MS.fullmatch(js["report_time"]) and ISO_MS.fullmatch(js["han_started"])

    clock.advance(60.0)                                  # nothing for longer than 2 x stale_after_s
    js = body(web_resources.status_json(r, counters, lan_started=T0 - 60))
    assert js["han_silent"] is True and js["state"] == "polling" and js["report_age_s"] == 72


def test_status_counts_the_queries_whose_outcomes_arrived_since_the_report():
    # Issue 15 (4): the HAN reports every 30 s; the readings and gaps between reports are queries too.
    clock = Clock()
    r = Readings(30.0, clock=clock)
    js = body(web_resources.status_json(r, {}, lan_started=T0))
    assert (js["queries_total"], js["queries_lost"], js["lost_by_cause"]) == (None, None, None)
    r.apply(reading(0, 0, clock()))                      # before any report: nothing to add to
    r.apply(status(1, clock(), queries_total=0, queries_lost=0))
    js = body(web_resources.status_json(r, {}, lan_started=T0))
    assert (js["queries_total"], js["queries_lost"]) == (0, 0)
    r.apply(reading(2, 1, clock.advance(7)))
    r.apply(gap(3, 2, clock.advance(7), cause="tx-failed"))
    r.apply(gap(4, 3, clock.advance(7), cause="late"))          # never queried: not a query
    r.apply(gap(5, 4, clock.advance(7), cause="not-polling"))   # nor this
    r.apply(reading(6, 5, clock.advance(7)))
    js = body(web_resources.status_json(r, {}, lan_started=T0))
    assert (js["queries_total"], js["queries_lost"]) == (3, 1)
    assert js["lost_by_cause"] == {"malformed": 0, "timeout": 0, "tx-failed": 1, "zcl-status": 0}
    r.apply(status(7, clock(), queries_total=3, queries_lost=1))   # the report agrees: no double count
    js = body(web_resources.status_json(r, {}, lan_started=T0))
    assert (js["queries_total"], js["queries_lost"]) == (3, 1)
    assert js["lost_by_cause"] == {"malformed": 0, "timeout": 1, "tx-failed": 0, "zcl-status": 0}


def test_uptimes_are_monotonic_whatever_the_wall_clocks_did():
    wall, mono = Clock(T0), Clock(1000.0)
    r = Readings(30.0, clock=wall, monotonic=mono)
    # A HAN that started at 1970 (no real-time clock) and has run 300 s by its monotonic clock.
    r.apply({**status(0, wall(), started=12.0), "uptime_s": 300.0, "clock_steps": 1,
             "clock_last_step_s": T0 - 312.0, "clock_plausible": True, "clock_held": 0})
    mono.advance(10.0)
    wall.advance(-3600.0)                                # the LAN's wall clock steps back an hour
    js = body(web_resources.status_json(r, {}, lan_started=T0))
    assert js["han_uptime_s"] == 310 and js["lan_uptime_s"] == 10
    assert js["clock"]["steps"] == 1 and js["clock"]["was_wrong"] is True and js["clock"]["plausible"] is True


def test_history_points_and_gaps_in_time_order():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    for slot in range(20):
        t = clock.advance(7.0)
        r.apply(gap(slot, slot, t) if slot in (4, 5) else
                reading(slot, slot, t, demand=1000 + slot, received=None if slot < 10 else 20 + slot))
    clock.advance(1.0)
    js = body(web_resources.history_json(r, {"minutes": "1"}))
    assert js["minutes"] == 1
    assert [p["slot"] for p in js["points"]] == list(range(11, 20))     # now = T0 + 141: from T0 + 81
    js = body(web_resources.history_json(r, {}))
    assert js["minutes"] == 60 and [g["slot"] for g in js["gaps"]] == [4, 5]
    assert js["gaps"][0]["cause"] == "timeout" and ISO_MS.fullmatch(js["gaps"][0]["due"])
    times = [p["time"] for p in js["points"]]
    assert times == sorted(times) and len(times) == 18
    assert js["points"][0]["demand_w"] == Decimal("300") and js["points"][0]["summation_wh"] is not None
    # energy exported beside energy imported, null where the reading did not carry it (0.3 Wh a count)
    assert [p["received_wh"] for p in js["points"]] == [None] * 8 + [Decimal(3 * (20 + k)) / 10 for k in range(10, 20)]


@pytest.mark.parametrize("params, name", [({"minutes": "0"}, "minutes"), ({"minutes": "1441"}, "minutes"),
                                          ({"minutes": "abc"}, "minutes"), ({"minutes": "-5"}, "minutes"),
                                          ({"hours": "1"}, "hours"), ({"after": "yesterday"}, "after"),
                                          ({"after": "2026-11-24T13:30:00"}, "after"),   # no zone
                                          ({"step": "0"}, "step"), ({"step": "3601"}, "step"),
                                          ({"limit": "0"}, "limit"), ({"limit": "1e3"}, "limit")])
def test_history_bad_parameters_are_400_naming_them(params, name):
    resp = web_resources.history_json(Readings(30.0, clock=Clock()), params)
    assert resp.status == 400 and f"'{name}'".encode() in resp.body


def _day(clock, r, lost=()):
    """A reading every 7 s for 30 minutes (demand rising by 1 W a slot), `lost` slots as gaps."""
    for slot in range(258):
        t = clock.advance(7.0)
        r.apply(gap(slot, slot, t) if slot in lost else reading(slot, slot, t, demand=1000 + slot,
                                                               summation=5000 + 10 * slot))


def test_history_after_gives_only_what_is_newer():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    _day(clock, r, lost={200})
    whole = body(web_resources.history_json(r, {}))
    cut = whole["points"][100]["time"]
    newer = body(web_resources.history_json(r, {"after": cut}))
    assert newer["points"] == whole["points"][101:] and newer["gaps"] == whole["gaps"]
    assert body(web_resources.history_json(r, {"after": whole["points"][-1]["time"]})) | {"to": None} == \
        whole | {"points": [], "gaps": [], "to": None}
    # A page's ask: nothing twice and nothing missed, however the readings and the asks interleave.
    held, newest = [], None
    for _ in range(5):
        for slot in range(3):
            t = clock.advance(7.0)
            r.apply(reading(1000 + slot, 1000 + slot, t, demand=1))
        js = body(web_resources.history_json(r, {"after": newest} if newest else {}))
        held += [p["time"] for p in js["points"]]
        newest = max([newest or ""] + [p["time"] for p in js["points"]] + [g["due"] for g in js["gaps"]])
    assert held == [p["time"] for p in body(web_resources.history_json(r, {}))["points"]]


def test_history_step_gives_lowest_and_highest_demand_per_bucket():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    _day(clock, r, lost={20, 21, 30})
    singles = body(web_resources.history_json(r, {}))
    js = body(web_resources.history_json(r, {"step": "60"}))
    assert js["step_s"] == 60
    by_minute: dict[int, list] = {}
    for p in singles["points"]:
        by_minute.setdefault(int(web_resources._iso_time(p["time"]) // 60), []).append(p)
    assert len(js["points"]) == len(by_minute)
    for bucket, (minute, ps) in zip(js["points"], sorted(by_minute.items())):
        assert web_resources._iso_time(bucket["time"]) == minute * 60
        assert bucket["readings"] == len(ps)
        assert bucket["demand_min_w"] == min(p["demand_w"] for p in ps)
        assert bucket["demand_max_w"] == max(p["demand_w"] for p in ps)
        assert bucket["summation_wh"] == ps[-1]["summation_wh"]
    assert sum(g["missed"] for g in js["gaps"]) == 3 and {g["cause"] for g in js["gaps"]} == {"timeout"}
    # Asked again from just before the last bucket: that bucket again, whole, and nothing older.
    last = js["points"][-1]["time"]
    before = web_resources.iso_ms(web_resources._iso_time(last) - 0.001)
    again = body(web_resources.history_json(r, {"step": "60", "after": before}))
    assert again["points"] == js["points"][-1:]


def test_history_step_carries_each_registers_last_value_per_bucket():
    """Energy exported in the per-minute buckets as energy imported is: the bucket's last value of
    each register, so the page can read either at any time; a reading without the export (the meter
    did not report it) does not blank a value earlier in the bucket, and a bucket with none has null."""
    clock = Clock()
    r = Readings(30.0, clock=clock)
    for slot in range(60):
        t = clock.advance(7.0)
        # no export for the first 20 slots, then every third reading without it
        received = None if slot < 20 or slot % 3 == 0 else 40 + slot
        r.apply(reading(slot, slot, t, summation=5000 + 10 * slot, received=received))
    clock.advance(1.0)
    singles = body(web_resources.history_json(r, {}))
    js = body(web_resources.history_json(r, {"step": "60"}))
    by_minute: dict[int, list] = {}
    for p in singles["points"]:
        by_minute.setdefault(int(web_resources._iso_time(p["time"]) // 60), []).append(p)
    assert len(js["points"]) == len(by_minute) == 8
    for bucket, ps in zip(js["points"], (ps for _, ps in sorted(by_minute.items()))):
        carried = [p["received_wh"] for p in ps if p["received_wh"] is not None]
        assert bucket["received_wh"] == (carried[-1] if carried else None)
        assert bucket["summation_wh"] == ps[-1]["summation_wh"]
    # both kinds of bucket are there: one with no export at all, one whose last reading lacked it
    assert js["points"][0]["received_wh"] is None
    assert any(ps[-1]["received_wh"] is None and b["received_wh"] is not None
               for b, ps in zip(js["points"], (ps for _, ps in sorted(by_minute.items()))))
    assert js["points"][-1]["received_wh"] == Decimal(3 * (40 + 59)) / 10


def test_history_limit_gives_the_earliest_points():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    _day(clock, r, lost={0, 1})
    whole = body(web_resources.history_json(r, {}))
    js = body(web_resources.history_json(r, {"limit": "1"}))
    assert js["points"] == whole["points"][:1] and [g["slot"] for g in js["gaps"]] == [0, 1]
    after = whole["points"][9]["time"]
    assert body(web_resources.history_json(r, {"limit": "2", "after": after}))["points"] == whole["points"][10:12]


def test_history_limit_keeps_only_the_gaps_before_its_last_point():
    """Against a reference: the first N points of the whole answer, and exactly its gaps due before
    the last of them, for single readings and for buckets (a bucket's gap is due at the bucket's time)."""
    clock = Clock()
    r = Readings(30.0, clock=clock)
    _day(clock, r, lost={0, 1, 30, 31, 60, 100, 101, 102, 200})
    for params in ({}, {"step": "60"}, {"step": "300"}):
        whole = body(web_resources.history_json(r, params))
        count = len(whole["points"])
        shorter = 0
        for n in sorted({1, count // 3, count // 2, count - 1}):
            js = body(web_resources.history_json(r, {**params, "limit": str(n)}))
            last = web_resources._iso_time(js["points"][-1]["time"])
            assert js["points"] == whole["points"][:n]
            assert js["gaps"] == [g for g in whole["gaps"] if web_resources._iso_time(g["due"]) < last], (params, n)
            shorter += len(js["gaps"]) < len(whole["gaps"])
        assert count > 4 and shorter >= 2, (params, count, shorter)


def test_responses_are_never_cached():
    r = Readings(30.0, clock=Clock())
    for resp in (web_resources.current_json(r), web_resources.status_json(r, {}, T0),
                 web_resources.history_json(r, {}),
                 web_resources.espi(r, path="LocalTimeParameters/1", params={}, subscription="s",
                                    base_url="https://h", time_zone="UTC")):
        assert resp.headers["Cache-Control"] == "no-store"
