"""The SQLite history store (openseg.lan_server.state.history_store): what goes in comes out, the commit rule, the
SQL thinning against the pure one, retention pruning, the row and size bounds, and start-up checks."""
import os
import sqlite3
import threading
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.support.channel_messages import SCALING_1_1000, SCALING_3_10000, T0, Clock, gap, reading, status
from openseg.lan_server.state import history_store as hs
from openseg.lan_server.espi import interval_energy as ie
from openseg.lan_server.state.readings import Readings
from openseg.lan_server.espi.scaling import Scaling


class Mono:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture
def mono():
    return Mono()


def make_store(tmp_path, clock, mono=None, retention=35, log=None):
    return hs.HistoryStore(str(tmp_path / hs.FILE_NAME), retention, clock=clock,
                           monotonic=mono or Mono(), log=log or (lambda _: None))


def feed(readings, clock, n, *, start_seq=1, step=7.0, gaps=(), **kw):
    for i in range(n):
        t = clock.advance(step)
        slot = start_seq + i
        if slot in gaps:
            readings.apply(gap(start_seq + i, slot, t - 0.3))
        else:
            readings.apply(reading(start_seq + i, slot, t, summation=10_000 + 3 * slot, demand=100 + slot % 7,
                                   received=None if slot % 4 == 0 else 500 + slot, **kw))


def test_readings_and_gaps_come_back_as_they_went_in(tmp_path, clock):
    store = make_store(tmp_path, clock)
    r = Readings(30.0, clock=clock, history=store)
    r.apply(status(0, clock(), poll_interval_s=7.0))
    feed(r, clock, 30, gaps={5, 6})
    r.apply(reading(40, 31, clock.advance(7.0), summation=None, demand=-12, scaling=SCALING_1_1000))
    store.flush()
    memory = r.snapshot().history
    with store.reading() as rd, rd.snapshot():
        rows = list(rd.rows())
    assert len(rows) == len(memory) == 31
    for m, row in zip(memory, rows):
        assert row.t_ms == hs.t_ms_of(m.time) and row.seq == m.seq and row.slot == m.slot
        if hasattr(m, "cause"):
            assert row.gap == m.cause and row.summation is None and row.scaling is None
        else:
            assert (row.summation, row.demand, row.received, row.scaling) == \
                (m.summation, m.demand, m.received, m.scaling)
            assert row.interval_s == m.interval_s == 7.0 and row.gap is None
    assert rows[-1].scaling == Scaling.from_message(SCALING_1_1000)
    with store.reading() as rd, rd.snapshot():
        assert [x.slot for x in rd.rows(quantity="summation")] == [x.slot for x in rows[:-1] if not x.gap]
        assert len(list(rd.rows(quantity="demand"))) == 29
        assert [x.slot for x in rd.rows(quantity="received")] == [k for k in range(1, 31)
                                                                   if k not in (5, 6) and k % 4]
        assert rows[0].received == 501 and rows[3].received is None     # slot 4: not reported
        since = rows[10].t_ms
        assert [x.t_ms for x in rd.rows(since, rows[20].t_ms)] == [x.t_ms for x in rows[10:20]]
        assert rd.newest_ms() == rows[-1].t_ms and rd.oldest_ms() == rows[0].t_ms
    assert store.maxima() == {Scaling.from_message(SCALING_3_10000): (106, 10_000 + 3 * 30, 500 + 30),
                              Scaling.from_message(SCALING_1_1000): (12, 0, 0)}
    store.close()
    again = make_store(tmp_path, clock)            # maxima and row count are rebuilt from the file
    assert again.maxima() == store.maxima() and again.writer.rows == 31
    again.close()


