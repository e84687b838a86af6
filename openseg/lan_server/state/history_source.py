"""What the ESPI and JSON answers read history from: the store, through a read-only connection lent
for the answer (only an answer that reads history takes one), or, with history off (retention 0, or a test without a store), the in-memory
recent window. Both give the same things in the same shapes, so espi.feed and web_resources have one
code path; the current value always comes from memory (readings.Snapshot), the fast path.

Windows are data time in epoch seconds, `since` inclusive and `until` exclusive, `None` unbounded: a
reading is in the window when its time tag is, an interval when its start is (espi.query).
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from ..espi import interval_energy as ie
from ..espi import scaling as sc
from ..espi.inputs import RAW_VALUE, Sample
from .history_store import QUANTITIES, HistoryReader, HistoryStore, Row, StoredReading, t_ms_of
from .readings import Gap, Reading, Readings, Snapshot


def _largest(readings: Iterable[Sample], quantity: str, into: dict[sc.Scaling, int]) -> None:
    value = RAW_VALUE[quantity]
    for r in readings:
        raw = value(r)
        if raw is not None and abs(raw) > into.get(r.scaling, -1):
            into[r.scaling] = abs(raw)


class MemorySource:
    """History off: what memory holds (Readings.history_s), no interval MeterReading."""
    intervals = False

    def __init__(self, snap: Snapshot):
        self.snap = snap

    def _series(self, quantity: str) -> list[Reading]:
        """The readings carrying `quantity`, the history plus the latest, in time order."""
        snap = self.snap
        value = RAW_VALUE[quantity]
        out = [e for e in snap.history if isinstance(e, Reading) and value(e) is not None]
        latest = snap.latest_with(quantity)
        # The history's entries are copies (recent_window), so the latest is found by value: usually
        # the last one; anywhere after the wall clock stepped back.
        if latest is not None and not (out and out[-1] == latest) and latest not in out:
            out.append(latest)
            out.sort(key=lambda r: r.time)
        return out

    def exponent(self, quantity: str) -> int:
        largest: dict[sc.Scaling, int] = {}
        _largest(self._series(quantity), quantity, largest)
        p = sc.espi_exponent(largest)
        return 0 if p is None else p

    def readings(self, quantity: str, since: int | None, until: int | None) -> Iterator[Reading]:
        for r in self._series(quantity):
            if (since is None or r.time >= since) and (until is None or r.time < until):
                yield r

    def newest(self, since: int | None = None, until: int | None = None) -> float | None:
        times = [r.time for q in QUANTITIES for r in self.readings(q, since, until)]
        return max(times, default=None)

    def oldest(self) -> float | None:
        return min((r.time for q in QUANTITIES for r in self.readings(q, None, None)), default=None)

    def nth_hour(self, quantity: str, since: int | None, until: int | None, n: int) -> int | None:
        hours = sorted({int(r.time // 3600) * 3600 for r in self.readings(quantity, since, until)})
        return hours[n] if n < len(hours) else None

    def register(self, since: int | None, until: int | None,
                 quantity: str = "summation") -> list[ie.RegisterSample]:
        """What StoreSource.register gives, from memory: the register samples in the window and the
        one on each side of it. HistorySource asks for it; `intervals` False keeps the interval
        MeterReadings (its only readers) off while memory is the history."""
        value = RAW_VALUE[quantity]
        series = [(r, raw) for r in self._series(quantity) if (raw := value(r)) is not None]
        inside = [i for i, (r, _) in enumerate(series)
                  if (since is None or r.time >= since) and (until is None or r.time < until)]
        if not inside:
            return []
        return [ie.RegisterSample(t_ms_of(r.time), r.scaling.step * raw, r.slot,
                                  None if r.interval_s is None else round(r.interval_s * 1000))
                for r, raw in series[max(0, inside[0] - 1):inside[-1] + 2]]

    def entries(self, since: float) -> Iterator[Reading | Gap]:
        return (e for e in self.snap.history if e.time >= since)

    @contextlib.contextmanager
    def consistent(self):
        yield self


class StoreSource:
    """History on: the store, read in one transaction per answer (`consistent`). A read connection is
    borrowed for that block only; the queries below are for inside it."""
    intervals = True

    def __init__(self, snap: Snapshot, store: HistoryStore):
        self.snap = snap
        self.store = store
        self.reader: HistoryReader | None = None

    @contextlib.contextmanager
    def consistent(self):
        if self.reader is not None:             # nested: the outer block's transaction holds
            yield self
            return
        with self.store.reading() as reader, reader.snapshot():
            self.reader = reader
            try:
                yield self
            finally:
                self.reader = None

    def exponent(self, quantity: str) -> int:
        """One exponent for everything this MeterReading can show: every scaling the store holds and
        the latest value in memory (espi_exponent's rule), so the ReadingType and every IntervalBlock
        agree whichever is fetched first."""
        return store_exponent(self.store, quantity, self.snap.latest_with(quantity))

    def _reader(self) -> HistoryReader:
        """The connection `consistent()` borrowed: the queries below are for inside that block."""
        if self.reader is None:
            raise RuntimeError("a StoreSource query outside consistent()")
        return self.reader

    @staticmethod
    def _ms(t: int | None) -> int | None:
        return None if t is None else t * 1000

    def readings(self, quantity: str, since: int | None, until: int | None) -> Iterator[StoredReading]:
        return self._reader().readings(self._ms(since), self._ms(until), quantity)

    def register(self, since: int | None, until: int | None,
                 quantity: str = "summation") -> list[ie.RegisterSample]:
        """Register samples for ie.intervals: "summation" (imported) or "received" (exported)."""
        return self._reader().register(self._ms(since), self._ms(until), quantity)

    def newest(self, since: int | None = None, until: int | None = None) -> float | None:
        t = self._reader().newest_ms(self._ms(since), self._ms(until))
        return None if t is None else t / 1000

    def oldest(self) -> float | None:
        t = self._reader().oldest_ms()
        return None if t is None else t / 1000

    def nth_hour(self, quantity: str, since: int | None, until: int | None, n: int) -> int | None:
        t = self._reader().nth_hour_ms(self._ms(since), self._ms(until), quantity, n)
        return None if t is None else t // 1000

    def entries(self, since: float) -> Iterator[Row]:
        return self._reader().rows(t_ms_of(since))


# quantity -> (the store's maxima dict, the latest value's scaling and size, the exponent). The writer
# replaces the maxima dict whenever a maximum grows, so the same dict object means the same maxima:
# the current-value answers, thousands a second at load, skip the Fractions of espi_exponent.
_EXPONENTS: dict[str, tuple[object, tuple, int]] = {}


def store_exponent(store: HistoryStore, quantity: str, latest: Reading | None) -> int:
    """StoreSource.exponent, from the store's maxima and the latest reading alone."""
    maxima = store.maxima()
    raw = None if latest is None else RAW_VALUE[quantity](latest)
    key = (None, None) if latest is None or raw is None else (latest.scaling, abs(raw))
    held = _EXPONENTS.get(quantity)
    if held is not None and held[0] is maxima and held[1] == key:
        return held[2]
    index = QUANTITIES.index(quantity)
    largest = {s: m[index] for s, m in maxima.items()}
    if latest is not None:
        _largest([latest], quantity, largest)
    p = sc.espi_exponent(largest)
    p = 0 if p is None else p
    _EXPONENTS[quantity] = (maxima, key, p)
    return p


def open_store(readings: Readings) -> HistoryStore | None:
    """The store answers read from (History.open_store); None while history is off or unavailable,
    and answers then come from memory."""
    return None if readings.history is None else readings.history.open_store()


def source_for(readings: Readings, snap: Snapshot) -> MemorySource | StoreSource:
    store = open_store(readings)
    return MemorySource(snap) if store is None else StoreSource(snap, store)


def answer_source(readings: Readings) -> tuple[Snapshot, MemorySource | StoreSource]:
    """An answer's snapshot and history source. The snapshot leaves the recent window out while the
    store holds the history (copying it costs each request); with history off, that window is the
    history, so the snapshot is taken again with it."""
    snap = readings.snapshot(history=False)
    source = source_for(readings, snap)
    if not source.intervals:
        snap = readings.snapshot()
        source = source_for(readings, snap)
    return snap, source
