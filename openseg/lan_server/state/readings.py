"""What the LAN process knows about the meter: the latest values, a bounded recent history, the HAN
side's last status report, and (when history is kept) the persistent store every reading and gap also
goes to. The receiver thread writes it, request threads read it.

Besides storing, it watches what the messages say about the world: slots that never arrived (the
channel lost them while the LAN side was stalled) become gap records with cause "channel-lost", so the
history counts every slot; a HAN `clock` message moves what was tagged on a stepped clock; a summation
register that moves further than the service can draw (interval_energy.plausible_rise), or a new meter
identity in a status report, is counted and kept as the last meter event for the status and the page.

One lock guards everything here. Writers hold it for a few attribute updates; readers hold it only
to copy references into an immutable `Snapshot` (the recent window's columns are copied at C level,
and turned into entries after the lock is released), and build their answers after releasing it, so a
slow client never delays the receiver. `latest_of`, one reference, reads without it.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from openseg.shared_schema import messages
from openseg.shared_schema.messages import LOST_CAUSES, Kind

from ..espi.interval_energy import DEFAULT_SERVICE_W, plausible_rise
from ..espi.scaling import Scaling, exact
from .entries import CHANNEL_LOST, Entry, Gap, Reading
from .recent_window import RecentWindow

if TYPE_CHECKING:       # history_store imports this module
    from .history_store import HistoryState, HistoryStore

REGISTER_NAMES = {"summation": "delivered", "received": "received"}


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
    received_mono: float        # LAN monotonic clock, for the HAN's uptime
    uptime_s: float | None
    clock_steps: int | None
    clock_last_step_s: float | None
    clock_plausible: bool | None
    clock_held: int | None
    clock_held_dropped: int | None


@dataclass(frozen=True, slots=True)
class MeterEvent:
    """The meter changed: a new identity, or a register jump no service could draw."""
    time: float
    detail: str


@dataclass(frozen=True, slots=True)
class Observed:
    """Counters of what the messages revealed (readings.py module docstring)."""
    meter_changes: int = 0          # a status report named another meter
    register_breaks: int = 0        # the summation register moved beyond the plausibility bound
    meter_event: MeterEvent | None = None
    channel_lost: int = 0           # slots recorded as "channel-lost"
    clock_moves: int = 0            # HAN clock messages applied
    clock_wrong: bool = False       # the HAN reported an implausible clock or a step at some point


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
    now_mono: float
    uptime_s: float                    # of this Readings, i.e. of the LAN process (monotonic)
    power_bound_w: float               # the plausibility bound: service size, or the largest demand seen
    observed: Observed

    def latest_with(self, quantity: str) -> Reading | None:
        """The most recent reading carrying `quantity` ("demand", "summation" or "received")."""
        return {"demand": self.latest_demand, "summation": self.latest_summation,
                "received": self.latest_received}[quantity]

    @property
    def poll_interval_s(self) -> float | None:
        if self.report is not None:
            return self.report.poll_interval_s
        return self.latest.interval_s if self.latest is not None else None


class History(Protocol):
    """The history seam: history_keeper.HistoryKeeper in the process (a bare history_store.HistoryStore in
    some tests). The receiver thread writes through the first group (Readings, and the receiver's
    flush); request threads read through the second (history_source, web_resources)."""
    def record(self, entry: "Entry") -> None: ...
    def retag(self, first: float, last: float, shift_s: float) -> None: ...
    def maxima(self) -> dict[Scaling, tuple[int, int, int]]: ...
    def last_slot(self) -> tuple[int, float, float | None] | None: ...
    def flush(self) -> None: ...

    retention_days: int
    path: str                       # the store's file
    lost: int                       # counted by stores closed since (a damaged file)
    write_errors: int               # likewise
    @property
    def queued(self) -> int: ...     # entries not in the file yet

    def open_store(self) -> HistoryStore | None: ...   # what answers read now; None: from memory
    def health(self) -> tuple[HistoryState, str | None, float | None]: ...


class Readings:
    def __init__(self, stale_after_s: float, history_s: float = 3 * 3600.0,
                 clock: Callable[[], float] = time.time, silent_after_s: float | None = None,
                 history: History | None = None, service_max_w: float = DEFAULT_SERVICE_W,
                 monotonic: Callable[[], float] = time.monotonic, poll_interval_s: float = 1.0):
        if not stale_after_s > 0 or not history_s > 0 or not poll_interval_s > 0:
            raise ValueError("stale_after_s, history_s and poll_interval_s must be positive")
        self.stale_after_s = float(stale_after_s)
        self.history_s = float(history_s)
        # A live HAN sends a reading or gap every poll and a status every few tens of seconds, so
        # twice the staleness limit without any message means it is not running (or cannot send).
        self.silent_after_s = float(silent_after_s if silent_after_s is not None else 2 * stale_after_s)
        self._clock = clock
        self._mono = monotonic
        self.created_mono = monotonic()
        self.service_max_w = float(service_max_w)
        # The largest demand seen raises the bound (a service larger than configured); the store
        # remembers it across restarts.
        self._largest_demand_w = max((abs(float(exact(m[0], sc))) for sc, m in history.maxima().items()),
                                     default=0.0) if history is not None else 0.0
        self._registers: dict[str, tuple[float, float]] = {}     # last register value (Wh), its time
        # The last slot recorded: (slot, due time, poll interval if known); after a restart, the store's.
        self._slot_pos = history.last_slot() if history is not None else None
        self._observed = Observed()
        # The persistent store (None: history is off, or a test without one). Request threads read it
        # through this attribute too, so the answers need nothing but this object.
        self.history = history
        self.created = clock()
        self._lock = threading.Lock()
        # One entry per poll slot (a reading or a gap): history_s seconds at the configured poll
        # (the HAN reads the same file). Should the HAN poll faster, the count bounds the window and it
        # holds less time; at slower polls the time pruning is what bounds it. Allocated whole now
        # (recent_window.py says why).
        self.max_entries = max(1, math.ceil(self.history_s / poll_interval_s))
        self._history = RecentWindow(self.max_entries)
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
        """Take one message that `openseg.shared_schema.messages.decode` has already validated."""
        now = self._clock()
        kind = msg["kind"]
        entries: list[Entry] = []
        with self._lock:
            self._last_message_at = now
            if kind == Kind.STATUS:
                report = _report(msg, now, self._mono())
                self._note_identity(report)
                self._report = report
                self._queries = QueryCounts(report.queries_total, report.queries_lost, report.lost_by_cause)
            elif kind == Kind.READING:
                scaling = Scaling.from_message(msg["scaling"])
                if self._latest is not None and self._latest.scaling == scaling:
                    # The window holds thousands of readings; one Scaling for all of them, not one
                    # copy each (70 bytes and its unit string: a fifth of a reading's memory).
                    scaling = self._latest.scaling
                reading = Reading(
                    seq=msg["seq"], slot=msg["slot"], due=float(msg["due"]), time=float(msg["time"]),
                    rtt_s=float(msg["rtt_s"]), summation=msg.get("summation"), demand=msg.get("demand"),
                    scaling=scaling, interval_s=self._interval_for(msg), received=msg.get("received"))
                self._note_registers(reading)
                if self._latest is None or self._latest.scaling != reading.scaling:
                    self._scaling_since = reading.time
                self._latest = reading
                if reading.demand is not None:
                    self._latest_demand = reading
                if reading.summation is not None:
                    self._latest_summation = reading
                if reading.received is not None:
                    self._latest_received = reading
                entries = self._lost_before(reading) + [reading]
                if self._queries is not None:
                    self._queries = self._queries.after(None)
            elif kind == Kind.GAP:
                gaps = [Gap(seq=msg["seq"], slot=slot, due=float(due), cause=msg["cause"])
                        for slot, due in messages.gap_slots(msg)]
                entries = self._lost_before(gaps[0]) + gaps
                for g in gaps:
                    if self._queries is not None:
                        self._queries = self._queries.after(g.cause)
            elif kind == Kind.CLOCK:
                self._move(msg["from"], msg["to"], msg["shift_s"])
            for e in entries:
                self._insert(e)
            if entries:
                self._slot_pos = self._position_after(entries[-1])
            self._prune(now)
        # Outside the lock: a slow disk must never hold up a request thread's snapshot.
        if self.history is not None:
            if kind == Kind.CLOCK:
                self.history.retag(msg["from"], msg["to"], msg["shift_s"])
            for e in entries:
                self.history.record(e)

    # -- what the messages reveal (under the lock) ------------------------------------------------
    def _observe(self, **changes) -> None:
        self._observed = dataclasses.replace(self._observed, **changes)

    def _lost_before(self, first: Entry) -> list[Gap]:
        """Gap records for the slots between the last one recorded and `first` that never arrived
        (their messages were lost on the channel). Only within one HAN run on one clock base, where
        the due times say exactly where the missing slots lie; otherwise nothing can be placed."""
        pos = self._slot_pos
        if pos is None or first.slot <= pos[0] + 1:
            return []
        interval = self._report.poll_interval_s if self._report is not None else pos[2]
        if interval is None:
            return []
        missing = first.slot - pos[0] - 1
        if missing > messages.MAX_GAP_RUN or abs(first.due - pos[1] - (first.slot - pos[0]) * interval) > interval / 2:
            return []
        self._observe(channel_lost=self._observed.channel_lost + missing)
        return [Gap(seq=first.seq, slot=pos[0] + i, due=pos[1] + i * interval, cause=CHANNEL_LOST)
                for i in range(1, missing + 1)]

    def _position_after(self, last: Entry) -> tuple[int, float, float | None]:
        if self._report is not None:
            interval = self._report.poll_interval_s
        elif isinstance(last, Reading) and last.interval_s is not None:
            interval = last.interval_s
        else:
            interval = self._slot_pos[2] if self._slot_pos is not None else None
        return last.slot, last.due, interval

    def power_bound_w(self) -> float:
        return max(self.service_max_w, self._largest_demand_w)

    def _note_registers(self, r: Reading) -> None:
        """The plausibility rule, live, on both energy registers (delivered and received)."""
        step = 1000 * r.scaling.multiplier / r.scaling.divisor     # W or Wh per count; a float suffices
        if r.demand is not None:
            self._largest_demand_w = max(self._largest_demand_w, abs(r.demand) * step)
        for name, raw in (("summation", r.summation), ("received", r.received)):
            if raw is not None:
                self._note_register(name, raw * step, r.time)

    def _note_register(self, name: str, wh: float, t: float) -> None:
        prev = self._registers.get(name)
        self._registers[name] = (wh, t)
        if prev is None:
            return
        bound = self.power_bound_w()
        if not plausible_rise(prev[0], round(prev[1] * 1000), wh, round(t * 1000), bound):
            o = self._observed
            self._observe(register_breaks=o.register_breaks + 1, meter_event=MeterEvent(
                t, f"meter changed or a bad value: the {REGISTER_NAMES[name]} register went from "
                   f"{prev[0]:.0f} Wh to {wh:.0f} Wh in {t - prev[1]:.0f} s, more than a {bound:.0f} W "
                   "service can draw; the energy series restarts there"))

    def _note_identity(self, report: HanReport) -> None:
        old = self._report.meter if self._report is not None else None
        if report.clock_plausible is False or report.clock_steps:
            self._observe(clock_wrong=True)
        if old is not None and report.meter is not None and old.ieee != report.meter.ieee:
            self._observe(meter_changes=self._observed.meter_changes + 1, meter_event=MeterEvent(
                report.received, f"meter changed: {old.ieee} was replaced by {report.meter.ieee}"))

    def _move(self, first: float, last: float, shift_s: float) -> None:
        """The HAN's clock stepped: the entries it tagged first..last on the old clock move by shift_s."""
        def moved(e: Entry) -> Entry:
            if not first <= e.time <= last and not (isinstance(e, Reading) and first <= e.due <= last):
                return e
            if isinstance(e, Reading):
                return dataclasses.replace(e, time=e.time + shift_s, due=e.due + shift_s)
            return dataclasses.replace(e, due=e.due + shift_s)

        self._history.replace(sorted(map(moved, self._history.entries()), key=lambda e: e.time))
        self._latest, self._latest_demand, self._latest_summation, self._latest_received = (
            None if r is None else moved(r)
            for r in (self._latest, self._latest_demand, self._latest_summation, self._latest_received))
        self._registers = {name: (wh, t + shift_s if first <= t <= last else t)
                           for name, (wh, t) in self._registers.items()}
        if self._slot_pos is not None and first <= self._slot_pos[1] <= last:
            self._slot_pos = (self._slot_pos[0], self._slot_pos[1] + shift_s, self._slot_pos[2])
        self._observe(clock_moves=self._observed.clock_moves + 1, clock_wrong=True)

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
        last = history.last_time()
        if last is None or last <= entry.time:
            history.append(entry)
        else:       # a late gap run, or the wall clock stepped back: keep time order so readers never sort
            history.insert(entry)

    def _prune(self, now: float) -> None:
        horizon = now - self.history_s
        history = self._history
        while (first := history.first_time()) is not None and first < horizon:
            history.popleft()

    # -- readers (request threads) --------------------------------------------------------------
    def snapshot(self, history: bool = True) -> Snapshot:
        now, now_mono = self._clock(), self._mono()
        with self._lock:
            self._prune(now)
            # Under the lock only what must be read together; the entries are made from the copy
            # after it, so a snapshot with history is built once and holds the lock no longer.
            window = self._history.copy() if history else None
            held = dict(
                now=now, created=self.created, stale_after_s=self.stale_after_s,
                silent_after_s=self.silent_after_s, history_s=self.history_s,
                latest=self._latest, latest_demand=self._latest_demand,
                latest_summation=self._latest_summation, latest_received=self._latest_received,
                report=self._report, queries=self._queries,
                last_message_at=self._last_message_at, scaling_since=self._scaling_since,
                now_mono=now_mono, uptime_s=now_mono - self.created_mono,
                power_bound_w=self.power_bound_w(), observed=self._observed)
        return Snapshot(**held, history=() if window is None else window.entries())

    def latest_of(self, quantity: str) -> Reading | None:
        """Snapshot.latest_with without the cost of a Snapshot: the current-value answers' one read.
        Without the lock: it is one reference, read whole under the interpreter lock, and a reading
        is never changed once made (the lock is for reads that must agree with each other)."""
        if quantity == "demand":
            return self._latest_demand
        if quantity == "summation":
            return self._latest_summation
        if quantity == "received":
            return self._latest_received
        raise KeyError(quantity)

    def __len__(self) -> int:
        with self._lock:
            return len(self._history)