def test_an_entry_behind_the_newest_row_is_not_stored_over_the_same_time(tmp_path, clock):
    """A clock that went back without its `clock` message (the LAN was down when it came): storing
    what follows would put two series over the same time, so it is counted, not stored."""
    store = make_store(tmp_path, clock)
    r = Readings(30.0, clock=clock, history=store)
    for i, dt in enumerate((10.0, 20.0, 30.0, 15.0, 31.0)):
        r.apply(reading(i, i, T0 + dt))
    store.flush()
    with store.reading() as rd, rd.snapshot():
        assert [x.slot for x in rd.rows()] == [0, 1, 2, 4]
    assert store.stats().behind == 1


def test_a_clock_message_moves_the_rows_of_the_old_clock_onto_the_new_one(tmp_path, clock):
    store = make_store(tmp_path, clock)
    r = Readings(30.0, clock=clock, history=store)
    # An older run's rows, an hour ago on the right clock.
    for i in range(3):
        r.apply(reading(i, i, T0 - 3600 + 7 * i))
    # This run: 4 slots tagged on a clock an hour fast, then the HAN sees NTP step it back.
    for i in range(4):
        r.apply(reading(10 + i, i, T0 + 7 * i))
    r.apply({"v": 1, "seq": 14, "kind": "clock", "sent": T0, "shift_s": -3600.0 + 7, "from": T0, "to": T0 + 21})
    r.apply(reading(15, 4, T0 - 3600 + 7 + 28 + 0.2))
    store.flush()
    with store.reading() as rd, rd.snapshot():
        rows = list(rd.rows())
    times = [x.t_ms for x in rows]
    assert times == sorted(times) and len(set(times)) == len(times)
    # The older run's rows over the same time (T0-3593, T0-3586) were replaced by the moved ones.
    assert [(x.seq, x.slot) for x in rows] == [(0, 0), (10, 0), (11, 1), (12, 2), (13, 3), (15, 4)]
    st = store.stats()
    assert (st.moved, st.replaced, st.behind) == (4, 2, 0)
    snap = r.snapshot()
    assert [e.time for e in snap.history] == sorted(e.time for e in snap.history)
    assert snap.observed.clock_moves == 1 and snap.observed.clock_wrong


def test_commit_when_drained_or_after_half_a_second_while_busy(tmp_path, clock, mono):
    store = make_store(tmp_path, clock, mono)
    r = Readings(30.0, clock=clock, history=store)
    other = sqlite3.connect(store.path)          # a separate connection sees only what is committed

    def committed():
        return other.execute("SELECT count(*) FROM sample").fetchone()[0]

    feed(r, clock, 3)
    assert committed() == 0
    store.flush()                                # the receiver drained the socket
    assert committed() == 3
    for i in range(10):                          # a burst: nothing committed until 0.5 s have passed
        mono.t += 0.049
        feed(r, clock, 1, start_seq=10 + i)
    assert committed() == 3
    mono.t += 0.1
    feed(r, clock, 1, start_seq=30)
    assert committed() == 3 + 11
    store.close()
    assert committed() == 3 + 11


def test_a_batch_never_exceeds_its_size(tmp_path, clock, mono, monkeypatch):
    monkeypatch.setattr(hs, "MAX_BATCH", 5)
    store = make_store(tmp_path, clock, mono)
    r = Readings(30.0, clock=clock, history=store)
    feed(r, clock, 12)
    assert store.writer.rows == 10 and len(store.writer._pending) == 2
    store.close()


def test_entries_outside_the_retention_or_far_in_the_future_are_not_stored(tmp_path, clock):
    store = make_store(tmp_path, clock, retention=2)
    r = Readings(30.0, clock=clock, history=store)
    r.apply(reading(1, 1, T0 - 2 * 86400 - 1))
    r.apply(reading(2, 2, T0 + hs.FUTURE_SLACK_S + 5))
    r.apply(reading(3, 3, T0 + 5))
    store.flush()
    assert store.writer.rows == 1 and store.stats().skipped == 2
    store.close()


