"""The access log (openseg/lan_server/http/access_log.py): the line every other logger would write, on
one write of its own, which a client cannot forge and a failing or short write cannot break."""
from __future__ import annotations

import io
import logging
import os
import re
import time

import pytest

from openseg.lan_server.http.access_log import AccessLog
from openseg.lan_server.main import OneLineFormatter

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
    fast = AccessLog(fd, clock=iter(times).__next__)
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
    AccessLog(fd).line("10.0.0.2", "alice", "GET", path, 404, 23, 0.3)
    text = file.read_text()
    m = LINE.fullmatch(text)
    assert m and m.group(4) == shown and m.group(5) == "404" and text.count("\n") == 1


def test_a_short_write_is_finished(log_file, monkeypatch):
    fd, file = log_file
    real = os.write
    monkeypatch.setattr(os, "write", lambda f, data: real(f, data[:7]))     # a signal cut each write short
    AccessLog(fd, clock=lambda: 1764642000.5).line("10.0.0.2", "alice", "GET", "/api/v1/current", 200, 151, 0.4)
    monkeypatch.undo()
    assert LINE.fullmatch(file.read_text())


def test_a_log_that_cannot_be_written_does_not_break_the_request():
    """The journal gone (a pipe nobody reads) or standard error closed: the line is dropped, the
    request still answered (line returns)."""
    r, w = os.pipe()
    os.close(r)
    try:
        AccessLog(w).line("10.0.0.2", "alice", "GET", "/", 200, 1, 0.1)      # EPIPE
    finally:
        os.close(w)
    AccessLog(w).line("10.0.0.2", "alice", "GET", "/", 200, 1, 0.1)          # EBADF: closed
