"""ESPI and JSON answers from the history store: the third MeterReading (15-minute energy), range
queries by data time, paging, the Batch, and the page's 24-hour JSON; every document against usage.xsd."""
import copy
import json
from fractions import Fraction
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from tests.support.channel_messages import SCALING_3_10000, T0, Clock, gap, reading, status
from tests.support.espi_schema import assert_valid
from openseg.lan_server.espi import feed as espi_feed, interval_energy as ie
from openseg.lan_server.state import history_source, history_store as hs
from openseg.lan_server.http import web_resources
from openseg.lan_server.state.readings import Readings

ATOM = "{http://www.w3.org/2005/Atom}"
ESPI = "{http://naesb.org/espi}"
BASE = "https://gw.example:8443"
ROOT = BASE + "/espi/1_1/resource/"
SUB = "3f9a1c"
ZONE = "Europe/Paris"
MR = f"Subscription/{SUB}/UsagePoint/1/MeterReading"
STEP = 0.3                  # Wh per count (SCALING_3_10000)


def espi(readings, path, params=None, zone=ZONE):
    return web_resources.espi(readings, path=path, params=params or {}, subscription=SUB, base_url=BASE,
                              time_zone=zone)


def ok(readings, path, params=None):
    resp = espi(readings, path, params)
    assert resp.status == 200, (path, params, resp.status, resp.body[:300])
    return assert_valid(resp.body)


def entries(root):
    return [root] if root.tag == f"{ATOM}entry" else root.findall(f"{ATOM}entry")


def content(entry):
    return entry.find(f"{ATOM}content")[0]


def links(el, rel):
    return [l.get("href") for l in el.findall(f"{ATOM}link") if l.get("rel") == rel]


def values(root):
    """(start, duration, value, quality or None) of every IntervalReading, in document order."""
    out = []
    for r in root.iter(f"{ESPI}IntervalReading"):
        q = r.findtext(f"{ESPI}ReadingQuality/{ESPI}quality")
        out.append((int(r.findtext(f"{ESPI}timePeriod/{ESPI}start")),
                    int(r.findtext(f"{ESPI}timePeriod/{ESPI}duration")), int(r.findtext(f"{ESPI}value")),
                    None if q is None else int(q)))
    return out


def block_values(root, mr):
    out = []
    for e in entries(root):
        if content(e).tag == f"{ESPI}IntervalBlock" and f"/MeterReading/{mr}/" in links(e, "self")[0]:
            out.extend(values(e))
    return out