def test_retention_pruning_by_data_time(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(hs, "PRUNE_CHUNK", 100)
    store = make_store(tmp_path, clock, retention=1)
    r = Readings(30.0, clock=clock, history=store)
    start = clock()
    feed(r, clock, 500, step=120.0)                     # 500 readings over ~16.7 h
    store.flush()
    assert store.writer.rows == 500
    clock.t = start + 86400 + 120 * 250 + 1             # the first 250 are now past one day
    rounds = 0
    while store.writer.prune():                        # chunks of at most PRUNE_CHUNK rows
        rounds += 1
    assert rounds == 2 and store.writer.rows == 250
    with store.reading() as rd, rd.snapshot():
        assert rd.oldest_ms() >= hs.t_ms_of(clock() - 86400)
        assert len(list(rd.rows())) == 250
    store.close()
    # Reopening prunes too, before anything is served.
    clock.advance(86400)
    again = hs.open_history(str(tmp_path), 1, clock=clock, log=lambda _: None)
    assert again.writer.rows == 0
    again.close()


def test_the_row_bound_drops_the_oldest_first(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(hs, "MAX_ROWS_PER_DAY", 50)
    store = make_store(tmp_path, clock, retention=1)
    r = Readings(30.0, clock=clock, history=store)
    feed(r, clock, 80, step=1.0)
    store.flush()
    while store.writer.prune():
        pass
    with store.reading() as rd, rd.snapshot():
        assert [x.slot for x in rd.rows()] == list(range(31, 81))
    store.close()


def test_the_size_bound_is_a_hard_limit(tmp_path, clock, monkeypatch):
    # A bound of ~64 pages (the minimum max_page_count this module sets): inserting far more rows
    # than fit must keep the file under it and keep the newest rows.
    monkeypatch.setattr(hs, "BYTES_PER_ROW_BOUND", 1)
    monkeypatch.setattr(hs, "MAX_ROWS_PER_DAY", 100_000)     # a row bound that never binds here
    logs = []
    store = make_store(tmp_path, clock, retention=1, log=logs.append)
    page = store.writer.conn.execute("PRAGMA page_size").fetchone()[0]
    r = Readings(30.0, clock=clock, history=store)
    for k in range(40):
        feed(r, clock, 500, start_seq=1 + 500 * k, step=0.1)
        store.flush()
    assert store.stats().write_errors == 0 and any("size bound" in line for line in logs)
    pages = store.writer.conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages <= 64 and os.path.getsize(store.path) <= 64 * page
    with store.reading() as rd, rd.snapshot():
        assert rd.newest_ms() == hs.t_ms_of(clock())
    store.close()


def test_request_threads_cannot_write(tmp_path, clock):
    store = make_store(tmp_path, clock)
    with store.reading() as rd, pytest.raises(sqlite3.OperationalError):
        rd.conn.execute("DELETE FROM sample")
    store.close()


def test_a_read_snapshot_is_consistent_while_the_writer_goes_on(tmp_path):
    store = hs.HistoryStore(str(tmp_path / "h.sqlite3"), 35, log=lambda _: None)
    r = Readings(30.0, history=store)          # real clocks: the writer's half-second rule applies
    import time
    now = time.time()
    n = 6000
    done = threading.Event()
    errors = []
    snapshots = []

    def write():
        for i in range(n):
            r.apply(reading(i, i, now - 3600 + i * 0.01))
            if i % 50 == 0:
                store.flush()
        store.flush()
        done.set()

    def read():
        while not done.is_set():
            with store.reading() as rd, rd.snapshot():
                a = len(list(rd.rows()))
                b = rd.newest_ms()
                c = len(list(rd.rows()))
            snapshots.append(a)
            if a != c or (a and b is None):
                errors.append((a, b, c))

    w = threading.Thread(target=write)
    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers + [w]:
        t.start()
    assert done.wait(120), "the writer did not finish"
    for t in readers + [w]:
        t.join(60)
    assert not errors
    assert len(set(snapshots)) > 1          # the readers did overlap with the writing
    assert store.writer.rows == n
    store.close()


# -- the SQL reduction gives the intervals of all samples ---------------------------------------------------------
STEPS = st.lists(st.tuples(st.floats(0.2, 1500.0), st.integers(0, 900), st.booleans(), st.booleans(),
                           st.integers(0, 900), st.booleans()),
                 max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(STEPS, st.integers(0, 3 * 3600), st.integers(900, 6 * 3600))
def test_register_query_gives_the_same_intervals_as_all_samples(tmp_path_factory, steps, lo, width):
    """For each register (imported and exported, each its own series with its own missing values)."""
    tmp = tmp_path_factory.mktemp("reg")
    clock = Clock(T0)
    store = make_store(tmp, clock)
    r = Readings(30.0, clock=clock, history=store)
    r.apply(status(0, clock(), poll_interval_s=7.0))
    total, exported, slot = 10_000_000, 0, 0
    for seq, (dt, dwh, is_gap, invalid, dwh_out, no_export) in enumerate(steps, start=1):
        t = clock.advance(dt)
        slot += 1
        if is_gap:
            r.apply(gap(seq, slot, t))
            continue
        total += dwh
        exported += dwh_out
        if invalid and no_export:
            continue        # a reading carries at least one value
        r.apply(reading(seq, slot, t, summation=None if invalid else total,
                        received=None if no_export else exported))
    store.flush()
    with store.reading() as rd, rd.snapshot():
        for quantity in ("summation", "received"):
            full = [ie.RegisterSample(x.t_ms, x.scaling.step * getattr(x, quantity), x.slot, x.interval_ms)
                    for x in rd.rows(quantity=quantity)]
            everything = list(ie.intervals(full))
            assert list(ie.intervals(rd.register(quantity=quantity))) == everything
            since, until = hs.t_ms_of(T0 + lo), hs.t_ms_of(T0 + lo + width)
            windowed = [iv for iv in ie.intervals(rd.register(since, until, quantity))
                        if since <= iv.start * 1000 < until]
            assert windowed == [iv for iv in everything if since <= iv.start * 1000 < until]
        with pytest.raises(ValueError):
            rd.register(quantity="demand")      # not an energy register
    store.close()


# -- opening ----------------------------------------------------------------------------------------------
def test_retention_zero_keeps_no_record_and_deletes_an_old_one(tmp_path, clock):
    store = hs.open_history(str(tmp_path), 35, clock=clock, log=lambda _: None)
    Readings(30.0, clock=clock, history=store).apply(reading(1, 1, clock()))
    store.close()
    assert os.path.exists(tmp_path / hs.FILE_NAME)
    (tmp_path / (hs.FILE_NAME + ".damaged-1700000000")).write_bytes(b"an old copy moved aside")
    logs = []
    assert hs.open_history(str(tmp_path), 0, clock=clock, log=logs.append) is None
    assert not any(name.startswith(hs.FILE_NAME) for name in os.listdir(tmp_path))
    assert logs and "deleted" in logs[0]


def test_a_damaged_file_is_moved_aside_and_a_new_store_started(tmp_path, clock):
    path = tmp_path / hs.FILE_NAME
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    logs = []
    store = hs.open_history(str(tmp_path), 35, clock=clock, log=logs.append)
    assert store.writer.rows == 0 and any("integrity" in line for line in logs)
    assert any(name.startswith(hs.FILE_NAME + ".damaged-") for name in os.listdir(tmp_path))
    store.close()


def test_a_newer_schema_is_refused_by_name(tmp_path, clock):
    store = make_store(tmp_path, clock)
    store.writer.conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    store.close()
    with pytest.raises(hs.HistoryError, match="schema version 99"):
        hs.open_history(str(tmp_path), 35, clock=clock, log=lambda _: None)


def test_a_version_1_store_is_upgraded_in_place_keeping_its_rows(tmp_path, clock):
    path = tmp_path / hs.FILE_NAME
    old = sqlite3.connect(path)     # the version 1 schema, as the previous release created it
    old.executescript(
        "CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
        "INSERT INTO meta VALUES ('schema', 1);"
        "CREATE TABLE scaling(id INTEGER PRIMARY KEY, multiplier INTEGER NOT NULL, divisor INTEGER NOT NULL, "
        "unit INTEGER NOT NULL, summation_formatting INTEGER NOT NULL, demand_formatting INTEGER NOT NULL, "
        "UNIQUE(multiplier, divisor, unit, summation_formatting, demand_formatting));"
        "INSERT INTO scaling VALUES (1, 3, 10000, 0, 51, 36);"
        "CREATE TABLE sample(t_ms INTEGER NOT NULL, seq INTEGER NOT NULL, slot INTEGER NOT NULL, "
        "summation INTEGER, demand INTEGER, scaling INTEGER, interval_ms INTEGER, gap TEXT, "
        "PRIMARY KEY (t_ms, seq)) WITHOUT ROWID;")
    old.execute("INSERT INTO sample VALUES (?, 1, 1, 5000, 10, 1, 7000, NULL)", (hs.t_ms_of(clock() - 60),))
    old.commit()
    old.close()
    logs = []
    store = hs.open_history(str(tmp_path), 35, clock=clock, log=logs.append)
    assert any("upgraded from schema version 1" in line for line in logs)
    Readings(30.0, clock=clock, history=store).apply(reading(2, 2, clock(), summation=5003, received=77))
    store.flush()
    with store.reading() as rd, rd.snapshot():
        before, after = rd.rows()
    assert (before.summation, before.received) == (5000, None) and (after.summation, after.received) == (5003, 77)
    assert store.maxima()[Scaling.from_message(SCALING_3_10000)] == (1500, 5003, 77)
    store.close()
    again = hs.open_history(str(tmp_path), 35, clock=clock, log=lambda _: None)   # opens as version 2
    assert again.writer.conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == 2
    again.close()


def test_the_state_directory_is_created_private(tmp_path, clock):
    state = tmp_path / "state"
    store = hs.open_history(str(state), 35, clock=clock, log=lambda _: None)
    assert (os.stat(state).st_mode & 0o777) == 0o700
    store.close()


def test_register_values_are_exact_whatever_the_scaling(tmp_path, clock):
    store = make_store(tmp_path, clock)
    r = Readings(30.0, clock=clock, history=store)
    r.apply(reading(1, 1, clock.advance(7), summation=1_000_003, scaling=SCALING_3_10000))
    r.apply(reading(2, 2, clock.advance(7), summation=300_001, scaling=SCALING_1_1000))
    store.flush()
    with store.reading() as rd, rd.snapshot():
        a, b = rd.register()
    assert a.wh == Fraction(1_000_003 * 3, 10) and b.wh == 300_001
    store.close()


def test_read_connections_are_a_small_pool_opened_when_needed(tmp_path, clock):
    store = make_store(tmp_path, clock)
    store.max_readers = 2
    assert store.readers_open() == 0                    # none at start
    def read_once():
        with store.reading() as rd:
            rd.newest_ms()

    for _ in range(5):                                  # one thread after another: one connection
        t = threading.Thread(target=read_once)
        t.start()
        t.join()
    assert store.readers_open() == 1
    held = [threading.Event() for _ in range(3)]
    got, release = [], threading.Event()

    def hold(i):
        with store.reading() as rd:
            got.append((i, rd))
            held[i].set()
            assert release.wait(30)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    assert held[0].wait(30) and held[1].wait(30)
    third = threading.Thread(target=hold, args=(2,))
    third.start()                                       # both lent: the third waits for one back
    release.set()
    for t in threads + [third]:
        t.join()
    assert held[2].is_set() and store.readers_open() == 2
    assert got[2][1] in (got[0][1], got[1][1])          # it got one of the two back, not a third
    store.close()
