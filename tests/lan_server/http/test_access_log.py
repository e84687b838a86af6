"""The access log (openseg/lan_server/http/access_log.py): the line every other logger would write,
which a client cannot forge; written by one writer thread in whole lines, many to a write, which a
failing, short or stalled write cannot break."""
from __future__ import annotations

import io
import logging
import os
import re
import threading
import time

import pytest

from openseg.lan_server.http import access_log
from openseg.lan_server.http.access_log import AccessLog
from openseg.lan_server.main import OneLineFormatter

WARNING = (r"\S+ \S+ WARNING openseg\.lan\.access: {} access line\(s\) dropped: standard error did not "
           r"take them as fast as they came, or a line could not be made\n")
LINE = re.compile(r'\S+ \S+ INFO openseg\.lan\.access: (\S+) (\S+) "(\S+) ([^"]*)" (\d+) (\d+) ([\d.]+)ms\n')


@pytest.fixture
def log_file(tmp_path):
    fd = os.open(tmp_path / "access.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    yield fd, tmp_path / "access.log"
    os.close(fd)


def test_access_lines_are_the_lines_every_other_logger_writes(log_file, monkeypatch):
    """Exactly what OneLineFormatter on a StreamHandler writes for the same message at the same time,
    the record made by logging itself (its own milliseconds: truncated, 999.6 is 999): one format for
    grep and journald, whichever wrote it."""
    fd, path = log_file
    plain = io.StringIO()
    reference = logging.StreamHandler(plain)
    reference.setFormatter(OneLineFormatter())
    times = [1764642000.0, 1764642000.9996, 1764642001.5, 1764645600.25]
    with AccessLog(fd, clock=iter(times).__next__) as fast:
        for created in times:
            fast.line("10.0.0.2", "alice", "GET", "/api/v1/current", 200, 151, 0.4)
            monkeypatch.setattr(time, "time", lambda: created)
            reference.handle(logging.LogRecord("openseg.lan.access", logging.INFO, __file__, 1,
                                               '%s %s "%s %s" %d %d %.1fms',
                                               ("10.0.0.2", "alice", "GET", "/api/v1/current", 200, 151, 0.4), None))
            monkeypatch.undo()
    assert path.read_text() == plain.getvalue() and plain.getvalue().count("\n") == 4
    assert ",999 INFO" in plain.getvalue()


@pytest.mark.parametrize("path, shown", [
    ('/x" 200 0 0.1ms', r"/x\x22 200 0 0.1ms"),          # a quote would close the request and fake a status
    ("/a\\nb", r"/a\\nb"),                                  # a literal backslash-n is not an escaped newline
    ("/a\nb\r\u2028c", r"/a\nb\r\u2028c"),                  # line breaks of every kind are escaped
    ("/" + "x" * 500, "/" + "x" * 199),                     # bounded
])
def test_a_client_cannot_forge_a_line_or_its_fields(log_file, path, shown):
    fd, file = log_file
    with AccessLog(fd) as log:
        log.line("10.0.0.2", "alice", "GET", path, 404, 23, 0.3)
    text = file.read_text()
    m = LINE.fullmatch(text)
    assert m and m.group(4) == shown and m.group(5) == "404" and text.count("\n") == 1


def test_a_short_write_is_finished(log_file, monkeypatch):
    fd, file = log_file
    real = os.write
    monkeypatch.setattr(os, "write", lambda f, data: real(f, data[:7]))     # a signal cut each write short
    with AccessLog(fd, clock=lambda: 1764642000.5) as log:
        log.line("10.0.0.2", "alice", "GET", "/api/v1/current", 200, 151, 0.4)
    monkeypatch.undo()
    assert LINE.fullmatch(file.read_text())


def test_a_log_that_cannot_be_written_does_not_break_the_request():
    """The journal gone (a pipe nobody reads) or standard error closed: the line is dropped, the
    request still answered (line returns)."""
    r, w = os.pipe()
    os.close(r)
    try:
        with AccessLog(w) as log:
            log.line("10.0.0.2", "alice", "GET", "/", 200, 1, 0.1)      # EPIPE
        assert not log._writer.is_alive()
    finally:
        os.close(w)
    with AccessLog(w) as log:
        log.line("10.0.0.2", "alice", "GET", "/", 200, 1, 0.1)          # EBADF: closed
        assert log.flush(timeout=10)
        log.line("10.0.0.2", "alice", "GET", "/", 200, 1, 0.1)          # the writer still takes lines
        assert log.flush(timeout=10)


def test_lines_of_many_threads_come_whole_many_to_a_write_and_none_is_lost(log_file, monkeypatch):
    """The point of the writer thread: far fewer write(2) calls than lines (a write lets go of the
    interpreter lock, and under load each cost the worker a wait for it), each write whole lines of at
    most PIPE_BUF bytes, and every line there once flush() returns."""
    fd, file = log_file
    real, writes = os.write, []

    def counted(f, data):
        writes.append(len(data))
        return real(f, data)
    monkeypatch.setattr(os, "write", counted)
    with AccessLog(fd) as log:
        def requests(worker):
            for i in range(500):
                log.line("10.0.0.2", "alice", "GET", f"/w{worker}/{i}", 200, 151, 0.4)
        threads = [threading.Thread(target=requests, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.flush(timeout=10)
        lines = file.read_text().splitlines(keepends=True)
        assert sorted(LINE.fullmatch(x).group(4) for x in lines) == sorted(
            f"/w{w}/{i}" for w in range(8) for i in range(500))
    assert max(writes) <= access_log.PIPE_BUF
    assert len(writes) < len(lines) / 20
    assert sum(writes) == file.stat().st_size


def test_a_line_reaches_the_log_by_itself_within_the_flush_interval(log_file):
    """No later request, no flush(): the writer writes a lone line on its own."""
    fd, file = log_file
    with AccessLog(fd, flush_every_s=0.05) as log:
        log.line("10.0.0.2", "alice", "GET", "/lone", 200, 1, 0.1)
        deadline = time.monotonic() + 10
        while not file.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert LINE.fullmatch(file.read_text()).group(4) == "/lone"


def test_a_stalled_log_keeps_a_bounded_queue_and_says_what_it_dropped(log_file, monkeypatch):
    """Standard error that stops taking lines (a hung journal): requests go on, at most MAX_QUEUED
    lines wait, the rest are counted, and a WARNING line tells how many once writing works again."""
    fd, file = log_file
    monkeypatch.setattr(access_log, "MAX_QUEUED", 50)
    real, stalled = os.write, threading.Event()

    def stalling(f, data):
        stalled.wait()
        return real(f, data)
    monkeypatch.setattr(os, "write", stalling)
    with AccessLog(fd, flush_every_s=0.0) as log:
        log.line("10.0.0.2", "alice", "GET", "/first", 200, 1, 0.1)
        deadline = time.monotonic() + 10
        while log._queue.qsize() and time.monotonic() < deadline:      # the writer holds /first
            time.sleep(0.01)
        for i in range(80):
            log.line("10.0.0.2", "alice", "GET", f"/{i}", 200, 1, 0.1)
        assert log.dropped == 30
        stalled.set()
        assert log.flush(timeout=10)
    lines = file.read_text().splitlines(keepends=True)
    assert [LINE.fullmatch(x).group(4) for x in lines[:51]] == ["/first"] + [f"/{i}" for i in range(50)]
    assert re.fullmatch(WARNING.format(30), lines[51])
    assert len(lines) == 52

    # A second stall: its own count, not the total so far.
    stalled.clear()
    with AccessLog(fd, flush_every_s=0.0) as log2:
        log2.line("10.0.0.2", "alice", "GET", "/first", 200, 1, 0.1)
        deadline = time.monotonic() + 10
        while log2._queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        for round_ in (60, 55):
            for i in range(round_):
                log2.line("10.0.0.2", "alice", "GET", f"/{i}", 200, 1, 0.1)
            stalled.set()
            assert log2.flush(timeout=10)
            stalled.clear()
            log2.line("10.0.0.2", "alice", "GET", "/holds", 200, 1, 0.1)
            while log2._queue.qsize() and time.monotonic() < deadline:
                time.sleep(0.01)
        stalled.set()
    warnings = [x for x in file.read_text().splitlines(keepends=True) if "WARNING" in x]
    assert [int(w.split(": ")[1].split()[0]) for w in warnings] == [30, 10, 5], warnings


def test_after_close_lines_are_dropped_and_nothing_waits(log_file):
    fd, file = log_file
    log = AccessLog(fd)
    log.line("10.0.0.2", "alice", "GET", "/before", 200, 1, 0.1)
    log.close()
    log.line("10.0.0.2", "alice", "GET", "/after", 200, 1, 0.1)
    assert not log._writer.is_alive() and log._queue.qsize() == 0
    assert [LINE.fullmatch(x).group(4) for x in file.read_text().splitlines(keepends=True)] == ["/before"]


def test_the_writer_gathers_what_comes_in_its_interval_into_one_write(log_file, monkeypatch):
    """Lines arriving while the writer waits out its interval go out together: one write, not one each."""
    fd, file = log_file
    real, writes = os.write, []
    monkeypatch.setattr(os, "write", lambda f, data: writes.append(data) or real(f, data))
    with AccessLog(fd, flush_every_s=0.5) as log:
        log.line("10.0.0.2", "alice", "GET", "/0", 200, 1, 0.1)
        deadline = time.monotonic() + 10
        while log._queue.qsize() and time.monotonic() < deadline:      # the writer took /0, waits
            time.sleep(0.005)
        for i in range(1, 20):
            log.line("10.0.0.2", "alice", "GET", f"/{i}", 200, 1, 0.1)
        assert log.flush(timeout=10)
    assert len(writes) == 1 and writes[0].count(b"\n") == 20


def test_a_batch_that_fails_is_counted_and_the_writer_goes_on(log_file):
    """Any error in a batch (here the clock of its WARNING line) costs that batch, counted and told of
    later; flush() still returns and later lines are written."""
    fd, file = log_file
    fail = threading.Event()

    def clock():
        if fail.is_set() and threading.current_thread().name == "access-log":
            fail.clear()
            raise RuntimeError("clock")
        return 1764642000.5
    with AccessLog(fd, clock=clock, flush_every_s=0.0) as log:
        log.line("10.0.0.2", "alice", "GET", "/ok", 200, 1, 0.1)
        assert log.flush(timeout=10)
        with log._dropped_lock:
            log.dropped += 2                    # as if two lines had found the queue full
        fail.set()                              # the WARNING line for them fails, with this batch
        log.line("10.0.0.2", "alice", "GET", "/lost", 200, 1, 0.1)
        assert log.flush(timeout=10) and log._writer.is_alive()
        assert log.dropped == 3
        log.line("10.0.0.2", "alice", "GET", "/after", 200, 1, 0.1)
        assert log.flush(timeout=10)
    lines = file.read_text().splitlines(keepends=True)
    assert [LINE.fullmatch(x).group(4) for x in lines if "INFO" in x] == ["/ok", "/after"]
    assert [re.fullmatch(WARNING.format(3), x) is not None for x in lines if "WARNING" in x] == [True]


def test_flush_after_close_and_close_of_a_blocked_log_return(tmp_path):
    r, w = os.pipe()
    os.set_blocking(w, True)
    try:
        log = AccessLog(w, flush_every_s=0.0)
        for i in range(2000):                    # more than the pipe holds, and nobody reads it
            log.line("10.0.0.2", "alice", "GET", f"/{i:0100d}", 200, 1, 0.1)
        started = time.monotonic()
        log.close(timeout=0.5)
        assert time.monotonic() - started < 5
        assert log.flush(timeout=None) is False
    finally:
        os.close(r)                              # the blocked write fails (EPIPE); the writer ends
        log._writer.join(10)
        os.close(w)
    assert not log._writer.is_alive()


def test_a_queued_line_holds_no_more_of_its_fields_than_its_line_shows(log_file, monkeypatch):
    """The queue holds a request's fields until the writer formats them: each cut to what the line
    shows (a request line may be far longer), so MAX_QUEUED waiting lines stay within the docstring's
    bound."""
    import tracemalloc
    fd, file = log_file
    real, entered, stalled = os.write, threading.Event(), threading.Event()

    def stalling(f, data):
        entered.set()
        stalled.wait()
        return real(f, data)
    monkeypatch.setattr(os, "write", stalling)
    with AccessLog(fd, flush_every_s=0.0) as log:
        try:
            log.line("10.0.0.2", "alice", "GET", "/first", 200, 1, 0.1)
            assert entered.wait(10)                                     # the writer holds /first
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for i in range(100):
                    # Made here, each its own object, freed when the loop moves on: only cut copies stay.
                    n = str(i)
                    log.line(n + "a" * 20_000, n + "u" * 20_000, n + "M" * 20_000, n + "x" * 100_000,
                             200, 1, 0.1)
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert log._queue.qsize() == 100
            assert held < 100 * 4096 + 200_000, held    # cut fields (under 2 KB a line) and the last strings
        finally:
            stalled.set()
    lines = file.read_text().splitlines()
    assert len(lines) == 101
    for i, text in enumerate(lines[1:]):
        remote, user, method, path = LINE.fullmatch(text + "\n").group(1, 2, 3, 4)
        assert (remote, user, method) == (str(i) + "a" * (64 - len(str(i))), str(i) + "u" * (64 - len(str(i))),
                                          str(i) + "M" * (16 - len(str(i))))
        assert path == str(i) + "x" * (access_log.PATH_LIMIT - len(str(i)))


def test_a_line_that_cannot_be_made_is_counted_and_the_others_are_written(log_file):
    """A field that is not text (a caller's bug) costs its own line, counted and told of, not the
    lines queued with it."""
    fd, file = log_file
    with AccessLog(fd, flush_every_s=0.5) as log:
        log.line("10.0.0.2", "alice", "GET", "/before", 200, 1, 0.1)
        log.line("10.0.0.2", "alice", "GET", b"/bytes", 200, 1, 0.1)      # type: ignore[arg-type]
        log.line("10.0.0.2", "alice", "GET", "/after", 200, 1, 0.1)
        assert log.flush(timeout=10)
        assert log.dropped == 1
        log.line("10.0.0.2", "alice", "GET", "/next", 200, 1, 0.1)
        assert log.flush(timeout=10)
    lines = file.read_text().splitlines(keepends=True)
    assert [LINE.fullmatch(x).group(4) for x in lines if "INFO" in x] == ["/before", "/after", "/next"]
    assert [re.fullmatch(WARNING.format(1), x) is not None for x in lines if "WARNING" in x] == [True]
