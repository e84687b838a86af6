"""The in-memory recent history (Readings' window): a ring of readings and gaps of fixed capacity,
packed in columns of machine numbers that are allocated once, when the process starts.

Why packed, and why all at once: the window holds one entry per poll slot for `history_s` (3 hours, 10 800
entries at 1-s polls). As a deque of Reading objects it grew by about 300 bytes a reading (the object
and its boxed numbers) until it was full, three hours after start: steady growth through the bench's
hour of memory (issue 16). Here an entry takes 72 bytes of columns plus one reference, all taken when
the window is made, so the process's size does not depend on how long it has run. Readings sizes it
for the configured poll (1543 entries, 123 KB, at the utility's 7-s minimum).

Entries go in in time order (`append`) and leave from the old end (`popleft`, or the oldest is
overwritten when the ring is full). An entry out of order (a `late` gap run, tagged before the reply
that was late; the wall clock stepped back) is put in its place (`insert`: the columns are moved at C
level, tens of microseconds, under Readings' lock). A HAN clock message rebuilds the ring from its
entries (`replace`). `copy` is a C-level copy of the entries held, cheap enough to take under the
lock; `entries` turns one back into Reading and Gap objects, outside it, for the answers that read
history from memory (history off, or the store unavailable: about 2 us an entry).
"""
from __future__ import annotations

import bisect
import math
from array import array
from typing import Iterable

from openseg.shared_schema.messages import GAP_CAUSES

from ..espi.scaling import Scaling
from .entries import CHANNEL_LOST, Entry, Gap, Reading

NO_INT = -(1 << 63)     # an absent raw value in an int64 column (the channel's raw values are 48-bit at most)
NO_FLOAT = math.nan     # an absent poll interval (intervals are positive)

# A gap's cause is one of these strings (the channel's schema allows no other); the window keeps this
# one object for each, never a message's own copy.
CAUSES = {c: c for c in (*(cause.value for cause in GAP_CAUSES), CHANNEL_LOST)}


class RecentWindow:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("a window holds at least one entry")
        self.capacity = capacity
        ints, floats = bytes(8 * capacity), bytes(8 * capacity)
        self._seq, self._slot = array("q", ints), array("q", ints)
        self._summation, self._demand, self._received = array("q", ints), array("q", ints), array("q", ints)
        self._due, self._time, self._rtt, self._interval = (array("d", floats), array("d", floats),
                                                            array("d", floats), array("d", floats))
        # A reading's Scaling (one shared object per scaling, Readings.apply) or a gap's cause.
        self._what: list[Scaling | str | None] = [None] * capacity
        self._first = 0          # index of the oldest entry
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def _index(self, i: int) -> int:
        return (self._first + i) % self.capacity

    def first_time(self) -> float | None:
        return self._time[self._first] if self._len else None

    def last_time(self) -> float | None:
        return self._time[self._index(self._len - 1)] if self._len else None

    def _columns(self) -> tuple:
        return (self._seq, self._slot, self._summation, self._demand, self._received, self._due, self._time,
                self._rtt, self._interval, self._what)

    def append(self, e: Entry) -> None:
        """Add `e` as the newest entry; a full ring drops its oldest."""
        if self._len == self.capacity:
            self.popleft()
        self._put(self._index(self._len), e)
        self._len += 1

    def insert(self, e: Entry) -> None:
        """Add `e` after the entries whose time is at most its own (time order kept); a full ring drops
        its oldest first."""
        if self._len == self.capacity:
            self.popleft()
        self._linearize()
        n = self._len
        k = bisect.bisect_right(self._time, e.time, 0, n)
        for col in self._columns():
            col[k + 1:n + 1] = col[k:n]
        self._put(k, e)
        self._len += 1

    def _linearize(self) -> None:
        """Rotate the columns so the oldest entry is at index 0."""
        first = self._first
        if first:
            for col in self._columns():
                col[:] = col[first:] + col[:first]
            self._first = 0

    def _put(self, i: int, e: Entry) -> None:
        self._seq[i], self._slot[i], self._due[i], self._time[i] = e.seq, e.slot, e.due, e.time
        if isinstance(e, Reading):
            self._rtt[i] = e.rtt_s
            self._summation[i] = NO_INT if e.summation is None else e.summation
            self._demand[i] = NO_INT if e.demand is None else e.demand
            self._received[i] = NO_INT if e.received is None else e.received
            self._interval[i] = NO_FLOAT if e.interval_s is None else e.interval_s
            self._what[i] = e.scaling
        else:
            self._what[i] = CAUSES.get(e.cause, e.cause)

    def popleft(self) -> None:
        if not self._len:
            raise IndexError("popleft from an empty window")
        self._what[self._first] = None
        self._first = (self._first + 1) % self.capacity
        self._len -= 1

    def replace(self, entries: Iterable[Entry]) -> None:
        """Hold exactly `entries` (time order), the newest `capacity` of them if there are more."""
        for i in range(self.capacity):
            self._what[i] = None
        self._first = self._len = 0
        for e in entries:
            self.append(e)

    def copy(self) -> "WindowCopy":
        """The entries held, oldest first, as copied columns (C-level slices; no objects made)."""
        first, end = self._first, self._first + self._len
        if end <= self.capacity:
            return WindowCopy(tuple(col[first:end] for col in self._columns()))
        end -= self.capacity
        return WindowCopy(tuple(col[first:] + col[:end] for col in self._columns()))

    def entries(self) -> tuple[Entry, ...]:
        """The entries, oldest first, as Reading and Gap objects."""
        return self.copy().entries()


class WindowCopy:
    """A copy of a window's entries in columns, oldest first: what a snapshot takes under the lock."""

    def __init__(self, columns: tuple):
        self._columns = columns

    def entries(self) -> tuple[Entry, ...]:
        out: list[Entry] = []
        for seq, slot, summation, demand, received, due, time, rtt, interval, what in zip(*self._columns):
            if isinstance(what, Scaling):
                out.append(Reading(seq, slot, due, time, rtt, None if summation == NO_INT else summation,
                                   None if demand == NO_INT else demand, what,
                                   None if math.isnan(interval) else interval,
                                   None if received == NO_INT else received))
            else:
                out.append(Gap(seq, slot, due, what))
        return tuple(out)