def _report(msg: dict, received: float, received_mono: float) -> HanReport:
    meter = msg.get("meter")
    return HanReport(
        state=msg["state"], detail=msg["detail"],
        meter=Meter(meter["ieee"], meter["nwk"], meter["endpoint"]) if meter else None,
        radio_ieee=msg.get("radio_ieee"), queries_total=msg["queries_total"],
        queries_lost=msg["queries_lost"], lost_by_cause=tuple(sorted(msg["lost_by_cause"].items())),
        frames_bad=msg["frames_bad"], guard_refused=msg["guard_refused"],
        channel_dropped=msg["channel_dropped"], started=float(msg["started"]),
        poll_interval_s=float(msg["poll_interval_s"]), sent=float(msg["sent"]), received=received,
        received_mono=received_mono, uptime_s=msg.get("uptime_s"), clock_steps=msg.get("clock_steps"),
        clock_last_step_s=msg.get("clock_last_step_s"), clock_plausible=msg.get("clock_plausible"),
        clock_held=msg.get("clock_held"), clock_held_dropped=msg.get("clock_held_dropped"))


def data_status(snap: Snapshot) -> str:
    """`ok`, `stale` or `no-data`, as /api/v1/current reports it."""
    if snap.latest is None:
        return "no-data"
    return "stale" if snap.now - snap.latest.time > snap.stale_after_s else "ok"