def watts(t):
    """A load that changes every minute, so interpolation is never trivially exact."""
    k = int(t // 60)
    return 200 + (k * 7919) % 3000


class Feed:
    """Readings + store fed `hours` of 7-s polls ending at `end`; `missed` slots become gaps."""

    def __init__(self, tmp_path, *, hours=30.0, step=7.0, end=T0, missed=(), store=True, retention=35):
        self.clock = Clock(end)
        self.store = hs.HistoryStore(str(tmp_path / hs.FILE_NAME), retention, clock=self.clock,
                                     log=lambda _: None) if store else None
        self.r = Readings(30.0, clock=self.clock, history=self.store)
        self.r.apply(status(0, end - hours * 3600, poll_interval_s=step))
        self.truth = {}             # slot -> (time, raw summation)
        raw, n = 40_000_000, int(hours * 3600 / step)
        t0 = end - n * step
        for slot in range(n):
            t = t0 + slot * step + 0.25 + (slot * 37 % 100) / 1000
            raw += int(watts(t) * step / 3600 / STEP)
            if slot in missed:
                self.r.apply(gap(slot + 1, slot, t))
            else:
                self.r.apply(reading(slot + 1, slot, t, summation=raw, demand=int(watts(t) / STEP),
                                     scaling=SCALING_3_10000))
                self.truth[slot] = (t, raw)
        if self.store:
            self.store.flush()

    def close(self):
        if self.store:
            self.store.close()


@pytest.fixture
def fed(tmp_path):
    f = Feed(tmp_path, missed=set(range(5000, 5040)) | {9000})
    yield f
    f.close()


def stamp(t):
    return espi_feed.atom_time(t)


# -- every resource, with the store behind it ---------------------------------------------------------
PATHS = [f"Batch/Subscription/{SUB}", f"{MR}", f"{MR}/3", f"{MR}/3/IntervalBlock", f"{MR}/1/IntervalBlock",
         "ReadingType", "ReadingType/3", f"Subscription/{SUB}/UsagePoint/1"]
PARAMS = [{}, {"published-min": stamp(T0 - 20 * 3600), "published-max": stamp(T0 - 17 * 3600)},
          {"updated-min": stamp(T0 - 3 * 86400)}, {"max-results": "2", "start-index": "3"}]


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("path", PATHS)
def test_every_store_backed_resource_validates(fed, path, params):
    root = ok(fed.r, path, params)
    for e in entries(root):
        assert len(links(e, "self")) == 1 and e.findtext(f"{ATOM}id").startswith("urn:uuid:")


def test_a_green_button_client_finds_three_meter_readings(fed):
    collection = ok(fed.r, MR)
    found = {}
    for e in entries(collection):
        (rt_href,) = [h for h in links(e, "related") if "/ReadingType/" in h]
        (ib_href,) = [h for h in links(e, "related") if h.endswith("/IntervalBlock")]
        rt = content(ok(fed.r, rt_href[len(ROOT):]))
        found[links(e, "self")[0].rsplit("/", 1)[1]] = (rt, ok(fed.r, ib_href[len(ROOT):]))
    assert sorted(found) == ["1", "2", "3"]
    rt3, current3 = found["3"]
    fields = {c.tag.replace(ESPI, ""): c.text for c in rt3}
    assert (fields["accumulationBehaviour"], fields["kind"], fields["uom"], fields["intervalLength"]) == \
        ("4", "12", "72", "900")
    assert fields["powerOfTenMultiplier"] == found["2"][0].findtext(f"{ESPI}powerOfTenMultiplier")
    assert (fields["commodity"], fields["flowDirection"], fields["phase"], fields["currency"],
            fields["dataQualifier"], fields["defaultQuality"]) == ("1", "1", "224", "840", "12", "0")
    # Without parameters, MeterReading 3 answers its current value: the quarter hour in progress, from
    # its boundary to the newest sample; its own id, not a day block's.
    ((start, duration, value, quality),) = values(current3)
    last_sample = int(max(t for t, _ in fed.truth.values()))
    assert start % 900 == 0 and start + duration == last_sample and duration < 900 and quality is None
    (entry,) = entries(current3)
    assert links(entry, "self")[0].endswith("/MeterReading/3/IntervalBlock/current")
    assert entry.findtext(f"{ATOM}updated") == stamp(last_sample)
    again = ok(fed.r, links(entry, "self")[0][len(ROOT):])
    assert again.findtext(f"{ATOM}id") == entry.findtext(f"{ATOM}id") and values(again) == values(current3)
    # Every MeterReading carries every field utility feeds and the GBA's tests look for.
    for rt, _ in found.values():
        assert {c.tag.replace(ESPI, "") for c in rt} >= {
            "accumulationBehaviour", "commodity", "currency", "dataQualifier", "defaultQuality", "flowDirection",
            "intervalLength", "kind", "phase", "powerOfTenMultiplier", "timeAttribute", "uom"}


# -- range queries: data time, min inclusive, max exclusive -----------------------------------------------
def test_raw_readings_by_data_time_reach_past_memory(fed):
    lo, hi = T0 - 20 * 3600, T0 - 19 * 3600          # long gone from memory (3 h), held by the store
    assert all(e.time >= T0 - 3 * 3600 - 10 for e in fed.r.snapshot().history)
    got = values(ok(fed.r, f"{MR}/2/IntervalBlock", {"published-min": stamp(lo), "published-max": stamp(hi)}))
    expected = sorted((int(t), raw * 3) for t, raw in fed.truth.values() if lo <= int(t) < hi)
    assert [(s, v) for s, _, v, _ in got] == expected and len(expected) > 500
    # The exact edges: a reading starting exactly at -max is out, exactly at -min is in.
    first, second = sorted(int(t) for t, _ in fed.truth.values() if int(t) >= lo)[:2]
    edge = values(ok(fed.r, f"{MR}/1/IntervalBlock",
                     {"updated-min": stamp(first), "updated-max": stamp(second)}))
    assert [s for s, *_ in edge] == [first]
    # published and updated together: the intersection.
    both = values(ok(fed.r, f"{MR}/1/IntervalBlock", {"published-min": stamp(lo), "updated-max": stamp(second)}))
    assert [s for s, *_ in both] == [first]
    empty = ok(fed.r, f"{MR}/1/IntervalBlock", {"published-min": "2030-01-01T00:00:00Z"})
    assert entries(empty) == [] and empty.tag == f"{ATOM}feed"


def test_intervals_by_their_start_and_blocks_by_local_day(fed):
    lo, hi = T0 - 26 * 3600 + 450, T0 - 2 * 3600      # off the grid (T0 is 13:20 past): starts >= lo, < hi
    root = ok(fed.r, f"{MR}/3/IntervalBlock", {"published-min": stamp(lo), "published-max": stamp(hi)})
    starts = [s for s, *_ in values(root)]
    assert starts and min(starts) == -(-lo // 900) * 900 and max(starts) == (hi - 1) // 900 * 900
    assert all(s % 900 == 0 for s in starts)
    for e in entries(root):
        day = int(links(e, "self")[0].rsplit("/", 1)[1])
        assert ie.is_day_start(day, ZONE)
        assert all(day <= s < ie.next_day_start(day, ZONE) for s, *_ in values(e))
        start = int(content(e).findtext(f"{ESPI}interval/{ESPI}start"))
        duration = int(content(e).findtext(f"{ESPI}interval/{ESPI}duration"))
        assert start == values(e)[0][0] and start + duration == values(e)[-1][0] + 900
        # A block's own URI answers that whole local day as held.
        member = ok(fed.r, links(e, "self")[0][len(ROOT):])
        assert set(values(e)) <= set(values(member))
    day = ie.day_start(T0 - 12 * 3600, ZONE)
    assert espi(fed.r, f"{MR}/3/IntervalBlock/{day + 900}").status == 404      # not a local midnight
    assert espi(fed.r, f"{MR}/3/IntervalBlock/{day - 40 * 86400}").status == 404   # nothing held


def test_missed_readings_across_a_boundary_are_marked_estimated(fed):
    root = ok(fed.r, f"Batch/Subscription/{SUB}")
    intervals = {s: (v, q) for s, _, v, q in block_values(root, "3")}
    gap_from = fed.truth[4999][0]
    gap_to = fed.truth[5040][0]
    for start, (v, q) in intervals.items():
        touches = any(gap_from < b < gap_to for b in (start, start + 900))
        assert (q == ie.ESTIMATED) == touches, start
    assert sum(q == ie.ESTIMATED for v, q in intervals.values()) >= 2
    # A single missed slot (9000) inside a quarter hour changes nothing: no mark there.
    t9000 = fed.truth[8999][0]
    inside = t9000 - t9000 % 900
    assert intervals[inside][1] is None


def test_interval_energies_sum_to_the_register_delta(fed):
    window = {"published-min": stamp(T0 - 40 * 3600)}
    batch = ok(fed.r, f"Batch/Subscription/{SUB}", window)
    p = {content(e).findtext(f"{ESPI}uom") + content(e).findtext(f"{ESPI}accumulationBehaviour"):
         int(content(e).findtext(f"{ESPI}powerOfTenMultiplier"))
         for e in entries(batch) if content(e).tag == f"{ESPI}ReadingType"}
    assert p["721"] == p["724"] == -1
    # The register's raw samples live under MeterReading 2, not in Download My Data.
    register = [(s, v) for s, _, v, _ in values(ok(fed.r, f"{MR}/2/IntervalBlock", window))]   # 0.1 Wh
    times_ms = {int(t): hs.t_ms_of(t) for t, _ in fed.truth.values()}
    samples = sorted((times_ms[s], Fraction(v, 10)) for s, v in register)

    def at(b):
        """The register at boundary b, interpolated as the ESPI document's own readings allow."""
        for (t1, r1), (t2, r2) in zip(samples, samples[1:]):
            if t1 < b * 1000 <= t2:
                return r1 + (r2 - r1) * Fraction(b * 1000 - t1, t2 - t1)
        raise AssertionError(b)

    run = [(s, v) for s, d, v, _ in block_values(batch, "3") if d == 900]
    assert len(run) > 100 and all(b[0] - a[0] == 900 for a, b in zip(run, run[1:]))   # no hole here
    for i, j in ((0, len(run)), (10, 50), (len(run) - 9, len(run))):
        part = run[i:j]
        begin, end = part[0][0], part[-1][0] + 900
        assert sum(v for _, v in part) == round(at(end) * 10) - round(at(begin) * 10)


# -- paging ----------------------------------------------------------------------------------------------
def test_paging_over_blocks_and_next_links_when_an_answer_is_full(fed, monkeypatch):
    window = {"published-min": stamp(T0 - 10 * 3600)}
    whole = ok(fed.r, f"{MR}/1/IntervalBlock", window)
    ids = [e.findtext(f"{ATOM}id") for e in entries(whole)]
    assert len(ids) == 11 and not links(whole, "next")            # ten hours and a bit, one answer
    page = ok(fed.r, f"{MR}/1/IntervalBlock", {**window, "start-index": "3", "max-results": "4"})
    assert [e.findtext(f"{ATOM}id") for e in entries(page)] == ids[2:6]
    # The next page is a position in time (the start of the first block left out), in the same window.
    (nxt,) = links(page, "next")
    hour7 = int(links(entries(whole)[6], "self")[0].rsplit("/", 1)[1])
    assert dict(parse_qsl(urlsplit(nxt).query)) == {**window, "max-results": "4", "resume-at": stamp(hour7)}
    parts = urlsplit(nxt)
    following = ok(fed.r, parts.path[len("/espi/1_1/resource/"):], dict(parse_qsl(parts.query)))
    assert [e.findtext(f"{ATOM}id") for e in entries(following)] == ids[6:10]
    # A reading budget of two hours' worth: the answer stops at a block boundary and says where to go on.
    monkeypatch.setattr(espi_feed, "MAX_READINGS", 1100)
    seen, url, pages = [], ROOT + f"{MR}/1/IntervalBlock?" + "&".join(f"{k}={v}" for k, v in window.items()), 0
    while url:
        parts = urlsplit(url)
        root = ok(fed.r, parts.path[len("/espi/1_1/resource/"):], dict(parse_qsl(parts.query)))
        assert sum(len(values(e)) for e in entries(root)) <= 1100 or len(entries(root)) == 1
        seen += [e.findtext(f"{ATOM}id") for e in entries(root)]
        url = (links(root, "next") or [None])[0]
        pages += 1
    assert seen == ids and pages >= 5


def test_batch_pages_walk_one_window_and_describe_once(fed):
    """max-results counts entries; the first page describes the meter, the next pages hold only
    blocks; following next links walks exactly the window's blocks, each once."""
    window = {"published-min": stamp(T0 - 50 * 3600), "published-max": stamp(T0 - 3 * 3600)}
    whole = ok(fed.r, f"Batch/Subscription/{SUB}", window)
    blocks = [links(e, "self")[0] for e in entries(whole) if content(e).tag == f"{ESPI}IntervalBlock"]
    assert len(blocks) >= 2 and not any(b.endswith("/current") for b in blocks)   # now is outside
    got, url, pages = [], ROOT + f"Batch/Subscription/{SUB}?" + urlencode({**window, "max-results": "8"}), 0
    while url:
        parts = urlsplit(url)
        root = ok(fed.r, parts.path[len("/espi/1_1/resource/"):], dict(parse_qsl(parts.query)))
        kinds = [content(e).tag.replace(ESPI, "") for e in entries(root)]
        described = kinds.count("MeterReading")
        assert described == (3 if pages == 0 else 0) and kinds.count("ReadingType") == described
        assert len(kinds) <= 8 or kinds.count("IntervalBlock") == 1
        got += [links(e, "self")[0] for e in entries(root) if content(e).tag == f"{ESPI}IntervalBlock"]
        url = (links(root, "next") or [None])[0]
        pages += 1
    assert got == blocks and pages == len(blocks)       # eight entries describe: one block a page


def test_download_my_data_holds_every_interval_and_the_current_values(tmp_path):
    f = Feed(tmp_path, hours=50.0, step=60.0)
    try:
        batch = ok(f.r, f"Batch/Subscription/{SUB}")
        last = int(max(t for t, _ in f.truth.values()))
        for mr in ("1", "2"):                       # raw samples: the current value only
            assert [s for s, *_ in block_values(batch, mr)] == [last]
        quarters = sorted((s, d) for s, d, *_ in block_values(batch, "3"))
        first_sample = min(t for t, _ in f.truth.values())
        assert min(quarters)[0] < T0 - 49 * 3600 and min(quarters)[0] >= first_sample - 900
        with f.store.reading() as rd:
            complete = list(ie.intervals(rd.register()))
        assert quarters == [(iv.start, 900) for iv in complete] + [(last - last % 900, last % 900)]
        assert not links(batch, "next")
    finally:
        f.close()


# -- history off, the current value, the JSON ---------------------------------------------------------------
def test_history_off_serves_two_meter_readings_from_memory(tmp_path):
    f = Feed(tmp_path, hours=2.0, store=False)
    assert len(entries(ok(f.r, MR))) == 2
    for path in (f"{MR}/3", f"{MR}/3/IntervalBlock", "ReadingType/3"):
        assert espi(f.r, path).status == 404


def test_the_first_minute_already_has_energy_and_an_advertised_collection_never_503s(tmp_path):
    clock = Clock(T0 - T0 % 900 + 100)                  # 100 s into a quarter hour
    store = hs.HistoryStore(str(tmp_path / hs.FILE_NAME), 35, clock=clock, log=lambda _: None)
    r = Readings(30.0, clock=clock, history=store)
    r.apply(status(0, clock(), poll_interval_s=7.0))
    assert espi(r, f"{MR}/3/IntervalBlock").status == 503        # no meter value at all yet
    first = clock()
    r.apply(reading(1, 1, first, summation=1000))
    for k in range(2, 9):                               # the first minute: eight 7-s polls
        r.apply(reading(k, k, clock.advance(7.0), summation=1000 + 5 * k))
    store.flush()
    for params in ({}, {"published-min": stamp(first)}):
        assert espi(r, f"{MR}/3/IntervalBlock", params).status == 200
    # The quarter hour in progress since the first sample (no boundary before it can be valued).
    ((start, duration, value, quality),) = values(ok(r, f"{MR}/3/IntervalBlock"))
    assert (start, duration, value, quality) == (int(first), 49, 40 * 3, None)     # 40 counts, 0.1 Wh units
    batch = ok(r, f"Batch/Subscription/{SUB}")
    assert [v for *_, v, _ in block_values(batch, "3")] == [120]
    store.close()


def test_history_json_reads_a_whole_day_from_the_store_in_the_same_shape(tmp_path):
    (tmp_path / "store").mkdir()
    with_store = Feed(tmp_path / "store", hours=26.0)
    memory_only = Feed(tmp_path, hours=26.0, store=False)
    try:
        day = json.loads(web_resources.history_json(with_store.r, {"minutes": "1440"}).body)
        assert len(day["points"]) == sum(1 for t, _ in with_store.truth.values() if t >= T0 - 86400)
        assert day["points"][0]["time"] >= day["from"]
        # Within what memory holds, the store's answer is byte for byte the memory's.
        for minutes in ("60", "180"):
            a = web_resources.history_json(with_store.r, {"minutes": minutes}).body
            b = web_resources.history_json(memory_only.r, {"minutes": minutes}).body
            assert a == b
    finally:
        with_store.close()


def test_history_json_tells_gaps_from_readings_alike_from_the_store_and_from_memory(tmp_path):
    """A lost slot is a gap, never a point, whether it comes from memory or as a store row."""
    (tmp_path / "store").mkdir()
    n = int(2 * 3600 / 7.0)
    missed = {n - 100, n - 99, n - 20}
    with_store = Feed(tmp_path / "store", hours=2.0, missed=missed)
    memory_only = Feed(tmp_path, hours=2.0, missed=missed, store=False)
    try:
        for params in ({"minutes": "60"}, {"minutes": "60", "step": "60"}):
            a = web_resources.history_json(with_store.r, params).body
            assert a == web_resources.history_json(memory_only.r, params).body
            body = json.loads(a)
            assert sum(g.get("missed", 1) for g in body["gaps"]) == len(missed)
    finally:
        with_store.close()


def test_memory_gives_the_register_samples_the_store_does(tmp_path):
    """MemorySource.register (HistorySource's) yields the same quarter hours as the store's, window edges too."""
    (tmp_path / "store").mkdir()
    with_store = Feed(tmp_path / "store", hours=2.0, missed={300, 301, 700})
    memory_only = Feed(tmp_path, hours=2.0, missed={300, 301, 700}, store=False)
    try:
        memory = history_source.MemorySource(memory_only.r.snapshot())
        store = history_source.StoreSource(with_store.r.snapshot(history=False), with_store.store)
        lo = int(T0 - 5400) // ie.INTERVAL_S * ie.INTERVAL_S
        for since, until in ((None, None), (lo, lo + 3600), (lo + 900, None)):
            with store.consistent():
                want = list(ie.intervals(store.register(since, until, "summation")))
            got = list(ie.intervals(memory.register(since, until, "summation")))
            assert got == want and len(want) > 2
    finally:
        with_store.close()


def test_status_reports_the_history(fed):
    js = json.loads(web_resources.status_json(fed.r, {}, T0).body)["history"]
    assert js["enabled"] and js["retention_days"] == 35 and js["rows"] == len(fed.truth) + 41
    assert js["oldest"] < js["newest"] and js["file_bytes"] > 0 and js["write_errors"] == 0
    off = Readings(30.0, clock=Clock())
    assert json.loads(web_resources.status_json(off, {}, T0).body)["history"] == {"enabled": False}


# -- time: what arrived since, windows clamped to what is held, one id per content --------------------------
def test_updated_min_returns_what_arrived_since_published_min_what_happened_since(fed):
    """A client that fetched at F, inside a quarter hour, asks updated-min=F next time: it gets that
    quarter hour (it became available when the sample after its end arrived), which a filter on data
    time (published-min=F) can never return."""
    quarter = (T0 - 5 * 3600) // 900 * 900
    fetched_at = quarter + 15
    got = values(ok(fed.r, f"{MR}/3/IntervalBlock", {"updated-min": stamp(fetched_at)}))
    assert quarter in [s for s, *_ in got]
    assert quarter not in [s for s, *_ in values(ok(fed.r, f"{MR}/3/IntervalBlock",
                                                    {"published-min": stamp(fetched_at)}))]
    # It arrived with the first sample after its end: updated-min just after that misses it.
    completed = min(int(t) for t, _ in fed.truth.values() if t >= quarter + 900)
    after = values(ok(fed.r, f"{MR}/3/IntervalBlock", {"updated-min": stamp(completed + 1)}))
    assert quarter not in [s for s, *_ in after] and quarter + 900 in [s for s, *_ in after]
    # An entry says when its data became available: the block's `updated` is its last arrival.
    block = entries(ok(fed.r, f"{MR}/3/IntervalBlock", {"updated-min": stamp(fetched_at),
                                                         "updated-max": stamp(completed + 1)}))
    assert [e.findtext(f"{ATOM}updated") for e in block] == [stamp(completed)]


def test_any_window_is_clamped_to_the_history_held(fed):
    everything = {"published-min": "0001-01-01T00:00:00Z", "published-max": "9999-12-31T23:59:59Z"}
    for mr in ("1", "3"):
        held = ok(fed.r, f"{MR}/{mr}/IntervalBlock", {"max-results": "100000"})
        wide = ok(fed.r, f"{MR}/{mr}/IntervalBlock", {**everything, "max-results": "100000"})
        assert values(wide) == values(held) and len(values(held)) > 100
    batch = ok(fed.r, f"Batch/Subscription/{SUB}", everything)
    assert block_values(batch, "3") == block_values(ok(fed.r, f"Batch/Subscription/{SUB}"), "3")


def test_every_content_has_its_own_id(fed):
    batch = ok(fed.r, f"Batch/Subscription/{SUB}")
    ids = [e.findtext(f"{ATOM}id") for e in entries(batch)]
    selves = [links(e, "self")[0] for e in entries(batch)]
    assert len(set(ids)) == len(ids) and len(set(selves)) == len(selves)
    # The current value and the hour block holding the same reading are two resources.
    (current,) = entries(ok(fed.r, f"{MR}/1/IntervalBlock"))
    ((start, *_),) = values(current)
    hour = entries(ok(fed.r, f"{MR}/1/IntervalBlock/{start - start % 3600}"))[0]
    assert current.findtext(f"{ATOM}id") != hour.findtext(f"{ATOM}id")
    assert links(current, "self") != links(hour, "self") and len(values(hour)) > 1
    # Following the current value's own link answers the same content under the same id.
    again = ok(fed.r, links(current, "self")[0][len(ROOT):])
    assert again.findtext(f"{ATOM}id") == current.findtext(f"{ATOM}id") and values(again) == values(current)


def test_current_value_answers_borrow_no_read_connection(fed):
    """The current value (JSON and the IntervalBlock of MeterReadings 1 and 2) comes from memory: no
    read connection is opened for it, whichever thread asks (issue 16: one per worker thread was
    16 MB)."""
    import threading

    def ask():
        for _ in range(3):
            assert web_resources.current_json(fed.r).status == 200
            for mr in ("1", "2"):
                assert espi(fed.r, f"{MR}/{mr}/IntervalBlock").status == 200

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fed.store.readers_open() == 0
    ok(fed.r, f"{MR}/3/IntervalBlock")                  # an answer that reads history borrows one
    assert fed.store.readers_open() == 1


def test_the_current_value_shortcut_answers_what_the_general_path_does(fed, monkeypatch):
    """web_resources._current_value (history on, MeterReading 1, 2 or 5, no parameters) against the
    general route, byte for byte, also after a larger value changes the exponent, and for the received
    register both while the meter reports it and after a reading without it."""
    def both(mr):
        path = f"{MR}/{mr}/IntervalBlock"
        fast = espi(fed.r, path)
        with monkeypatch.context() as m:
            m.setattr(web_resources, "_current_value", lambda *a: None)
            slow = espi(fed.r, path)
        assert (fast.status, fast.content_type, fast.body, fast.headers) == \
            (slow.status, slow.content_type, slow.body, slow.headers)
        return assert_valid(fast.body)

    for mr in ("1", "2"):
        both(mr)
    fed.r.apply(reading(10**6, 10**6, fed.clock.advance(7.0), demand=9_000_000, summation=10**12,
                        scaling=SCALING_3_10000))
    for mr in ("1", "2"):
        (value,) = [v for _, _, v, _ in values(both(mr))]
        assert value > 0
    fed.r.apply(reading(10**6 + 1, 10**6 + 1, fed.clock.advance(7.0), received=4_321_000,
                        scaling=SCALING_3_10000))
    fed.store.flush()
    assert espi(fed.r, f"{MR}/5/IntervalBlock").stands is not None      # the shortcut answered it
    (value,) = [v for _, _, v, _ in values(both("5"))]
    assert value > 0
    fed.r.apply(reading(10**6 + 2, 10**6 + 2, fed.clock.advance(7.0), scaling=SCALING_3_10000))
    fed.store.flush()
    both("5")
    # The memoised exponent is the one worked out afresh.
    from openseg.lan_server.state import history_source
    held = {q: history_source.store_exponent(fed.store, q, fed.r.latest_of(q)) for q in ("demand", "summation")}
    history_source._EXPONENTS.clear()
    assert held == {q: history_source.store_exponent(fed.store, q, fed.r.latest_of(q)) for q in ("demand", "summation")}
    assert espi(fed.r, f"Subscription/other/UsagePoint/1/MeterReading/1/IntervalBlock").status == 403


def test_the_current_value_answer_is_one_object_until_the_reading_or_the_maxima_change(fed):
    """The shortcut's answer is shared by every request while it stands (LanApp keeps it and its wire
    form), so it must be replaced, and its `stands()` turn false, whenever what it says could change: a
    new reading, new maxima (a larger value changes the exponent); another base URL or subscription has
    its own; and no request can change it (frozen, read-only headers)."""
    path = f"{MR}/1/IntervalBlock"
    first = espi(fed.r, path)
    assert first.stands() and espi(fed.r, path) is first and espi(fed.r, "/" + path + "/") is first
    with pytest.raises(TypeError):
        first.headers["Cache-Control"] = "public"
    with pytest.raises(AttributeError):
        first.body = b""
    other = web_resources.espi(fed.r, path=path, params={}, subscription=SUB, base_url="https://other:8443",
                               time_zone=ZONE)
    assert other is not first and b"https://other:8443/" in other.body
    # Another subscription's answer names that subscription only (its own path, its own answer).
    theirs = web_resources.espi(fed.r, path=path.replace(SUB, "77aa00"), params={}, subscription="77aa00",
                                base_url=BASE, time_zone=ZONE)
    assert theirs.stands() and b"77aa00" in theirs.body and SUB.encode() not in theirs.body
    assert b"77aa00" not in espi(fed.r, path).body
    # A new reading inside the maxima (the store keeps the same maxima object): a new answer all the same.
    before = fed.store.maxima()
    fed.r.apply(reading(10**6, 10**6, fed.clock.advance(7.0), demand=1234, summation=1))
    fed.store.flush()
    assert fed.store.maxima() is before
    assert not first.stands() and not theirs.stands() and not other.stands()
    second = espi(fed.r, path)
    assert second is not first and second.body != first.body and espi(fed.r, path) is second
    assert second.stands()
    # New maxima alone: a demand-only reading past them leaves the latest summation the same object,
    # yet MeterReading 2's answer is worked out again (its exponent comes from the maxima): the same
    # document, in a new answer.
    energy = f"{MR}/2/IntervalBlock"
    third, before = espi(fed.r, energy), fed.store.maxima()
    assert third.stands()
    fed.r.apply(reading(10**6 + 1, 10**6 + 1, fed.clock.advance(7.0), demand=9_000_000, summation=None))
    fed.store.flush()
    assert fed.store.maxima() is not before and not third.stands()
    fourth = espi(fed.r, energy)
    assert fourth is not third and fourth.body == third.body and espi(fed.r, energy) is fourth
    assert espi(fed.r, path) is not second
    # The store gone (HistoryKeeper closes a damaged one; answers then come from memory, with an
    # exponent of their own) or another store in its place: no longer the answer.
    held, store = espi(fed.r, energy), fed.r.history
    assert held.stands()

    class Gone:
        def open_store(self):
            return None

    class Other:
        def open_store(self):
            return copy.copy(store)

    for history in (Gone(), Other()):
        fed.r.history = history
        try:
            assert not held.stands(), history
        finally:
            fed.r.history = store
    assert held.stands()
    # Without `stands`: answers built per request.
    assert espi(fed.r, f"{MR}/3/IntervalBlock").stands is None
    # Held answers are bounded (a client can vary the Host, so the base URL): after CURRENT_ANSWERS
    # others, one is let go.
    import gc
    import weakref
    held = weakref.ref(espi(fed.r, path))
    second = third = fourth = None
    for i in range(web_resources.CURRENT_ANSWERS):
        assert web_resources.espi(fed.r, path=path, params={}, subscription=SUB, base_url=f"https://h{i}:8443",
                                  time_zone=ZONE).stands()
    gc.collect()
    assert held() is None


def test_from_memory_the_latest_reading_counts_once_wherever_it_lies():
    """History off: the series is the window plus the latest reading when the window no longer holds it.
    The window's entries are copies (recent_window), so "holds it" is by value, not identity: the latest
    must appear once, whether it is the newest entry, an older one (the wall clock stepped back) or gone."""
    clock = Clock()
    r = Readings(30.0, history_s=60.0, clock=clock)
    for i in range(5):
        r.apply(reading(i, i, clock.advance(7.0), summation=1000 + i))
    series = lambda: [x.seq for x in history_source.MemorySource(r.snapshot()).readings("summation", None, None)]  # noqa: E731
    assert series() == [0, 1, 2, 3, 4]
    r.apply(reading(5, 5, clock() - 20.0, summation=1005))       # tagged before seq 2: the clock stepped back
    assert r.snapshot().history[-1].seq == 4 and r.snapshot().latest.seq == 5
    assert sorted(series()) == [0, 1, 2, 3, 4, 5] and len(series()) == 6
    clock.advance(3600)                                           # the window empties; the latest stays
    assert series() == [5]
