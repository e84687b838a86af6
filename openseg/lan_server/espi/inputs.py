"""What the ESPI builders read, as the types this room defines: the state room's objects
(readings.Snapshot, readings.Reading, history_store.Row, history_source's sources) meet them as they are,
so espi imports nothing above it (.importlinter, "the LAN's rooms") and a test can hand it plain data."""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Iterable, Mapping, Protocol

from .interval_energy import RegisterSample
from .scaling import Scaling


class Sample(Protocol):
    """One meter reading: raw counts per quantity, None where the reading does not carry it."""
    @property
    def time(self) -> float: ...             # the value's time tag, epoch s
    @property
    def interval_s(self) -> float | None: ...    # the poll interval in force when it was taken
    @property
    def scaling(self) -> Scaling: ...
    @property
    def demand(self) -> int | None: ...
    @property
    def summation(self) -> int | None: ...   # the import register
    @property
    def received(self) -> int | None: ...    # the export register


# A quantity's name (MeterReadingDef.register, the history's column) -> its raw count in a sample.
RAW_VALUE: Mapping[str, Callable[[Sample], int | None]] = {
    "demand": lambda s: s.demand,
    "summation": lambda s: s.summation,
    "received": lambda s: s.received,
}


class Moment(Protocol):
    """The meter as the answer sees it: one consistent view, taken once per answer."""
    @property
    def now(self) -> float: ...
    @property
    def created(self) -> float: ...          # when the view was taken (the Atom `published`)
    @property
    def scaling_since(self) -> float | None: ...
    @property
    def poll_interval_s(self) -> float | None: ...
    @property
    def power_bound_w(self) -> float: ...    # interval_energy's plausibility bound
    @property
    def latest_received(self) -> Sample | None: ...

    def latest_with(self, quantity: str) -> Sample | None: ...


class HistorySource(Protocol):
    """The history an answer reads (windows in epoch s, `since` inclusive, `until` exclusive). Queries
    are made inside `consistent()`, which holds one view of the history for the whole answer."""
    intervals: bool                          # True: register samples are kept, MeterReading 3/4 exist

    def consistent(self) -> AbstractContextManager[object]: ...
    def exponent(self, quantity: str) -> int: ...
    def readings(self, quantity: str, since: int | None, until: int | None) -> Iterable[Sample]: ...
    def newest(self, since: int | None = None, until: int | None = None) -> float | None: ...
    def oldest(self) -> float | None: ...
    def nth_hour(self, quantity: str, since: int | None, until: int | None, n: int) -> int | None: ...
    # Called only when `intervals` is True.
    def register(self, since: int | None, until: int | None, quantity: str) -> list[RegisterSample]: ...
