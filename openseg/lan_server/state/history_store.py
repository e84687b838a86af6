"""The readings' persistent history: one SQLite file (stdlib sqlite3) in the config's `[lan] state_dir`.

Who touches it:
- one writer, the channel receiver thread (`HistoryWriter`, reached through `HistoryStore.record` and
  `flush`, which only that thread calls). Rows are queued and inserted in batches; a batch is committed
  as soon as the channel socket has nothing more to read (`channel_receiver`, its flush callback), and while datagrams keep
  coming, at least every COMMIT_EVERY_S (half a second). So a kill -9 loses at most the last second of
  readings, and usually nothing; a busy second costs two transactions, not one per reading.
- request threads, through read-only connections (mode=ro and query_only) lent from a small pool
  (`HistoryStore.reading()`, at most READERS of them, opened when first needed) for one answer at a time,
  inside one read transaction per answer (`HistoryReader.snapshot`) so that every query of an answer sees
  the same data. WAL readers never block the writer or each other. A pool, not one connection per
  worker thread: cheroot hands requests to its longest-waiting worker, so all 128 would each have opened
  one (~143 KB), although most answers (the current value, the page's status) never read history.
- the LAN process at start (`open_history`, before the receiver thread exists) and at stop (`close`,
  after it has been joined): checks, creates, prunes.

Durability: journal_mode=WAL with synchronous=FULL. With synchronous=NORMAL, the usual choice, a WAL
commit is not fsync'ed: a kill -9 loses nothing committed (the kernel has the pages), but a power cut
may roll back every transaction since the last checkpoint, which at one small commit per 7-s reading is
hours of history. FULL syncs the WAL at each commit, so a power cut also loses at most the last second.
Its cost is one fsync per commit: one per poll at the production rate, and group commit bounds it when
readings come faster (a slow fsync lets more datagrams queue, and the next batch takes them all). In
neither mode can a crash or a power cut corrupt the file: SQLite's WAL is built for exactly that. A file
damaged by something else (a failing SD card) fails `PRAGMA quick_check` at start; it is renamed aside,
logged, and a fresh store is started, so the gateway keeps serving. Only real damage (SQLITE_CORRUPT,
SQLITE_NOTADB, or a quick_check that finds something) counts: a file that cannot be opened, a read-only
or full file system says nothing about the file, which is then left where it is (`is_damage`).

A disk that refuses writes (read-only, full, I/O errors) never stops the receiver thread or loses what
it cannot write at once: the writer keeps up to BACKLOG_ROWS rows queued, reports the problem
(`HistoryWriter.problem`, shown by /api/v1/status and the page) and tries again every RETRY_EVERY_S
(history_keeper does the same for a store that cannot be opened at all). `rows` counts what the file
holds: it changes only once a transaction has committed, and is recounted after a failure.

Schema (version 2):
    scaling(id INTEGER PRIMARY KEY, multiplier, divisor, unit, summation_formatting, demand_formatting)
    sample(t_ms, seq, slot, summation, demand, scaling, interval_ms, gap, received) PRIMARY KEY (t_ms, seq),
        WITHOUT ROWID: one row per poll slot, a reading (raw counts as the meter sent them, NULL where
        the meter flagged a value invalid or, for `received` (CurrentSummationReceived, energy exported),
        does not report it; and its scaling) or a gap (its cause; NULL values). t_ms is
        the reading's time tag or the gap's due time in ms since the epoch. The table is clustered on
        time, so a range query reads consecutive pages and pruning deletes a prefix.
    meta(key PRIMARY KEY, value): the schema version.
A version 1 store (no `received` column) is upgraded in place at open: the column is added, NULL in
the rows already held, which is what they knew.

Disk use is bounded by construction:
- rows older than the retention are deleted (at start, then every PRUNE_EVERY_S; retention 0 means no
  history at all: the file is deleted at start and never created);
- one time line: an entry tagged before the newest row is not stored (counted as `behind`): the HAN's
  clock went back and the message that would have moved the older rows (`retag`) was lost, so
  storing it would put two series over the same time. A `retag` (the HAN's clock stepped) moves the
  rows tagged on the old clock by the step, replacing any rows already over their new times;
- rows are at most retention_days x MAX_ROWS_PER_DAY (one per second on average, the fastest poll the
  LAN side supports); beyond that the oldest go first. Readings tagged more than FUTURE_SLACK_S ahead
  of this machine's clock, or already older than the retention, are not stored (and are counted);
- the database never grows past `bound_bytes` (max_page_count, a hard SQLite limit; on reaching it the
  oldest 5 % are deleted and the insert retried), and the WAL is truncated to WAL_LIMIT_BYTES after
  each checkpoint.
One row takes ~37 bytes on disk at the production poll (35 days of 7-s readings: 432 000 rows, 16 MB);
`bound_bytes` allows BYTES_PER_ROW_BOUND per row of the row bound (35 days: 194 MB + the WAL).
"""
from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import quote

