"""ESPI (Green Button) answers: every document validates against usage.xsd, links lead a Green Button
client from the feed to ReadingTypes and IntervalBlocks, ids are stable, values are exactly scaled."""
import uuid
from fractions import Fraction
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.channel_messages import SCALING_1_1000, SCALING_3_10000, T0, Clock, gap, reading, status
from tests.support.espi_schema import assert_valid
from openseg.lan_server.espi import feed as espi_feed
from openseg.lan_server.http import web_resources
from openseg.lan_server.state import history_source
from openseg.lan_server.state.readings import Readings

ATOM = "{http://www.w3.org/2005/Atom}"
ESPI = "{http://naesb.org/espi}"
BASE = "https://gw.example:8443"
ROOT = BASE + "/espi/1_1/resource/"
SUB = "3f9a1c"


def espi(readings, path, params=None, sub=SUB, zone="Europe/Paris"):
    return web_resources.espi(readings, path=path, params=params or {}, subscription=sub,
                              base_url=BASE, time_zone=zone)


def fetch(readings, url):
    """What a Green Button client does with an href: GET it (here: call the resource function)."""
    assert url.startswith(ROOT), url
    parts = urlsplit(url)
    resp = espi(readings, parts.path[len("/espi/1_1/resource/"):], dict(parse_qsl(parts.query)))
    assert resp.status == 200, (url, resp.status, resp.body)
    assert resp.content_type == "application/atom+xml"
    return assert_valid(resp.body)


def links(entry, rel):
    return [l.get("href") for l in entry.findall(f"{ATOM}link") if l.get("rel") == rel]


def entries(root):
    return [root] if root.tag == f"{ATOM}entry" else root.findall(f"{ATOM}entry")


def content(entry):
    return entry.find(f"{ATOM}content")[0]


