"""openseg-lan's own helpers, in this process (the process itself: tests/system/test_openseg_lan.py)."""
from __future__ import annotations

import logging

import pytest

from openseg.lan_server import main as lan_main


@pytest.mark.parametrize("environ, unset", [
    ({}, "MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES not set"),
    ({"MALLOC_ARENA_MAX": "2"}, "MALLOC_MMAP_THRESHOLD_, GLIBC_TUNABLES not set"),
    ({"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}, "GLIBC_TUNABLES not set"),
    ({"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
     "GLIBC_TUNABLES with glibc.malloc.tcache_count=0 not set")])
def test_without_the_malloc_settings_the_log_warns(environ, unset, caplog):
    with caplog.at_level(logging.INFO, logger="openseg.lan"):
        lan_main._log_malloc_settings(environ)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and unset in caplog.records[0].getMessage()


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


def test_supervise_collects_cycles_once_a_minute(monkeypatch):
    """supervise wakes every 5 s (no watchdog here) and runs collect_cycles when a minute has passed
    since the last, by its monotonic clock."""
    import cherrypy

    now = [0.0]
    collections = []

    class Stop:
        """threading.Event's wait, on the test's clock: 5 s pass per wake; set after 150 s."""
        def wait(self, timeout):
            now[0] += timeout
            return now[0] > 150

    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.setattr(cherrypy.engine, "state", cherrypy.engine.states.STARTED)
    monkeypatch.setattr(lan_main, "collect_cycles", lambda: collections.append(now[0]))
    assert lan_main.supervise(Stop(), receiver=None, probe=None, monotonic=lambda: now[0]) == 0
    assert collections == [60.0, 120.0]


def test_the_unit_s_tunables_with_others_beside_them_are_enough(caplog):
    environ = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
               "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.tcache_count=0"}
    with caplog.at_level(logging.INFO, logger="openseg.lan"):
        lan_main._log_malloc_settings(environ)
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_configure_http_gives_the_server_the_last_idle_first_pool(tmp_path):
    """The pool is installed where CherryPy serves from: the server configure_http leaves behind."""
    import cherrypy
    from openseg.lan_server.accounts import certs
    from openseg.lan_server.http import tls
    from openseg.lan_server.http.worker_pool import LastIdleFirstPool
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    certs.write_identity(key, cert)
    lan = {"bind": "127.0.0.1", "port": 0, "certificate": cert, "private_key": key}
    try:
        lan_main.configure_http(lambda environ, start_response: [], lan, tls.server_context(cert, key))
        pool = cherrypy.server.httpserver.requests
        assert isinstance(pool, LastIdleFirstPool) and pool.min == pool.max == lan_main.THREAD_POOL
        assert cherrypy.server.httpserver.ssl_adapter is not None
    finally:
        cherrypy.server.httpserver = None
        cherrypy.tree.apps.clear()
