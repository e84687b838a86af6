"""The throughput benchmark's reference: a bare CherryPy HTTPS server with exactly the LAN server's TLS
and HTTP settings (openseg.lan_server.http.tls.server_context, the worker-handshake SSL adapter, and the same
CherryPy configuration: thread pool, timeouts, limits), and no application work at all.

    python bench/bare_server.py --port N --certificate cert.pem --private-key key.pem [--reply reply.json]
                                [--busy-us US]

With --reply it answers every request with the status, headers and body in that file (common.capture_reply:
one answer of the LAN server, recorded in the same run), so the server sends, and the clients parse, exactly
what they do against the LAN: the difference is the LAN's own work per request. Without it, "hello".
With --busy-us it first spends US microseconds of pure-Python CPU on each request: what that much
application work costs in this server under load, beside what it costs in a loop on its own (the
interpreter lock's hand-offs between cheroot's threads multiply it; bench/RESULTS.md, issue 16).
Stops on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cherrypy  # noqa: E402

from openseg.lan_server import main as lan_main  # noqa: E402
from openseg.lan_server.http import tls  # noqa: E402

BODY = b"hello\n"


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def replay(reply: dict):
    """A WSGI callable that answers every request with `reply` (status, headers, hex body)."""
    status, headers, body = reply["status"], [tuple(h) for h in reply["headers"]], bytes.fromhex(reply["body"])

    def app(environ, start_response):
        start_response(status, headers)
        return [body]
    return app


def busy(app, us: float):
    """`app` after `us` microseconds of this thread's CPU spent in the interpreter (a loop reading the
    thread's CPU clock, so time the thread spends preempted does not count)."""
    seconds = us / 1e6

    def busy_app(environ, start_response):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        return app(environ, start_response)
    return busy_app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--certificate", required=True)
    ap.add_argument("--private-key", required=True)
    ap.add_argument("--reply", help="JSON file: the answer to replay (status, headers, hex body)")
    ap.add_argument("--busy-us", type=float, default=0.0, help="microseconds of Python CPU per request first")
    args = ap.parse_args()
    app = replay(json.loads(open(args.reply).read())) if args.reply else hello
    if args.busy_us > 0:
        app = busy(app, args.busy_us)
    context = tls.server_context(args.certificate, args.private_key)
    lan = {"bind": "127.0.0.1", "port": args.port, "certificate": args.certificate,
           "private_key": args.private_key}
    lan_main.configure_http(app, lan, context)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cherrypy.engine.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        cherrypy.engine.exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
