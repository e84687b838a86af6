"""The LAN side's state: latest values, bounded history of readings and gaps, the HAN's last report."""
import threading
import time

from tests.support.channel_messages import SCALING_1_1000, T0, Clock, gap, reading, status
from openseg.lan_server.state.readings import Gap, Reading, Readings, data_status


def test_empty():
    snap = Readings(30.0, clock=Clock()).snapshot()
    assert snap.latest is None and snap.report is None and snap.history == ()
    assert data_status(snap) == "no-data"


def test_latest_per_quantity_and_history_in_time_order():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    r.apply(reading(1, 0, clock.advance(7), demand=100, summation=1000))
    r.apply(gap(2, 1, clock.advance(7)))
    r.apply(reading(3, 2, clock.advance(7), demand=None, summation=1010))   # demand flagged invalid
    snap = r.snapshot()
    assert snap.latest.summation == 1010 and snap.latest.demand is None
    assert snap.latest_demand.demand == 100 and snap.latest_demand.seq == 1
    assert snap.latest_summation is snap.latest
    assert [type(e) for e in snap.history] == [Reading, Gap, Reading]
    assert [e.slot for e in snap.history] == [0, 1, 2]
    assert data_status(snap) == "ok"


def test_stale_after_the_configured_age():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    r.apply(reading(1, 0, clock()))
    clock.advance(30.0)
    assert data_status(r.snapshot()) == "ok"
    clock.advance(0.5)
    assert data_status(r.snapshot()) == "stale"


def test_history_is_bounded_by_count_even_when_polled_faster_than_once_a_second():
    clock = Clock()
    r = Readings(30.0, history_s=100.0, clock=clock)
    assert r.max_entries == 100
    for i in range(1000):
        r.apply(reading(i, i, clock.advance(0.05)))
    snap = r.snapshot()
    assert len(snap.history) == 100
    assert snap.history[-1].seq == 999            # the newest are kept


def test_history_is_pruned_by_age_but_the_latest_value_is_kept():
    clock = Clock()
    r = Readings(30.0, history_s=60.0, clock=clock)
    for i in range(10):
        r.apply(reading(i, i, clock.advance(7.0)))
    assert len(r.snapshot().history) == 9         # 63 s of data, 60 s held (by data time)
    clock.advance(3600)
    snap = r.snapshot()
    assert snap.history == () and snap.latest.seq == 9 and data_status(snap) == "stale"


def test_an_entry_from_a_clock_stepped_back_is_put_in_time_order():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    for i, t in enumerate((10.0, 20.0, 30.0, 15.0)):
        r.apply(reading(i, i, T0 + t))
    times = [e.time for e in r.snapshot().history]
    assert times == sorted(times) and len(times) == 4


def test_status_report_and_poll_interval():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    r.apply(reading(1, 10, clock.advance(5.0)))
    r.apply(reading(2, 12, clock.advance(10.0)))
    assert r.snapshot().latest.interval_s == 5.0          # no report yet: slot spacing
    r.apply(status(3, clock.advance(1.0), poll_interval_s=7.0))
    r.apply(reading(4, 13, clock.advance(6.0)))
    snap = r.snapshot()
    assert snap.latest.interval_s == 7.0 and snap.poll_interval_s == 7.0
    rep = snap.report
    assert (rep.state, rep.queries_total, rep.queries_lost) == ("polling", 10, 1)
    assert (rep.meter.ieee, rep.meter.nwk, rep.meter.endpoint) == ("00:0d:6f:00:0a:bc:de:f0", 0x1234, 9)
    assert rep.received == T0 + 16.0 and dict(rep.lost_by_cause)["timeout"] == 1
    assert snap.last_message_at == T0 + 22.0


def test_scaling_change_is_dated():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    r.apply(reading(1, 0, clock.advance(7)))
    first = clock()
    r.apply(reading(2, 1, clock.advance(7)))
    assert r.snapshot().scaling_since == first
    r.apply(reading(3, 2, clock.advance(7), scaling=SCALING_1_1000))
    assert r.snapshot().scaling_since == clock()


def test_readings_with_the_same_scaling_share_one_scaling_object():
    clock = Clock()
    r = Readings(30.0, clock=clock)
    for seq in range(1, 4):
        r.apply(reading(seq, seq - 1, clock.advance(7)))
    r.apply(reading(4, 3, clock.advance(7), scaling=SCALING_1_1000))
    r.apply(reading(5, 4, clock.advance(7), scaling=SCALING_1_1000))
    a, b, c, d, e = r.snapshot().history
    assert a.scaling is b.scaling is c.scaling
    assert d.scaling is e.scaling and d.scaling != a.scaling
    assert (a.scaling.multiplier, a.scaling.divisor, d.scaling.multiplier, d.scaling.divisor) == (3, 10000, 1, 1000)


def test_concurrent_writer_and_readers_see_consistent_snapshots():
    r = Readings(30.0, history_s=500.0)            # real clock: entries are timed near now
    now = time.time()
    n = 5000
    errors: list[str] = []
    done = threading.Event()

    def write():
        for i in range(n):
            r.apply(reading(i, i, now - n * 0.05 + i * 0.05) if i % 5 else gap(i, i, now - n * 0.05 + i * 0.05))
        done.set()

    def read():
        while not done.is_set():
            snap = r.snapshot()
            times = [e.time for e in snap.history]
            if times != sorted(times) or len(times) > r.max_entries:
                errors.append("history out of order or over its bound")
            if snap.latest is not None and snap.latest_demand is None:
                errors.append("latest without latest_demand")

    readers = [threading.Thread(target=read) for _ in range(3)]
    writer = threading.Thread(target=write)
    for t in readers + [writer]:
        t.start()
    assert done.wait(timeout=60), "writer did not finish"
    for t in readers + [writer]:
        t.join(timeout=10)
    assert not errors
    snap = r.snapshot()
    assert snap.latest.seq == n - 1 and len(snap.history) == r.max_entries