from ..espi.interval_energy import INTERVAL_MS, RegisterSample
from .readings import Entry, Reading
from ..espi.scaling import Scaling

SCHEMA_VERSION = 2
# The raw registers a sample row holds, in the order maxima() reports them.
QUANTITIES = ("demand", "summation", "received")
REGISTERS = ("summation", "received")     # energy registers: the 15-minute series are built on these
FILE_NAME = "history.sqlite3"
COMMIT_EVERY_S = 0.5            # the longest a received reading stays uncommitted while busy
MAX_BATCH = 2000                # rows per transaction at most
PRUNE_EVERY_S = 600.0
PRUNE_CHUNK = 20_000            # rows deleted per transaction, so the receiver never stalls long
MAX_ROWS_PER_DAY = 86_400
BYTES_PER_ROW_BOUND = 64        # measured: ~37 at 7-s polls, ~45 with 1-s polls and 64-bit counters
FUTURE_SLACK_S = 3600.0
WAL_LIMIT_BYTES = 4 * 1024 * 1024
READERS = 4                     # read connections at most: 2 CPUs gain nothing from more at once
READER_CACHE_KIB = 512          # per read connection (READERS of them: 2 MiB at most)
LOG_EVERY_S = 60.0
RETRY_EVERY_S = 30.0            # a disk that refused a write is tried again this often
BACKLOG_ROWS = 3 * 3600         # rows held in memory while the disk refuses them (3 h at 1-s polls)
ROW_BYTES_AT_MOST = 128         # a batch's new pages, for telling the size bound from a full disk

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS scaling(id INTEGER PRIMARY KEY, multiplier INTEGER NOT NULL, "
    "divisor INTEGER NOT NULL, unit INTEGER NOT NULL, summation_formatting INTEGER NOT NULL, "
    "demand_formatting INTEGER NOT NULL, UNIQUE(multiplier, divisor, unit, summation_formatting, "
    "demand_formatting))",
    "CREATE TABLE IF NOT EXISTS sample(t_ms INTEGER NOT NULL, seq INTEGER NOT NULL, slot INTEGER NOT NULL, "
    "summation INTEGER, demand INTEGER, scaling INTEGER, interval_ms INTEGER, gap TEXT, received INTEGER, "
    "PRIMARY KEY (t_ms, seq)) WITHOUT ROWID",
)
# Version 1 -> 2: the export register. ADD COLUMN only rewrites the schema, not the rows.
_UPGRADE_1_TO_2 = "ALTER TABLE sample ADD COLUMN received INTEGER"
_INSERT = "INSERT OR IGNORE INTO sample VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SAMPLE_COLUMNS = "t_ms, seq, slot, summation, demand, scaling, interval_ms, gap, received"


class HistoryError(Exception):
    """The store cannot be opened or created; the message names the file."""


def _primary(exc: sqlite3.Error) -> int | None:
    code = exc.sqlite_errorcode if isinstance(exc, sqlite3.DatabaseError) else None
    return None if code is None else code & 0xFF        # extended codes carry the primary in the low byte


def is_damage(exc: sqlite3.Error) -> bool:
    """The file itself is damaged (as opposed to unreadable, read-only, full, locked)."""
    return _primary(exc) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _file_system_full(path: str, exc: sqlite3.OperationalError) -> sqlite3.OperationalError:
    """SQLite says "database or disk is full" for both; this one is the disk, not the size bound."""
    out = sqlite3.OperationalError(f"the file system holding {path} is full")
    out.sqlite_errorcode, out.sqlite_errorname = exc.sqlite_errorcode, exc.sqlite_errorname
    return out


def describe(exc: sqlite3.Error) -> str:
    """One line for logs and /api/v1/status: SQLite's text and its error name."""
    name = exc.sqlite_errorname if isinstance(exc, sqlite3.DatabaseError) else None
    text = " ".join(str(exc).split())
    return f"{text} ({name})" if name else text


def t_ms_of(t: float) -> int:
    """Milliseconds since the epoch as iso_ms() would print them (microseconds rounded, then cut)."""
    return round(t * 1_000_000) // 1000


