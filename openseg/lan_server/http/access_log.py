"""The access log: one line per answered request, on the LAN process's standard error (the journal
under systemd), in the format every other log line has (main.OneLineFormatter):

    2026-12-02 08:31:05,123 INFO openseg.lan.access: 10.0.0.2 alice "GET /api/v1/current" 200 151 0.4ms

Every request makes one, so its cost is every request's cost, and issue 16 bounds the access log and
the current-value answer together at about 0.11 ms of CPU. It therefore does not go through the logging
module: a LogRecord, the logger's dispatch and the text stream's buffering cost 0.02 ms a line in the
live server under load (bench/RESULTS.md, issue 16). A request thread only queues the line's fields,
each cut to what the line shows of it; one writer thread formats and writes what is queued. Formatting
there, many lines in a row, takes it off the request: measured in the loaded server, the line cost a
worker 6.4 to 6.9 us of CPU when it was formatted there (escaping four fields, the f-string, encoding)
and 1.8 us queued (the same probe around both; bench/RESULTS.md, issue 16, notes of (1)), and every
microsecond a request holds the interpreter lock costs it several.

Why a writer thread: write(2) lets go of the interpreter lock, and under load another worker takes it,
so each line written by the worker itself cost it a wait for the lock and more context switches (paired
runs on the bench's load: 6.8 and 6.5 voluntary switches a request against 7.9 and 6.7, and 0.253 and
0.241 ms of CPU against 0.286 and 0.267; bench/RESULTS.md, issue 16). The writer waits for the first
line, gathers what the next FLUSH_EVERY_S brings and writes it whole lines at a time, at most PIPE_BUF
(4096) bytes a write, so one write carries dozens of lines under load and, on a pipe, no write of
another thread cuts one of them. (Other log lines go through sys.stderr's own buffer; one longer than
that, a traceback made one line, may be written in pieces, and access lines can land between them.)
While the writer keeps up, a line reaches the journal within FLUSH_EVERY_S of its request, and a crash
or SIGKILL loses at most that last tenth of a second of lines; `close()` (at shutdown) writes what is
queued. If standard error stops taking lines (a journal that hangs), at most MAX_QUEUED lines wait,
and the writer holds at most one batch of as many (their fields: about 4 MB each for IntervalBlock
requests, about 6 MB if every line had the longest fields a line shows, cheroot giving the path as
Latin-1 text); lines beyond them are counted, not kept, and a WARNING line in the same format says how
many once writing works again. The writer never dies of an error: a batch it cannot write is counted
the same way.

Each part is made printable first (`printable`), so a client cannot start a line of its own.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from typing import Callable, Iterable, Iterator

LOGGER_NAME = "openseg.lan.access"      # where the line says it comes from, as a logger's name would
FLUSH_EVERY_S = 0.1
MAX_QUEUED = 10_000                     # lines waiting for a standard error that does not take them
CLOSE_TIMEOUT_S = 2.0
PIPE_BUF = 4096                         # POSIX: a pipe write this size or less is never interleaved
REMOTE_LIMIT, USER_LIMIT, METHOD_LIMIT, PATH_LIMIT = 64, 64, 16, 200    # characters a line shows of each


def printable(text: str, limit: int = PATH_LIMIT) -> str:
    """For log lines: one line, bounded, no control characters from the client, and no quote or
    backslash of its own, so a path cannot close the quoted request and fake the fields after it, and
    an escape in the line is always one this made."""
    text = text[:limit]
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', "\\x22")


class AccessLog:
    """Lines in, written by the writer thread started here. `flush()` waits until every line queued
    before it is written; `close()` writes the rest and stops the writer (later lines are dropped)."""

    def __init__(self, fd: int, *, clock: Callable[[], float] = time.time, flush_every_s: float = FLUSH_EVERY_S):
        self.fd = fd
        self._clock = clock
        self._flush_every_s = flush_every_s
        self._stamp = (-1, "")      # (second, its text), the writer's: many lines share a second
        self._queue: queue.SimpleQueue[tuple | threading.Event | None] = queue.SimpleQueue()
        self._closed = False
        self.dropped = 0            # lines not queued because MAX_QUEUED were waiting
        self._dropped_lock = threading.Lock()
        self._reported = 0          # of them, how many a WARNING line has told of
        self._writer = threading.Thread(target=self._write_queued, name="access-log", daemon=True)
        self._writer.start()

    def line(self, remote: str, user: str, method: str, path: str, status: int, size: int,
             took_ms: float) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= MAX_QUEUED:
            with self._dropped_lock:
                self.dropped += 1
            return
        # The fields as `_format` shows them at most (printable cuts each as long first), so a queued
        # line holds no more of a long path than its line will.
        self._queue.put((self._clock(), remote[:REMOTE_LIMIT], user[:USER_LIMIT], method[:METHOD_LIMIT],
                         path[:PATH_LIMIT], status, size, took_ms))

    def _time_text(self, now: float) -> str:
        """`now` as every log line gives it (the writer thread's: the second's text is kept, many lines
        share a second)."""
        second = int(now)
        held, stamp = self._stamp
        if second != held:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = (second, stamp)
        return f"{stamp},{int((now - second) * 1000):03d}"

    def _format(self, fields: tuple) -> bytes:
        """One queued line's text (the writer thread's work)."""
        now, remote, user, method, path, status, size, took_ms = fields
        return (f"{self._time_text(now)} INFO {LOGGER_NAME}: {printable(remote, REMOTE_LIMIT)} "
                f"{printable(user, USER_LIMIT)} \"{printable(method, METHOD_LIMIT)} {printable(path, PATH_LIMIT)}\" "
                f"{status} {size} {took_ms:.1f}ms\n").encode("utf-8", "backslashreplace")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every line queued before this call is written (or counted as dropped). False:
        not within `timeout`, or closed (nothing will be written any more)."""
        if self._closed or not self._writer.is_alive():
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued and stop the writer; later lines are dropped. Waits at most `timeout`
        (a standard error that blocks must not hold up the rest of a shutdown)."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._writer.join(timeout)

    def __enter__(self) -> "AccessLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the writer thread ---------------------------------------------------------------------------
    def _write_queued(self) -> None:
        while True:
            first = self._queue.get()               # waits without the interpreter lock
            if isinstance(first, tuple):
                time.sleep(self._flush_every_s)     # what the next moment brings goes in the same writes
            queued, markers, last = [], [], False
            item = first
            while True:
                if item is None:
                    last = True
                elif isinstance(item, tuple):
                    queued.append(item)
                else:
                    markers.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            batch, dropped = len(queued), 0
            try:
                with self._dropped_lock:
                    dropped, self._reported = self.dropped - self._reported, self.dropped
                told = [self._dropped_line(dropped)] if dropped else []
                self._write_lines(itertools.chain(self._formatted(queued), told))
            except Exception:       # the writer outlives any one batch: counted, told of next time
                with self._dropped_lock:
                    self.dropped += batch
                    self._reported -= dropped
            finally:
                for marker in markers:
                    marker.set()
            if last:
                return

    def _formatted(self, queued: list[tuple]) -> Iterator[bytes]:
        """The batch's lines, oldest first, each made as its write is gathered and its fields let go
        then: a writer that standard error holds up keeps the rest of its batch's fields and one
        write's bytes, not the whole batch twice. A line that cannot be made (a field that is not
        text: a caller's bug) is counted as dropped, and the batch goes on."""
        queued.reverse()
        while queued:
            fields = queued.pop()
            try:
                line = self._format(fields)
            except Exception:
                with self._dropped_lock:
                    self.dropped += 1
                continue
            yield line

    def _dropped_line(self, dropped: int) -> bytes:
        return (f"{self._time_text(self._clock())} WARNING {LOGGER_NAME}: {dropped} access "
                f"line(s) dropped: standard error did not take them as fast as they came, or a line "
                f"could not be made\n").encode()

    def _write_lines(self, lines: Iterable[bytes]) -> None:
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) > PIPE_BUF:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            while data:                 # a signal can cut a write short; the rest follows
                data = data[os.write(self.fd, data):]
        except OSError:
            # The journal is gone (or stderr closed): like the logging module, drop the lines; there
            # is nowhere left to report it.
            pass
