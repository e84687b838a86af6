"""What the LAN process knows about the meter: the latest values, a bounded recent history, the HAN
side's last status report, and (when history is kept) the persistent store every reading and gap also
goes to. The receiver thread writes it, request threads read it.

One lock guards everything here. Writers hold it for a few attribute updates; readers hold it only
to copy references into an immutable `Snapshot` (the history deque is copied as a tuple, a C-level
copy), and build their answers after releasing it, so a slow client never delays the receiver.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol, Union

from shared_schema.messages import LOST_CAUSES

from .scaling import Scaling


@dataclass(frozen=True, slots=True)
class Reading:
    seq: int
    slot: int
    due: float
    time: float                  # the value's time tag: when the meter's reply arrived (HAN clock)
    rtt_s: float
    summation: int | None        # raw counts; None when the meter flagged the value invalid
    demand: int | None
    scaling: Scaling
    interval_s: float | None     # the poll interval in force when it was taken (see Readings.apply)
    received: int | None = None  # raw CurrentSummationReceived (energy exported); None: not reported


@dataclass(frozen=True, slots=True)
class Gap:
    seq: int
    slot: int
    due: float
    cause: str

    @property
    def time(self) -> float:
        return self.due


Entry = Union[Reading, Gap]


@dataclass(frozen=True, slots=True)
class Meter:
    ieee: str
    nwk: int
    endpoint: int


@dataclass(frozen=True, slots=True)
class HanReport:
    """The last `status` message, as the HAN side sent it, plus when it arrived here."""
    state: str
    detail: str
    meter: Meter | None
    radio_ieee: str | None
    queries_total: int
    queries_lost: int
    lost_by_cause: tuple[tuple[str, int], ...]
    frames_bad: int
    guard_refused: int
    channel_dropped: int
    started: float
    poll_interval_s: float
    sent: float
    received: float             # LAN clock


@dataclass(frozen=True, slots=True)
class QueryCounts:
    """The HAN's query counters as of now: its last status report plus what the readings and gaps
    received since then add (each is one query's outcome; a gap for a slot that was never queried,
    `late` or `not-polling`, adds nothing). The HAN reports every 30 s, so without this the page would
    show "0 queries" beside readings that are arriving."""
    total: int
    lost: int
    lost_by_cause: tuple[tuple[str, int], ...]

    def after(self, cause: str | None) -> "QueryCounts":
        if cause is None:
            return QueryCounts(self.total + 1, self.lost, self.lost_by_cause)
        if cause not in LOST_CAUSES:
            return self
        return QueryCounts(self.total + 1, self.lost + 1,
                           tuple((c, n + (c == cause)) for c, n in self.lost_by_cause))


@dataclass(frozen=True)
class Snapshot:
    now: float
    created: float
    stale_after_s: float
    silent_after_s: float
    history_s: float
    latest: Reading | None             # the most recent reading, whatever it carries
    latest_demand: Reading | None      # the most recent reading that carries a demand value
    latest_summation: Reading | None
    latest_received: Reading | None    # the most recent reading that carries an export value
    history: tuple[Entry, ...]         # readings and gaps in time order, within history_s of now
    report: HanReport | None
    queries: QueryCounts | None        # the report's counters brought up to date (QueryCounts)
    last_message_at: float | None      # LAN clock, any kind of message
    scaling_since: float | None        # time tag of the first reading with the current scaling

    def latest_with(self, quantity: str) -> Reading | None:
        """The most recent reading carrying `quantity` ("demand", "summation" or "received")."""
        return {"demand": self.latest_demand, "summation": self.latest_summation,
                "received": self.latest_received}[quantity]

    @property
    def poll_interval_s(self) -> float | None:
        if self.report is not None:
            return self.report.poll_interval_s
        return self.latest.interval_s if self.latest is not None else None


class Recorder(Protocol):
    """Where every reading and gap also goes (history_store.HistoryStore), in the receiver thread."""
    def record(self, entry: "Entry") -> None: ...


class Readings:
    def __init__(self, stale_after_s: float, history_s: float = 3 * 3600.0,
                 clock: Callable[[], float] = time.time, silent_after_s: float | None = None,
                 history: Recorder | None = None):
        if not stale_after_s > 0 or not history_s > 0:
            raise ValueError("stale_after_s and history_s must be positive")
        self.stale_after_s = float(stale_after_s)
        self.history_s = float(history_s)
        # A live HAN sends a reading or gap every poll and a status every few tens of seconds, so
        # twice the staleness limit without any message means it is not running (or cannot send).
        self.silent_after_s = float(silent_after_s if silent_after_s is not None else 2 * stale_after_s)
        self._clock = clock
        # The persistent store (None: history is off, or a test without one). Request threads read it
        # through this attribute too, so the answers need nothing but this object.
        self.history = history
        self.created = clock()
        self._lock = threading.Lock()
        # One entry per poll slot (a reading or a gap); at the fastest supported poll (1 s) this
        # holds history_s seconds, at slower polls the time pruning is what bounds it.
        self.max_entries = max(1, math.ceil(self.history_s))
        self._history: deque[Entry] = deque(maxlen=self.max_entries)
        self._latest: Reading | None = None
        self._latest_demand: Reading | None = None
        self._latest_summation: Reading | None = None
        self._latest_received: Reading | None = None
        self._report: HanReport | None = None
        self._queries: QueryCounts | None = None
        self._last_message_at: float | None = None
        self._scaling_since: float | None = None

    # -- writer (the channel receiver thread) ---------------------------------------------------
    def apply(self, msg: dict) -> None:
        """Take one message that `shared_schema.messages.decode` has already validated."""
        now = self._clock()
        kind = msg["kind"]
        entry: Entry | None = None
        with self._lock:
            self._last_message_at = now
            if kind == "status":
                self._report = _report(msg, now)
                self._queries = QueryCounts(self._report.queries_total, self._report.queries_lost,
                                            self._report.lost_by_cause)
            elif kind == "reading":
                reading = Reading(
                    seq=msg["seq"], slot=msg["slot"], due=float(msg["due"]), time=float(msg["time"]),
                    rtt_s=float(msg["rtt_s"]), summation=msg.get("summation"), demand=msg.get("demand"),
                    scaling=Scaling.from_message(msg["scaling"]), interval_s=self._interval_for(msg),
                    received=msg.get("received"))
                if self._latest is None or self._latest.scaling != reading.scaling:
                    self._scaling_since = reading.time
                self._latest = reading
                if reading.demand is not None:
                    self._latest_demand = reading
                if reading.summation is not None:
                    self._latest_summation = reading
                if reading.received is not None:
                    self._latest_received = reading
                self._insert(reading)
                entry = reading
                if self._queries is not None:
                    self._queries = self._queries.after(None)
            elif kind == "gap":
                entry = Gap(seq=msg["seq"], slot=msg["slot"], due=float(msg["due"]), cause=msg["cause"])
                self._insert(entry)
                if self._queries is not None:
                    self._queries = self._queries.after(entry.cause)
            self._prune(now)
        # Outside the lock: a slow disk must never hold up a request thread's snapshot.
        if entry is not None and self.history is not None:
            self.history.record(entry)

    def _interval_for(self, msg: dict) -> float | None:
        """The poll interval behind a reading: the HAN's own report when there is one; before the
        first status arrives, the spacing of the slots since the previous reading of the same run."""
        if self._report is not None:
            return self._report.poll_interval_s
        prev = self._latest
        if prev is not None and msg["slot"] > prev.slot and msg["due"] > prev.due:
            return (msg["due"] - prev.due) / (msg["slot"] - prev.slot)
        return None

    def _insert(self, entry: Entry) -> None:
        history = self._history
        if not history or history[-1].time <= entry.time:
            history.append(entry)
            return
        # Only a wall-clock step backwards gets here; keep time order so readers never sort.
        if len(history) == history.maxlen:
            history.popleft()
        keys = [e.time for e in history]
        history.insert(bisect.bisect_right(keys, entry.time), entry)

    def _prune(self, now: float) -> None:
        horizon = now - self.history_s
        history = self._history
        while history and history[0].time < horizon:
            history.popleft()

    # -- readers (request threads) --------------------------------------------------------------
    def snapshot(self, history: bool = True) -> Snapshot:
        now = self._clock()
        with self._lock:
            self._prune(now)
            entries = tuple(self._history) if history else ()
            return Snapshot(
                now=now, created=self.created, stale_after_s=self.stale_after_s,
                silent_after_s=self.silent_after_s, history_s=self.history_s,
                latest=self._latest, latest_demand=self._latest_demand,
                latest_summation=self._latest_summation, latest_received=self._latest_received,
                history=entries, report=self._report, queries=self._queries,
                last_message_at=self._last_message_at, scaling_since=self._scaling_since)

    def latest_of(self, quantity: str) -> Reading | None:
        """Snapshot.latest_with without the cost of a Snapshot: the current-value answers' one read."""
        with self._lock:
            return {"demand": self._latest_demand, "summation": self._latest_summation,
                    "received": self._latest_received}[quantity]

    def __len__(self) -> int:
        with self._lock:
            return len(self._history)


def _report(msg: dict, received: float) -> HanReport:
    meter = msg.get("meter")
    return HanReport(
        state=msg["state"], detail=msg["detail"],
        meter=Meter(meter["ieee"], meter["nwk"], meter["endpoint"]) if meter else None,
        radio_ieee=msg.get("radio_ieee"), queries_total=msg["queries_total"],
        queries_lost=msg["queries_lost"], lost_by_cause=tuple(sorted(msg["lost_by_cause"].items())),
        frames_bad=msg["frames_bad"], guard_refused=msg["guard_refused"],
        channel_dropped=msg["channel_dropped"], started=float(msg["started"]),
        poll_interval_s=float(msg["poll_interval_s"]), sent=float(msg["sent"]), received=received)


def data_status(snap: Snapshot) -> str:
    """`ok`, `stale` or `no-data`, as /api/v1/current reports it."""
    if snap.latest is None:
        return "no-data"
    return "stale" if snap.now - snap.latest.time > snap.stale_after_s else "ok"
