"""The LAN's worker pool hands each connection to the worker that went idle last (worker_pool.py), in a
real cheroot server: sequential clients are all served by one worker, where cheroot's own pool would
rotate them through every worker; and the pool still stops."""
import http.client
import threading
import time

from cheroot import wsgi
from cheroot.workers.threadpool import ThreadPool

from openseg.lan_server.http.worker_pool import LastIdleFirst, LastIdleFirstPool


def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_the_last_worker_to_wait_gets_the_next_item_and_items_keep_their_order():
    q = LastIdleFirst()
    got: dict[str, object] = {}
    workers = []
    for name in ("a", "b", "c"):
        t = threading.Thread(target=lambda n=name: got.__setitem__(n, q.get()), daemon=True)
        t.start()
        workers.append(t)
        _wait(lambda k=len(workers): q.idle() == k, f"{name} to wait")
    q.put("first")
    _wait(lambda: "c" in got, "c to be served")
    assert got == {"c": "first"}                    # c went idle last
    q.put("second")
    _wait(lambda: "b" in got, "b to be served")
    assert got == {"c": "first", "b": "second"}
    q.put("third")
    workers[0].join(10)
    assert got["a"] == "third"
    for item in ("x", "y", "z"):                      # nobody waiting: queued in arrival order
        q.put(item)
    assert q.qsize() == 3 and [q.get(), q.get(), q.get()] == ["x", "y", "z"]


def test_sequential_clients_stay_on_one_worker_in_a_real_server():
    """Each request starts once every worker waits again, so the choice is the pool's alone: cheroot's
    own pool would give each to the worker idle longest (8 workers in turn); this one, to the last."""
    def app(environ, start_response):
        body = threading.current_thread().name.encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    server = wsgi.Server(("127.0.0.1", 0), app, numthreads=8)
    server.requests = pool = LastIdleFirstPool(server, 8)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        names = []
        for _ in range(24):
            _wait(lambda: pool.waiting() == 8, "every worker to wait")
            conn = http.client.HTTPConnection("127.0.0.1", server.bind_addr[1], timeout=10)
            conn.request("GET", "/", headers={"Connection": "close"})    # no keep-alive: one handoff each
            names.append(conn.getresponse().read().decode())
            conn.close()
        assert len(names) == 24 and len(set(names)) == 1, names
        assert isinstance(pool, ThreadPool) and pool.min == 8
    finally:
        server.stop()
        thread.join(10)
    assert not thread.is_alive()
    _wait(lambda: not [t for t in pool._threads if t.is_alive()], "the workers to stop")
