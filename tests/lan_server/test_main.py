"""openseg-lan's own helpers, in this process (the process itself: tests/system/test_openseg_lan.py)."""
from __future__ import annotations

import logging
import os

import pytest

from openseg.lan_server import main as lan_main


@pytest.mark.parametrize("environ, unset", [({}, "MALLOC_ARENA_MAX and MALLOC_MMAP_THRESHOLD_ not set"),
                                            ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_MMAP_THRESHOLD_ not set")])
def test_without_the_malloc_settings_the_log_warns(environ, unset, caplog):
    with caplog.at_level(logging.INFO, logger="openseg.lan"):
        lan_main._log_malloc_settings(environ)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and unset in caplog.records[0].getMessage()


def test_access_lines_are_the_lines_every_other_logger_writes(tmp_path):
    """AccessLog (the per-request line, outside the logging module) writes exactly what OneLineFormatter
    on a StreamHandler writes for the same message at the same time: one format for grep and journald,
    whichever wrote it."""
    import io

    from openseg.lan_server.http.access_log import AccessLog
    plain = io.StringIO()
    reference = logging.StreamHandler(plain)
    reference.setFormatter(lan_main.OneLineFormatter())
    times = [1764642000.0, 1764642000.999, 1764642001.5, 1764645600.25]
    fd = os.open(tmp_path / "access.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fast = AccessLog(fd, clock=iter(times).__next__)
        for created in times:
            fast.line("10.0.0.2", "alice", "GET", "/api/v1/current", 200, 151, 0.4)
            record = logging.makeLogRecord({"name": "openseg.lan.access", "levelno": logging.INFO,
                                            "levelname": "INFO", "msg": '%s %s "%s %s" %d %d %.1fms',
                                            "args": ("10.0.0.2", "alice", "GET", "/api/v1/current", 200, 151, 0.4),
                                            "created": created,
                                            "msecs": int((created - int(created)) * 1000) + 0.0})
            reference.handle(record)
    finally:
        os.close(fd)
    written = (tmp_path / "access.log").read_text()
    assert written == plain.getvalue() and written.count("\n") == 4


def test_collect_cycles_frees_old_cyclic_garbage_a_younger_collection_leaves():
    """What supervise runs each minute: a cycle that reached the oldest generation (as a keep-alive
    connection does) and then died is freed by it, not by the younger collections CPython runs often."""
    import gc
    import weakref

    class Connection:
        pass

    was_enabled = gc.isenabled()
    gc.disable()            # no automatic collection in between
    try:
        gc.collect()
        assert lan_main.collect_cycles() is False             # nothing allocated since: nothing to do
        conn = Connection()
        conn.me = conn                                # a cycle, like cheroot's HTTPConnection
        ref = weakref.ref(conn)
        gc.collect(1)                                 # it survives a younger collection: now oldest
        del conn
        gc.collect(1)
        assert ref() is not None                      # younger collections do not look at it
        assert lan_main.collect_cycles() is True and ref() is None
    finally:
        if was_enabled:
            gc.enable()