def readings_values(root):
    return [(int(r.findtext(f"{ESPI}timePeriod/{ESPI}start")), int(r.findtext(f"{ESPI}value")))
            for r in root.iter(f"{ESPI}IntervalReading")]


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def populated(clock):
    """Two hours of 7-s polls with a few gaps, scaling 3/10000 (0.3 W and 0.3 Wh per count)."""
    r = Readings(30.0, clock=clock)
    r.apply(status(0, clock(), poll_interval_s=7.0))
    seq = 1
    for slot in range(0, 2 * 3600 // 7):
        t = clock.advance(7.0)
        if slot % 97 == 13:
            r.apply(gap(seq, slot, t - 3.0))
        else:
            r.apply(reading(seq, slot, t, summation=10_000_000 + slot * 11, demand=2000 + slot % 50 - 25))
        seq += 1
    return r


def all_paths(sub=SUB):
    mr = f"Subscription/{sub}/UsagePoint/1/MeterReading"
    return [f"Batch/Subscription/{sub}", f"Batch/Subscription/{sub}/UsagePoint/1",
            f"Subscription/{sub}/UsagePoint", f"Subscription/{sub}/UsagePoint/1", mr, f"{mr}/1", f"{mr}/2",
            f"{mr}/1/IntervalBlock", f"{mr}/2/IntervalBlock", "ReadingType", "ReadingType/1",
            "ReadingType/2", "LocalTimeParameters", "LocalTimeParameters/1"]


HISTORY_PARAMS = [{}, {"published-min": "2023-11-14T23:00:00Z"},
                  {"updated-min": "2023-11-14T22:30:00Z", "updated-max": "2023-11-14T23:30:00Z"},
                  {"max-results": "1", "start-index": "2"}, {"published-min": "2030-01-01T00:00:00Z"}]


@pytest.mark.parametrize("params", HISTORY_PARAMS)
@pytest.mark.parametrize("path", all_paths())
def test_every_resource_validates(populated, path, params):
    resp = espi(populated, path, params)
    assert resp.status == 200 and resp.content_type == "application/atom+xml"
    root = assert_valid(resp.body)
    for e in entries(root):
        assert e.findtext(f"{ATOM}id").startswith("urn:uuid:")
        assert len(links(e, "self")) == 1 and len(links(e, "up")) == 1
        assert e.findtext(f"{ATOM}published") and e.findtext(f"{ATOM}updated")
    if root.tag == f"{ATOM}feed":
        assert root.findtext(f"{ATOM}id") and root.findtext(f"{ATOM}title") and root.findtext(f"{ATOM}updated")
        assert links(root, "self")[0].startswith(ROOT + path)


def test_a_green_button_client_follows_related_links(populated):
    # Start where Download My Data starts, and where a third-party client starts: the UsagePoints.
    for start in (f"Batch/Subscription/{SUB}", f"Subscription/{SUB}/UsagePoint"):
        root = fetch(populated, ROOT + start)
        usage_points = [e for e in entries(root) if content(e).tag == f"{ESPI}UsagePoint"]
        assert len(usage_points) == 1
        up = usage_points[0]
        assert content(up).findtext(f"{ESPI}ServiceCategory/{ESPI}kind") == "0"
        found = {}
        for href in links(up, "related"):
            for e in entries(fetch(populated, href)):
                obj = content(e)
                if obj.tag == f"{ESPI}LocalTimeParameters":
                    found["ltp"] = obj
                if obj.tag != f"{ESPI}MeterReading":
                    continue
                related = [fetch(populated, h) for h in links(e, "related")]
                rts = [x for x in related if x.tag == f"{ATOM}entry" and content(x).tag == f"{ESPI}ReadingType"]
                blocks = [x for x in related if x.tag == f"{ATOM}feed"]
                assert len(rts) == 1 and len(blocks) == 1
                rt = content(rts[0])
                found[rt.findtext(f"{ESPI}uom")] = (rt, blocks[0])
        assert set(found) == {"38", "72", "ltp"}
        demand_rt, demand_blocks = found["38"]
        assert demand_rt.findtext(f"{ESPI}accumulationBehaviour") == "12"
        assert demand_rt.findtext(f"{ESPI}kind") == "37"
        energy_rt, energy_blocks = found["72"]
        assert energy_rt.findtext(f"{ESPI}accumulationBehaviour") in ("1", "9")
        assert energy_rt.findtext(f"{ESPI}flowDirection") == "1"
        # The IntervalBlock collection without parameters: exactly one reading, the current value.
        snap = populated.snapshot()
        for rt, feed, raw in ((demand_rt, demand_blocks, snap.latest.demand),
                              (energy_rt, energy_blocks, snap.latest.summation)):
            (start_t, value), = readings_values(feed)
            p = int(rt.findtext(f"{ESPI}powerOfTenMultiplier"))
            assert value * Fraction(10) ** p == Fraction(raw * 3 * 1000, 10000)
            assert start_t == int(snap.latest.time)
            block_entry, = entries(feed)
            assert fetch(populated, links(block_entry, "self")[0]).tag == f"{ATOM}entry"


def test_entry_self_links_resolve_to_the_same_entry(populated):
    batch = fetch(populated, ROOT + f"Batch/Subscription/{SUB}")
    ids = set()
    for e in entries(batch):
        again = fetch(populated, links(e, "self")[0])
        assert again.tag == f"{ATOM}entry"
        assert again.findtext(f"{ATOM}id") == e.findtext(f"{ATOM}id")
        ids.add(e.findtext(f"{ATOM}id"))
        collection = fetch(populated, links(e, "up")[0])
        assert e.findtext(f"{ATOM}id") in {x.findtext(f"{ATOM}id") for x in entries(collection)} or \
            content(e).tag == f"{ESPI}IntervalBlock"     # block collections answer the current value
    assert len(ids) == len(entries(batch))               # no two entries share an id


def test_ids_are_uuid5_of_the_path_and_survive_a_restart(clock):
    def ids(r):
        r.apply(reading(1, 1, T0 + 10))
        batch = assert_valid(espi(r, f"Batch/Subscription/{SUB}").body)
        return {links(e, "self")[0]: e.findtext(f"{ATOM}id") for e in entries(batch)}

    first = ids(Readings(30.0, clock=clock))
    clock.advance(600)                                   # a restart ten minutes later
    assert ids(Readings(30.0, clock=clock)) == first     # descriptive entries and the hour's blocks
    assert len(set(first.values())) == len(first) == 8
    for href, entry_id in first.items():
        path = href[len(ROOT):]
        assert entry_id == f"urn:uuid:{uuid.uuid5(espi_feed.ID_NAMESPACE, path)}"
    other = Readings(30.0, clock=clock)
    other.apply(reading(1, 1, T0 + 10))
    up_other = entries(assert_valid(espi(other, "Subscription/zz/UsagePoint/1", sub="zz").body))[0]
    assert up_other.findtext(f"{ATOM}id") not in first.values()     # ids differ per subscription


@pytest.mark.parametrize("scaling, raw_demand, raw_sum, demand_w, energy_wh", [
    (SCALING_3_10000, 1234, 987654321, Fraction("370.2"), Fraction("296296296.3")),
    (SCALING_1_1000, 1234, 987654321, Fraction(1234), Fraction(987654321)),
])
def test_current_value_is_exactly_scaled(clock, scaling, raw_demand, raw_sum, demand_w, energy_wh):
    r = Readings(30.0, clock=clock)
    r.apply(reading(1, 1, clock(), demand=raw_demand, summation=raw_sum, scaling=scaling))
    for mr, rt, expected in (("1", "1", demand_w), ("2", "2", energy_wh)):
        rt_doc = assert_valid(espi(r, f"ReadingType/{rt}").body)
        p = int(content(rt_doc).findtext(f"{ESPI}powerOfTenMultiplier"))
        feed = assert_valid(espi(r, f"Subscription/{SUB}/UsagePoint/1/MeterReading/{mr}/IntervalBlock").body)
        (_, value), = readings_values(feed)
        assert value * Fraction(10) ** p == expected


def test_current_value_answer_is_built_once_per_reading_and_never_outlives_it(clock):
    """The parameterless IntervalBlock answer is memoised (espi_feed.current_value_document): the same
    bytes while the reading is the same, a new document for each new reading (also when a larger value
    changes the exponent), per subscription and base URL; and the same bytes the uncached builder makes."""
    r = Readings(30.0, clock=clock)
    path = f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock"
    values = []
    for seq, demand in enumerate([1234, 1234, 5, 9_000_000, 1234], start=1):
        r.apply(reading(seq, seq, clock.advance(7.0), demand=demand, summation=10 + seq))
        first, again = espi(r, path).body, espi(r, path).body
        assert first == again
        feed = assert_valid(first)
        (start, value), = readings_values(feed)
        p = int(content(assert_valid(espi(r, "ReadingType/1").body)).findtext(f"{ESPI}powerOfTenMultiplier"))
        values.append((start, value * Fraction(10) ** p))
        # What the generic builder writes for the same state, byte for byte.
        snap = r.snapshot()
        ctx = espi_feed.Context(snap=snap, base_url=BASE, subscription=SUB, time_zone="Europe/Paris",
                                source=history_source.source_for(r, snap))
        mr = espi_feed.METER_READINGS["1"]
        assert first == espi_feed.feed_document(ctx, path=espi_feed.interval_blocks_path(SUB, "1"),
                                                title=f"{mr.title}: current value",
                                                entries=[espi_feed.current_entry(ctx, mr)])
    assert [v for _, v in values] == [Fraction("370.2")] * 2 + [
        Fraction("1.5"), Fraction(2_700_000), Fraction("370.2")]
    assert len({t for t, _ in values}) == 5
    other = web_resources.espi(r, path=path.replace(SUB, "other"), params={}, subscription="other",
                               base_url="https://other.example", time_zone="Europe/Paris").body
    assert b"https://other.example/espi/1_1/resource/Subscription/other/" in other
    assert BASE.encode() not in other


def test_history_by_data_time_and_empty_feed(populated):
    path = f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock"
    lo, hi = T0 + 3600, T0 + 3600 + 600
    params = {"published-min": "2023-11-14T23:13:20Z", "published-max": "2023-11-14T23:23:20Z"}
    values = readings_values(assert_valid(espi(populated, path, params).body))
    assert values and all(lo <= t < hi for t, _ in values)
    expected = [e for e in populated.snapshot().history if hasattr(e, "demand") and lo <= int(e.time) < hi]
    assert len(values) == len(expected)                     # gaps are absent, not zero
    empty = assert_valid(espi(populated, path, {"published-min": "2030-01-01T00:00:00Z"}).body)
    assert entries(empty) == [] and empty.tag == f"{ATOM}feed"
    # Paging is over IntervalBlock entries (one per UTC hour).
    all_blocks = entries(assert_valid(espi(populated, path, {"start-index": "1"}).body))
    assert len(all_blocks) == 3
    second = entries(assert_valid(espi(populated, path, {"start-index": "2", "max-results": "1"}).body))
    assert [e.findtext(f"{ATOM}id") for e in second] == [all_blocks[1].findtext(f"{ATOM}id")]


def test_batch_without_history_carries_the_current_values(populated):
    """History off: no quarter hours, and the raw samples are never summed by a Download My Data
    consumer, so the Batch holds each MeterReading's current value (its `current` block)."""
    batch = assert_valid(espi(populated, f"Batch/Subscription/{SUB}").body)
    snap = populated.snapshot()
    current = [readings_values(assert_valid(espi(
        populated, f"Subscription/{SUB}/UsagePoint/1/MeterReading/{mr}/IntervalBlock").body))[0] for mr in "12"]
    assert readings_values(batch) == current
    assert readings_values(batch)[0][0] == int(snap.latest_demand.time)
    kinds = [content(e).tag.replace(ESPI, "") for e in entries(batch)]
    assert kinds[:4] == ["UsagePoint", "LocalTimeParameters", "MeterReading", "ReadingType"]
    blocks = [links(e, "self")[0] for e in entries(batch) if content(e).tag == f"{ESPI}IntervalBlock"]
    assert [b.rsplit("/", 3)[1:] for b in blocks] == [["1", "IntervalBlock", "current"],
                                                        ["2", "IntervalBlock", "current"]]


def test_batch_before_any_reading_still_describes_the_meter(clock):
    batch = assert_valid(espi(Readings(30.0, clock=clock), f"Batch/Subscription/{SUB}").body)
    assert [content(e).tag.replace(ESPI, "") for e in entries(batch)] == [
        "UsagePoint", "LocalTimeParameters", "MeterReading", "ReadingType", "MeterReading", "ReadingType"]


def test_no_value_yet_is_503_with_retry_after(clock):
    r = Readings(30.0, clock=clock)
    r.apply(status(0, clock(), poll_interval_s=7.0))
    resp = espi(r, f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock")
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"
    # A reading whose demand the meter flagged invalid is still no demand value.
    r.apply(reading(1, 1, clock(), demand=None))
    assert espi(r, f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock").status == 503
    assert espi(r, f"Subscription/{SUB}/UsagePoint/1/MeterReading/2/IntervalBlock").status == 200


@pytest.mark.parametrize("path", [f"Subscription/other/UsagePoint", f"Subscription/other/UsagePoint/1",
                                  f"Batch/Subscription/other", f"Subscription/other/nothing/here"])
def test_another_users_subscription_is_403(populated, path):
    assert espi(populated, path).status == 403


@pytest.mark.parametrize("path", [
    "", "Batch", "Batch/Subscription", f"Subscription/{SUB}", f"Subscription/{SUB}/UsagePoint/2",
    f"Subscription/{SUB}/UsagePoint/01", f"Subscription/{SUB}/UsagePoint/1/MeterReading/3",
    f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock/12345",
    f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock/1600000000",
    f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock/x",
    f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock/1/2", "ReadingType/3",
    "LocalTimeParameters/2", "UsagePoint", "RetailCustomer/1/UsagePoint", "ApplicationInformation",
])
def test_unknown_resources_are_404(populated, path):
    assert espi(populated, path).status == 404


def test_bad_parameter_is_400_naming_it(populated):
    resp = espi(populated, f"Subscription/{SUB}/UsagePoint/1/MeterReading/1/IntervalBlock",
                {"published-min": "yesterday"})
    assert resp.status == 400 and b"published-min" in resp.body
    resp = espi(populated, f"Batch/Subscription/{SUB}", {"since": "1"})
    assert resp.status == 400 and b"'since'" in resp.body


def test_interval_block_member_is_the_hour_held(populated):
    feed = assert_valid(espi(populated, f"Subscription/{SUB}/UsagePoint/1/MeterReading/2/IntervalBlock",
                             {"start-index": "1"}).body)
    for e in entries(feed):
        member = fetch(populated, links(e, "self")[0])
        hour = int(links(e, "self")[0].rsplit("/", 1)[1])
        assert hour % 3600 == 0
        values = readings_values(member)
        assert values == readings_values(e) and all(hour <= t < hour + 3600 for t, _ in values)


# -- whatever the channel delivered, the documents stay valid ------------------------------------------
SCALINGS = st.builds(lambda m, d: {"multiplier": m, "divisor": d, "unit": 0, "summation_formatting": 0,
                                   "demand_formatting": 0},
                     st.integers(1, (1 << 24) - 1),
                     st.one_of(st.integers(1, (1 << 24) - 1), st.sampled_from([1, 10, 1000, 10000, 3])))
EVENTS = st.lists(st.tuples(st.floats(0.01, 4000.0), st.booleans(), SCALINGS,
                            st.one_of(st.none(), st.integers(0, (1 << 48) - 1)),
                            st.one_of(st.none(), st.integers(-(1 << 23) + 1, (1 << 23) - 1))),
                  max_size=25)
PARAMS = st.fixed_dictionaries({}, optional={
    "published-min": st.sampled_from(["2023-11-14T22:00:00Z", "2023-11-14T23:30:00Z"]),
    "updated-max": st.sampled_from(["2023-11-15T00:00:00Z", "2030-01-01T00:00:00Z"]),
    "max-results": st.sampled_from(["1", "5"]), "start-index": st.sampled_from(["1", "2"])})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS, PARAMS, st.sampled_from(["UTC", "America/New_York", "Australia/Sydney"]))
def test_any_channel_data_gives_valid_documents(events, params, zone):
    clock = Clock(T0)
    r = Readings(30.0, clock=clock)
    for seq, (dt, is_gap, scaling, summation, demand) in enumerate(events):
        t = clock.advance(dt)
        if is_gap or (summation is None and demand is None):
            r.apply(gap(seq, seq, t))
        else:
            r.apply(reading(seq, seq, t, summation=summation, demand=demand, scaling=scaling))
    for path in all_paths():
        resp = espi(r, path, params, zone=zone)
        if resp.status == 503:
            assert path.endswith("IntervalBlock") and not params
            continue
        assert resp.status == 200
        assert_valid(resp.body)
