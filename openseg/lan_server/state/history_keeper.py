"""The history as the LAN process has it, whatever its disk does: a HistoryStore when the state
directory allows one, none (with the reason) when it does not, and the receiver thread trying again.

The LAN must serve current values, the page and ESPI whether or not the history store can be opened
(a read-only or full file system, a missing or unusable directory, a damaged file that cannot be
moved aside). So the process starts with a keeper instead of a store:
- `store` is the open HistoryStore or None; request threads read it by reference (history_source)
  and answer from memory while it is None;
- the receiver thread, the store's only writer, calls `record` and `flush` as before; while there is no
  store they queue entries in memory (at most history_store.BACKLOG_ROWS) and, at most every
  RETRY_EVERY_S by the monotonic clock, try to open it again; once it opens, the queue goes in first;
- a store whose writes start failing stays open (it can still be read) and retries on its own
  (HistoryWriter); one whose file turns out to be damaged is closed and opened again, which moves the
  file aside (open_history), and the rows it had queued are counted lost;
- `health()` is what /api/v1/status and the page show: `ok`, `failing` (open and readable, writes
  refused) or `unavailable` (no store), with the reason and since when.
"""
from __future__ import annotations

import sqlite3
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .history_store import (BACKLOG_ROWS, RETRY_EVERY_S, HistoryError, HistoryState, HistoryStore, open_history,
                            store_path)
from .readings import Entry


@dataclass(frozen=True)
class _Retag:
    """A clock step that arrived while there was no store, kept in order with the entries."""
    first: float
    last: float
    shift_s: float


class HistoryKeeper:
    def __init__(self, state_dir: str, retention_days: int, *, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic):
        if retention_days < 1:
            raise ValueError("a keeper needs a retention of at least one day (0: no history at all)")
        self.state_dir, self.retention_days = state_dir, retention_days
        self.path = store_path(state_dir)
        self._log, self._clock, self._mono = log, clock, monotonic
        self.store: HistoryStore | None = None
        self.problem: str | None = None
        self.since: float | None = None         # wall-clock time the current problem began
        # Counted by stores closed since (a damaged file), so that status never counts backwards.
        self.lost = self.write_errors = 0
        self._queue: deque[Entry | _Retag] = deque()
        self._next_try = float("-inf")
        self._open()

    # -- the receiver thread (and the starting/stopping thread, before/after it runs) --------------
    def record(self, entry: Entry) -> None:
        store = self.store
        if store is None:
            if len(self._queue) >= BACKLOG_ROWS:      # no store for hours: the oldest go
                self._queue.popleft()
                self.lost += 1
            self._queue.append(entry)
            return
        store.record(entry)
        self._check(store)

    def retag(self, first: float, last: float, shift_s: float) -> None:
        """A HAN clock step (readings.Readings): moved in the store, or, while there is none, queued
        in order with the entries so that the replay moves exactly what came before it."""
        store = self.store
        if store is None:
            self._queue.append(_Retag(first, last, shift_s))
            return
        store.retag(first, last, shift_s)
        self._check(store)

    def maxima(self) -> dict:
        """The store's largest values per scaling (none while there is no store)."""
        return self.store.maxima() if self.store is not None else {}

    def last_slot(self) -> tuple[int, float, float | None] | None:
        """The newest stored slot (None while there is no store: the count starts anew)."""
        return self.store.last_slot() if self.store is not None else None

    def flush(self) -> None:
        store = self.store
        if store is None:
            if self._mono() >= self._next_try:
                self._open()
            return
        store.flush()
        self._check(store)

    def _open(self) -> None:
        try:
            store = open_history(self.state_dir, self.retention_days, log=self._log, clock=self._clock,
                                 monotonic=self._mono)
        except HistoryError as exc:
            self._next_try = self._mono() + RETRY_EVERY_S
            if str(exc) != self.problem:
                self._log(f"history: off, serving without it: {exc}; trying again every {RETRY_EVERY_S:g} s")
                self.since = self._clock()
            self.problem = str(exc)
            return
        if self.problem is not None:
            self._log(f"history: {store.path} open again ({len(self._queue)} queued reading(s) to store)")
        self.problem = self.since = None
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Retag):
                store.retag(item.first, item.last, item.shift_s)
            else:
                store.record(item)
        store.flush()
        self.store = store

    def _check(self, store: HistoryStore) -> None:
        """A write found the file damaged: close it; the next try moves it aside and starts anew."""
        writer = store.writer
        if not writer.damaged:
            return
        lost = writer.queued
        self.store = None
        try:
            store.close()
        except sqlite3.Error:
            pass                    # it is damaged; what could not be written is counted below
        self.lost += lost + writer.dropped
        self.write_errors += writer.write_errors
        self.problem, self.since = f"{store.path} is damaged: {writer.problem}", self._clock()
        self._next_try = float("-inf")      # at once: moving it aside needs no waiting
        self._log(f"history: {self.problem}; {lost} queued reading(s) lost; reopening")

    def close(self) -> None:
        """After the receiver thread has stopped."""
        if self.store is not None:
            self.store.close()
        elif self._queue:
            self._log(f"history: {len(self._queue)} reading(s) never stored: {self.problem}")

    def open_store(self) -> HistoryStore | None:
        """The store answers read from (History.open_store); None while there is none."""
        return self.store

    # -- anyone ---------------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Entries waiting in memory for a store to open."""
        return len(self._queue)

    def health(self) -> tuple[HistoryState, str | None, float | None]:
        """(state, the reason when not ok, since when)."""
        store = self.store
        if store is None:
            return HistoryState.UNAVAILABLE, self.problem, self.since
        return store.health()
