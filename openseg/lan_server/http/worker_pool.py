"""cheroot's worker pool, handing each connection to the worker that went idle last.

Why: cheroot's ThreadPool queues connections in a queue.Queue, whose waiting workers wake first in,
first out, so each connection goes to the worker idle longest and all THREAD_POOL workers (128: the
slow-client defence needs that many, main.py) take turns. A thread keeps state of its own once it has
served: glibc's cache of freed blocks (tcache, up to 7 blocks of each of 64 sizes per thread),
OpenSSL's per-thread random generators, libxml2's per-thread dictionary, the stack pages it touched.
Taking turns, every worker gathers all of it. Handed to the worker that went idle last, the work stays
on as few threads as the concurrency needs; the rest wait, holding nothing new, until slow clients or
a burst need them. Measured (bench/RESULTS.md, issue 16): under the bench's load the LAN process was
2.7 MB smaller after 10 minutes, growing about as fast; and each request is cheaper, the thread that
serves it being the one that just ran (the bare server's CPU per keep-alive request fell from 0.41 to
0.14 ms, the LAN's from 0.47 to 0.27). The defence is unchanged: the same workers, all started at
once, and a connection waits for none of them while one is idle; which idle worker serves does not
change how many are idle.

The one private name used: cheroot's ThreadPool keeps its queue in `_queue` and feeds it in put(),
shrink() and stop() (cheroot 11.1, pinned to the 11 series in setup.cfg); `LastIdleFirstPool` gives it
this queue instead. tests/lan_server/http/test_worker_pool.py drives a real pool and fails if that
changes. The queue is unbounded: cheroot's accepted_queue_size, whose 503 answer would need a queue
that refuses, is not supported; openseg-lan sets none, so cheroot's default (unbounded) applies.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from cheroot.workers.threadpool import ThreadPool


class _Handoff:
    """One idle worker's place: it sleeps in take() until put() gives it a connection."""

    def __init__(self):
        self._given = threading.Lock()
        self._given.acquire()
        self.item: Any = None

    def give(self, item: Any) -> None:
        self.item = item
        self._given.release()

    def take(self) -> Any:
        self._given.acquire()
        return self.item


class LastIdleFirst:
    """The pool's queue: connections in arrival order; each goes to the most recently idle worker."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list[_Handoff] = []                     # waiting workers, the latest last
        self._queued: collections.deque[Any] = collections.deque()  # connections no worker was idle for

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Never blocks and never raises queue.Full: the queue is unbounded, as cheroot's is with its
        default accepted_queue_size (-1); `block` and `timeout` are accepted for ThreadPool.put's call."""
        with self._lock:
            if self._idle:
                self._idle.pop().give(item)
            else:
                self._queued.append(item)

    def get(self) -> Any:
        with self._lock:
            if self._queued:
                return self._queued.popleft()
            place = _Handoff()
            self._idle.append(place)
        return place.take()

    def qsize(self) -> int:
        return len(self._queued)

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)


class LastIdleFirstPool(ThreadPool):
    """A fixed pool of `size` cheroot workers fed by LastIdleFirst."""

    def __init__(self, server, size: int):
        super().__init__(server, min=size, max=size)
        self._queue = self._last_idle_first = LastIdleFirst()
        self.get = self._queue.get

    def waiting(self) -> int:
        """How many workers wait for a connection now."""
        return self._last_idle_first.idle()