def store_path(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def _files(path: str) -> list[str]:
    return [path, path + "-wal", path + "-shm"]


def file_bytes(path: str) -> int:
    """What the store takes on disk: the database, its WAL and its shared-memory index."""
    size = 0
    for f in _files(path):
        try:
            size += os.path.getsize(f)
        except OSError:
            pass
    return size


@dataclass(frozen=True)
class StoreStats:
    rows: int
    bound_rows: int
    bound_bytes: int
    file_bytes: int
    retention_days: int
    skipped: int
    write_errors: int
    dropped: int
    behind: int
    moved: int          # rows moved by retag (a HAN clock step)
    replaced: int       # rows a retag replaced (they were over the same time)
    problem: str | None             # why writing fails now (None: it does not)
    queued: int                     # rows waiting in memory for the disk


class HistoryState(enum.Enum):
    OK = "ok"                       # open, writing
    FAILING = "failing"             # open and readable; writes refused, queued in memory, retried
    UNAVAILABLE = "unavailable"     # not open: served from memory, opening retried


class HistoryWriter:
    """The only connection that writes. Used by the channel receiver thread only (and by the thread
    that opens and closes the store, strictly before and after that thread runs)."""

    def __init__(self, path: str, retention_days: int, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print):
        self.path = path
        self.retention_days = retention_days
        self.bound_rows = retention_days * MAX_ROWS_PER_DAY
        self.bound_bytes = self.bound_rows * BYTES_PER_ROW_BOUND
        self._clock, self._mono, self._log = clock, monotonic, log
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._setup()
        except BaseException:
            self.conn.close()
            raise
        self._pending: list[tuple] = []
        self._pending_since: float | None = None
        self._next_prune = 0.0
        self._hold_until = float("-inf")    # after a failed write: no new attempt before this
        self.problem: str | None = None
        self.problem_since: float | None = None     # wall-clock time writing began to fail
        self.damaged = False                # the last failure was damage: history_keeper reopens
        self.skipped = self.write_errors = self.dropped = 0
        self.behind = self.moved = self.replaced = 0
        self._last_log: dict[str, float] = {}
        # Published by reference for the request threads (never mutated once published).
        self.scalings: dict[int, Scaling] = {}
        self.maxima: dict[Scaling, tuple[int, int, int]] = {}
        self._scaling_ids: dict[Scaling, int] = {}
        self._load_scalings()
        self.rows = self._count()
        self.newest_ms = self.conn.execute("SELECT max(t_ms) FROM sample").fetchone()[0]

    def _count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM sample").fetchone()[0]

    def _setup(self) -> None:
        c = self.conn
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        page = c.execute("PRAGMA page_size").fetchone()[0]
        c.execute(f"PRAGMA max_page_count={max(64, self.bound_bytes // page)}")
        c.execute("BEGIN IMMEDIATE")
        for stmt in _SCHEMA:
            c.execute(stmt)
        row = c.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            c.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] == 1:
            c.execute(_UPGRADE_1_TO_2)
            c.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION,))
            self._log(f"history: {self.path} upgraded from schema version 1 to {SCHEMA_VERSION} "
                      "(energy exported)")
        elif row[0] != SCHEMA_VERSION:
            c.execute("ROLLBACK")
            raise HistoryError(f"{self.path}: schema version {row[0]}, this version reads {SCHEMA_VERSION}")
        else:
            # A write, so that a file SQLite could open only read-only (a read-only disk) fails here and
            # is not opened at all: a process that keeps any read-only connection to it has its WAL
            # index mapped read-only, and no later connection of that process could write to it.
            c.execute("UPDATE meta SET value = value WHERE key = 'schema'")
        c.execute("COMMIT")

    def _load_scalings(self) -> None:
        ids = {}
        for sid, *fields in self.conn.execute("SELECT id, multiplier, divisor, unit, summation_formatting, "
                                               "demand_formatting FROM scaling"):
            ids[sid] = Scaling(*fields)
        self.scalings = ids
        self._scaling_ids = {s: i for i, s in ids.items()}
        maxima = {}
        for sid, dmax, smax, rmax in self.conn.execute(
                "SELECT scaling, max(abs(demand)), max(summation), max(received) FROM sample "
                "WHERE scaling IS NOT NULL GROUP BY scaling"):
            if sid in ids:
                maxima[ids[sid]] = (dmax or 0, smax or 0, rmax or 0)
        self.maxima = maxima

    # -- writing --------------------------------------------------------------------------------------
    def append(self, entry: Entry) -> None:
        try:
            self._append(entry)
        except OverflowError as exc:    # a value beyond SQLite's integers: this entry alone is lost
            self.write_errors += 1
            self.dropped += 1
            self._rate_log("error", f"history: could not store a reading: {exc}")
        except sqlite3.Error as exc:      # a new scaling could not be stored: this reading is lost
            self.dropped += 1
            self._failed(exc)

    def _append(self, entry: Entry) -> None:
        now = self._clock()
        t = entry.time
        if t > now + FUTURE_SLACK_S or t < now - self.retention_days * 86400:
            self.skipped += 1
            self._rate_log("skipped", f"history: not storing an entry tagged {t:.0f}, "
                                      f"{t - now:+.0f} s from this machine's clock")
            return
        t_ms = t_ms_of(t)
        if self.newest_ms is not None and t_ms < self.newest_ms:
            self.behind += 1
            self._rate_log("behind", f"history: not storing an entry tagged {t:.3f}, before the newest "
                                     "stored one: the HAN's clock went back")
            return
        self.newest_ms = t_ms
        if isinstance(entry, Reading):
            sid = self._scaling_id(entry.scaling)
            row = (t_ms, entry.seq, entry.slot, entry.summation, entry.demand, sid,
                   None if entry.interval_s is None else round(entry.interval_s * 1000), None, entry.received)
            self._note_maxima(entry)
        else:
            row = (t_ms, entry.seq, entry.slot, None, None, None, None, entry.cause, None)
        if not self._pending:
            self._pending_since = self._mono()
        elif len(self._pending) >= BACKLOG_ROWS:      # the disk has refused them for hours
            del self._pending[0]
            self.dropped += 1
        self._pending.append(row)
        if len(self._pending) >= MAX_BATCH or self._mono() - self._pending_since >= COMMIT_EVERY_S:
            self.flush()

    def _scaling_id(self, s: Scaling) -> int:
        sid = self._scaling_ids.get(s)
        if sid is None:
            # Its own small transaction: a scaling appears once per meter configuration.
            self.conn.execute("INSERT OR IGNORE INTO scaling(multiplier, divisor, unit, summation_formatting, "
                              "demand_formatting) VALUES (?, ?, ?, ?, ?)",
                              (s.multiplier, s.divisor, s.unit, s.summation_formatting, s.demand_formatting))
            sid = self.conn.execute("SELECT id FROM scaling WHERE multiplier = ? AND divisor = ? AND unit = ? "
                                    "AND summation_formatting = ? AND demand_formatting = ?",
                                    (s.multiplier, s.divisor, s.unit, s.summation_formatting,
                                     s.demand_formatting)).fetchone()[0]
            self._scaling_ids = {**self._scaling_ids, s: sid}
            self.scalings = {**self.scalings, sid: s}
        return sid

    def _note_maxima(self, r: Reading) -> None:
        old = self.maxima.get(r.scaling, (0, 0, 0))
        new = (max(old[0], abs(r.demand or 0)), max(old[1], r.summation or 0), max(old[2], r.received or 0))
        if new != old:
            self.maxima = {**self.maxima, r.scaling: new}

    def flush(self) -> None:
        """Commit what is queued (the receiver calls this whenever the socket is drained). After a
        failed write nothing is tried before RETRY_EVERY_S has passed; the rows stay queued."""
        if self._mono() < self._hold_until:
            return
        wrote = False
        try:
            if self._pending:
                try:
                    self._insert(self._pending)
                    wrote = True
                except OverflowError as exc:    # a value SQLite cannot hold: counted, never retried
                    self.write_errors += 1
                    self.dropped += len(self._pending)
                    self._rate_log("error", f"history: could not store {len(self._pending)} reading(s): {exc}")
                self._pending = []          # (a disk error leaves them queued: it raises past this)
            if self._mono() >= self._next_prune:
                more = self.prune()
                wrote = True
                self._next_prune = self._mono() + (1.0 if more else PRUNE_EVERY_S)
        except sqlite3.Error as exc:
            self._failed(exc)
            return
        if wrote and self.problem is not None:
            self._log(f"history: writing {self.path} again ({len(self._pending)} queued reading(s) stored); "
                      f"it had failed: {self.problem}")
            self.problem = self.problem_since = None
            self._last_log.pop("error", None)
            self.rows = self._count()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def _failed(self, exc: sqlite3.Error) -> None:
        self.write_errors += 1
        if self.problem is None:
            self.problem_since = self._clock()
        self.problem = describe(exc)
        self.damaged = is_damage(exc)

        self._hold_until = self._mono() + RETRY_EVERY_S
        self._rate_log("error", f"history: cannot write {self.path}: {self.problem}; keeping up to "
                                f"{BACKLOG_ROWS} reading(s) in memory and trying again every {RETRY_EVERY_S:g} s")

    def _insert(self, rows: list[tuple]) -> None:
        for attempt in (1, 2, 3):
            try:
                with self._transaction():
                    before = self.conn.total_changes
                    self.conn.executemany(_INSERT, rows)
                    added = self.conn.total_changes - before
                self.rows += added          # counted once committed, so `rows` is what the file holds
                return
            except sqlite3.OperationalError as exc:
                if attempt == 3 or _primary(exc) != sqlite3.SQLITE_FULL or not self._at_bound(len(rows)):
                    if _primary(exc) == sqlite3.SQLITE_FULL:
                        raise _file_system_full(self.path, exc) from exc
                    raise
                # The hard size limit: make room by dropping the oldest twentieth (and at least twice
                # what this batch needs, since freed pages are rarely full ones), then retry.
                self._rate_log("full", f"history: {self.path} reached its size bound of "
                                       f"{self.bound_bytes} bytes; deleting the oldest 5 %")
                self._delete_oldest(max(self.rows // 20, 2 * len(rows)))

    def _at_bound(self, batch_rows: int) -> bool:
        """Whether SQLITE_FULL came from max_page_count (the size bound) rather than from the file
        system: SQLite says "database or disk is full" for both. The bound it is when the batch could
        not have fitted below max_page_count."""
        c = self.conn
        page = c.execute("PRAGMA page_size").fetchone()[0]
        room = c.execute("PRAGMA max_page_count").fetchone()[0] - c.execute("PRAGMA page_count").fetchone()[0]
        return room <= batch_rows * ROW_BYTES_AT_MOST // page + 8

    @contextlib.contextmanager
    def _transaction(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            # SQLite has already rolled back after some errors (SQLITE_FULL, I/O errors).
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def retag(self, first: float, last: float, shift_s: float) -> None:
        """The HAN's clock stepped by shift_s: rows tagged first..last (on the old clock) move by it.
        Rows already over the times they move to are replaced (counted): one time line, the newest
        clock's. A copy through a temporary table, since shifting in place could collide mid-update."""
        self.flush()
        lo, hi, shift = t_ms_of(first), t_ms_of(last), round(shift_s * 1000)
        try:
            with self._transaction():
                c = self.conn
                c.execute("CREATE TEMP TABLE IF NOT EXISTS moving AS SELECT * FROM sample WHERE 0")
                c.execute("DELETE FROM moving")
                c.execute("INSERT INTO moving SELECT * FROM sample WHERE t_ms BETWEEN ? AND ?", (lo, hi))
                moved = c.execute("DELETE FROM sample WHERE t_ms BETWEEN ? AND ?", (lo, hi)).rowcount
                replaced = c.execute("DELETE FROM sample WHERE t_ms BETWEEN ? AND ?",
                                     (lo + shift, hi + shift)).rowcount
                c.execute(f"INSERT INTO sample ({_SAMPLE_COLUMNS}) SELECT t_ms + ?, "
                          f"{_SAMPLE_COLUMNS.partition(', ')[2]} FROM moving", (shift,))
                self.newest_ms = c.execute("SELECT max(t_ms) FROM sample").fetchone()[0]
        except (sqlite3.Error, OverflowError) as exc:
            self.write_errors += 1
            self._rate_log("error", f"history: could not move the rows of a clock step: {exc}")
            return
        self.rows -= replaced
        self.moved += moved
        self.replaced += replaced
        self._log(f"history: the HAN's clock stepped by {shift_s:+.3f} s; moved {moved} row(s)"
                  + (f", replacing {replaced} already there" if replaced else ""))

    # -- pruning --------------------------------------------------------------------------------------
    def prune(self) -> bool:
        """Delete what is past the retention, then what is over the row bound; at most PRUNE_CHUNK
        rows per call. True when more remains to delete."""
        cutoff = t_ms_of(self._clock() - self.retention_days * 86400)
        with self._transaction():
            edge = self.conn.execute("SELECT t_ms FROM sample WHERE t_ms < ? ORDER BY t_ms LIMIT 1 OFFSET ?",
                                     (cutoff, PRUNE_CHUNK)).fetchone()
            n = self.conn.execute("DELETE FROM sample WHERE t_ms < ?", (edge[0] if edge else cutoff,)).rowcount
        self.rows -= n
        more = edge is not None
        over = self.rows - self.bound_rows
        if over > 0:
            self._delete_oldest(min(over, PRUNE_CHUNK))
            more = more or over > PRUNE_CHUNK
        if n > PRUNE_CHUNK // 4:
            self._log(f"history: deleted {n} reading(s) older than {self.retention_days} days")
        return more

    def _delete_oldest(self, count: int) -> None:
        with self._transaction():
            n = self.conn.execute(
                "DELETE FROM sample WHERE (t_ms, seq) IN (SELECT t_ms, seq FROM sample ORDER BY t_ms, seq "
                "LIMIT ?)", (count,)).rowcount
        self.rows -= n

    def _rate_log(self, kind: str, text: str) -> None:
        now = self._mono()
        if now - self._last_log.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[kind] = now
            self._log(text)

    def close(self) -> None:
        self._next_prune = float("inf")
        self._hold_until = float("-inf")        # one last try, whatever the retry schedule says
        self.flush()
        if self._pending:
            self.dropped += len(self._pending)
            self._log(f"history: {len(self._pending)} reading(s) could not be written before stopping: "
                      f"{self.problem}")
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.conn.close()


class _StoredTimes:
    """The stored columns in ms as the readings give them, in seconds."""
    __slots__ = ()
    t_ms: int
    interval_ms: int | None

    @property
    def time(self) -> float:
        return self.t_ms / 1000

    @property
    def interval_s(self) -> float | None:
        return None if self.interval_ms is None else self.interval_ms / 1000


@dataclass(frozen=True, slots=True)
class Row(_StoredTimes):
    """One stored slot: a reading (gap None) or a gap (values None)."""
    t_ms: int
    seq: int
    slot: int
    summation: int | None
    demand: int | None
    scaling: Scaling | None
    interval_ms: int | None
    gap: str | None
    received: int | None

    @property
    def cause(self) -> str | None:
        """As readings.Gap names it (None for a reading)."""
        return self.gap


@dataclass(frozen=True, slots=True)
class StoredReading(_StoredTimes):
    """One stored reading that carries the quantity asked for (HistoryReader.readings): a reading,
    so its scaling is known (espi.inputs.Sample)."""
    t_ms: int
    slot: int
    summation: int | None
    demand: int | None
    scaling: Scaling
    interval_ms: int | None
    received: int | None


class HistoryReader:
    """One request thread's read-only view. Queries take ms bounds: since inclusive, until exclusive."""

    def __init__(self, store: "HistoryStore"):
        self.store = store
        uri = f"file:{quote(store.path)}?mode=ro"
        # Lent to one request thread at a time (HistoryStore.reading), never used by two at once.
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA query_only=ON")
        self.conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
        self._depth = 0

    @contextlib.contextmanager
    def snapshot(self) -> Iterator["HistoryReader"]:
        """One read transaction: every query inside sees the same committed rows."""
        if self._depth == 0:
            self.conn.execute("BEGIN")
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.conn.execute("COMMIT")

    def _scaling(self, sid: int) -> Scaling:
        s = self.store.known_scaling(sid)
        if s is None:       # committed by the writer after this thread last looked: read it
            row = self.conn.execute("SELECT multiplier, divisor, unit, summation_formatting, demand_formatting "
                                    "FROM scaling WHERE id = ?", (sid,)).fetchone()
            s = Scaling(*row)
        return s

    def _select(self, since_ms: int | None, until_ms: int | None, quantity: str | None) -> Iterator[tuple]:
        """The sample table's columns in time order; with `quantity`, only the readings carrying it."""
        where, args = self._window(since_ms, until_ms)
        if quantity is not None:
            if quantity not in QUANTITIES:
                raise ValueError(quantity)
            where.append(f"{quantity} IS NOT NULL")
        sql = f"SELECT {_SAMPLE_COLUMNS} FROM sample"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.conn.execute(sql + " ORDER BY t_ms, seq", args)

    def _scaling_of(self, sid: int, cache: dict[int, Scaling]) -> Scaling:
        scaling = cache.get(sid)
        if scaling is None:
            scaling = cache[sid] = self._scaling(sid)
        return scaling

    def rows(self, since_ms: int | None = None, until_ms: int | None = None,
             quantity: str | None = None) -> Iterator[Row]:
        """Readings and gaps in time order; with `quantity` ("demand", "summation" or "received"),
        only the readings that carry it."""
        cache: dict[int, Scaling] = {}
        for t, seq, slot, summation, demand, sid, interval_ms, gap, received in self._select(
                since_ms, until_ms, quantity):
            scaling = None if sid is None else self._scaling_of(sid, cache)
            yield Row(t, seq, slot, summation, demand, scaling, interval_ms, gap, received)

    def readings(self, since_ms: int | None, until_ms: int | None, quantity: str) -> Iterator[StoredReading]:
        """The readings that carry `quantity`, in time order: every one has its scaling (only a gap
        row has none, and a gap carries no quantity)."""
        cache: dict[int, Scaling] = {}
        for t, _seq, slot, summation, demand, sid, interval_ms, _gap, received in self._select(
                since_ms, until_ms, quantity):
            yield StoredReading(t, slot, summation, demand, self._scaling_of(sid, cache), interval_ms, received)

    @staticmethod
    def _window(since_ms, until_ms) -> tuple[list[str], list[int]]:
        where, args = [], []
        if since_ms is not None:
            where.append("t_ms >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("t_ms < ?")
            args.append(until_ms)
        return where, args

    def register(self, since_ms: int | None = None, until_ms: int | None = None,
                 quantity: str = "summation") -> list[RegisterSample]:
        """The register samples `interval_energy.intervals` needs for every interval that starts in
        [since, until): the first and last sample of each 15-minute bucket from `since` to the end of
        the last such interval (the reduction interval_energy's docstring describes, done by SQLite), plus the
        sample just before and the one just after, which bracket the first and the last boundary.
        `quantity` names the register: "summation" (energy imported) or "received" (exported); each
        is its own series, built from the readings that carry it."""
        if quantity not in REGISTERS:
            raise ValueError(quantity)
        if until_ms is not None:
            until_ms = -(-until_ms // INTERVAL_MS) * INTERVAL_MS
        where, args = self._window(since_ms, until_ms)
        cond = " AND ".join([f"{quantity} IS NOT NULL"] + where)
        cols = f"t_ms, slot, {quantity}, scaling, interval_ms"
        picked: dict[int, tuple] = {}
        # SQLite takes the bare columns of a min()/max() aggregate from the row holding the extreme.
        for agg in ("min", "max"):
            for t, slot, value, sid, interval_ms in self.conn.execute(
                    f"SELECT {agg}(t_ms), slot, {quantity}, scaling, interval_ms FROM sample WHERE {cond} "
                    f"GROUP BY t_ms / {INTERVAL_MS}", args):
                picked[t] = (t, slot, value, sid, interval_ms)
        if since_ms is not None:
            row = self.conn.execute(f"SELECT {cols} FROM sample WHERE {quantity} IS NOT NULL AND t_ms < ? "
                                    "ORDER BY t_ms DESC LIMIT 1", (since_ms,)).fetchone()
            if row:
                picked[row[0]] = row
        if until_ms is not None:
            row = self.conn.execute(f"SELECT {cols} FROM sample WHERE {quantity} IS NOT NULL AND t_ms >= ? "
                                    "ORDER BY t_ms LIMIT 1", (until_ms,)).fetchone()
            if row:
                picked[row[0]] = row
        out = []
        for t in sorted(picked):
            _, slot, value, sid, interval_ms = picked[t]
            out.append(RegisterSample(t, self._scaling(sid).step * value, slot, interval_ms))
        return out

    def newest_ms(self, since_ms: int | None = None, until_ms: int | None = None) -> int | None:
        where, args = self._window(since_ms, until_ms)
        sql = "SELECT max(t_ms) FROM sample" + (" WHERE " + " AND ".join(where) if where else "")
        return self.conn.execute(sql, args).fetchone()[0]

    def oldest_ms(self) -> int | None:
        return self.conn.execute("SELECT min(t_ms) FROM sample").fetchone()[0]

    def nth_hour_ms(self, since_ms: int | None, until_ms: int | None, quantity: str, n: int) -> int | None:
        """The start of the n-th (from 0) UTC hour holding a reading with `quantity` in the window:
        where a GData start-index lands, found by SQLite without building the hours skipped."""
        if quantity not in QUANTITIES:
            raise ValueError(quantity)
        where, args = self._window(since_ms, until_ms)
        where.append(f"{quantity} IS NOT NULL")
        row = self.conn.execute(f"SELECT DISTINCT t_ms / 3600000 FROM sample WHERE {' AND '.join(where)} "
                                "ORDER BY 1 LIMIT 1 OFFSET ?", args + [n]).fetchone()
        return None if row is None else row[0] * 3_600_000

    def close(self) -> None:
        self.conn.close()


class HistoryStore:
    """The store as the rest of the LAN process sees it: `record`/`flush` for the receiver thread,
    `reading()` for request threads, `maxima()` and `stats()` for anyone. It is a readings.History
    itself (a test hands Readings a bare store); the process hands it one through a HistoryKeeper."""
    # What stores closed before this one lost or failed to write: none (a HistoryKeeper counts those).
    lost = write_errors = 0

    def __init__(self, path: str, retention_days: int, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print):
        if retention_days < 1:
            raise ValueError("a store needs a retention of at least one day")
        self.path = path
        self.retention_days = retention_days
        self.writer = HistoryWriter(path, retention_days, clock=clock, monotonic=monotonic, log=log)
        self._readers: list[HistoryReader] = []         # every one opened
        self._idle: list[HistoryReader] = []            # not lent now; the last returned is lent first
        self._returned = threading.Condition()
        self.max_readers = READERS

    # -- the receiver thread ----------------------------------------------------------------------------
    def record(self, entry: Entry) -> None:
        self.writer.append(entry)

    def retag(self, first: float, last: float, shift_s: float) -> None:
        self.writer.retag(first, last, shift_s)

    def last_slot(self) -> tuple[int, float, float | None] | None:
        """The newest row's (slot, time, poll interval): where a restarted LAN process takes up the
        count of slots (readings.Readings). Called before the receiver thread starts."""
        row = self.writer.conn.execute("SELECT slot, t_ms, interval_ms FROM sample ORDER BY t_ms DESC, seq DESC "
                                       "LIMIT 1").fetchone()
        if row is None:
            return None
        return row[0], row[1] / 1000, None if row[2] is None else row[2] / 1000

    def flush(self) -> None:
        self.writer.flush()

    # -- request threads -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def reading(self) -> Iterator[HistoryReader]:
        """A read connection for the caller alone until the block ends; waits while all are lent."""
        with self._returned:
            while not self._idle and len(self._readers) >= self.max_readers:
                self._returned.wait()
            if self._idle:
                r = self._idle.pop()
            else:
                r = HistoryReader(self)
                self._readers.append(r)
        try:
            yield r
        finally:
            with self._returned:
                self._idle.append(r)
                self._returned.notify()

    def known_scaling(self, sid: int) -> Scaling | None:
        """The scaling with id `sid` as the writer last knew it; None: committed since (read it)."""
        return self.writer.scalings.get(sid)

    def open_store(self) -> HistoryStore:
        """The store answers read from (History.open_store): this one."""
        return self

    @property
    def queued(self) -> int:
        """Rows waiting for the writer's next commit."""
        return self.writer.queued

    def health(self) -> tuple[HistoryState, str | None, float | None]:
        """(OK or FAILING, the reason writes fail, since when)."""
        w = self.writer
        return (HistoryState.OK, None, None) if w.problem is None else (HistoryState.FAILING, w.problem,
                                                                         w.problem_since)

    def readers_open(self) -> int:
        with self._returned:
            return len(self._readers)

    def maxima(self) -> dict[Scaling, tuple[int, int, int]]:
        """Per scaling seen: (largest |demand|, largest summation, largest received) in raw counts,
        in the order of QUANTITIES."""
        return self.writer.maxima

    def stats(self) -> StoreStats:
        w = self.writer
        return StoreStats(rows=w.rows, bound_rows=w.bound_rows, bound_bytes=w.bound_bytes,
                          file_bytes=file_bytes(self.path),
                          retention_days=self.retention_days, skipped=w.skipped, write_errors=w.write_errors,
                          dropped=w.dropped, behind=w.behind, moved=w.moved, replaced=w.replaced,
                          problem=w.problem, queued=w.queued)

    def close(self) -> None:
        """After the receiver thread has stopped: commit what is left, close every connection."""
        self.writer.close()
        with self._returned:
            readers, self._readers, self._idle = self._readers, [], []
        for r in readers:
            r.close()


def open_history(state_dir: str, retention_days: int, *, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> HistoryStore | None:
    """The store for `[lan] state_dir` and `history_retention_days`, checked and pruned, or None when
    the retention is 0: then any store left from before is deleted, since 0 means keep no record.
    Raises HistoryError (one line naming the file) when the disk does not allow it."""
    path = store_path(state_dir)
    if retention_days == 0:
        _delete_all(state_dir, path, log)
        return None
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise HistoryError(f"{state_dir}: cannot create the state directory: {exc.strerror}") from None
    if os.path.exists(path) and (damage := _damage(path)):
        aside = f"{path}.damaged-{int(clock())}"
        try:
            for f in _files(path):
                if os.path.exists(f):
                    os.replace(f, aside + f[len(path):])
        except OSError as exc:
            raise HistoryError(f"{path} is damaged ({damage}) and cannot be moved aside: {exc.strerror}"
                               f"{_disk_note(state_dir)}") from None
        log(f"history: {path} failed its integrity check ({damage}); moved it to {aside} and started a new one")
    try:
        store = HistoryStore(path, retention_days, clock=clock, monotonic=monotonic, log=log)
    except sqlite3.Error as exc:
        raise HistoryError(f"{path}: cannot open the history store: {describe(exc)}{_disk_note(state_dir)}") \
            from None
    try:
        while store.writer.prune():
            pass
    except sqlite3.Error as exc:
        # Readable but not writable (a read-only file system): serve what it holds; the writer
        # reports the problem and tries again on its schedule.
        store.writer._failed(exc)
    return store


def _disk_note(directory: str) -> str:
    """What the file system says, since SQLite's "unable to open database file" does not."""
    try:
        fs = os.statvfs(directory)
    except OSError as exc:
        return f"; {directory}: {exc.strerror}"
    if fs.f_flag & os.ST_RDONLY:
        return f"; {directory} is on a read-only file system"
    if fs.f_bavail == 0:
        return f"; the file system holding {directory} is full"
    return ""


def _delete_all(state_dir: str, path: str, log: Callable[[str], None]) -> None:
    try:
        names = os.listdir(state_dir)
    except OSError:             # no state directory: nothing to delete (or nothing this process may see)
        names = []
    aside = [os.path.join(state_dir, n) for n in names if n.startswith(FILE_NAME + ".damaged-")]
    removed = []
    for f in _files(path) + aside:
        try:
            os.unlink(f)
            removed.append(f)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log(f"history: retention is 0 days but {f} cannot be deleted: {exc.strerror}")
    if removed:
        log(f"history: retention is 0 days; deleted {path}")


def _damage(path: str) -> str | None:
    """What is wrong with the file when it is damaged; None when it is sound. A file that cannot be
    checked (not openable, read-only directory without its -shm, an I/O error) is not called damaged:
    HistoryError, and it stays where it is."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            return describe(exc)
        raise HistoryError(f"{path}: cannot check the history store: {describe(exc)}"
                           f"{_disk_note(os.path.dirname(path))}") from None
    return None if result == "ok" else " ".join(str(result).split())
