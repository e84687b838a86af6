"""`openseg-lan --config F`: the LAN process.

Start-up, in order. A problem in steps 1-5 stops the process with exit code 2 and one line on
stderr naming the config key or file at fault; nothing is listening yet at that point.
  1. log to stderr, one event a line      5. bind the channel socket (the receiver's only socket)
  2. read the config                      6. serve HTTPS (the only TCP socket), start the receiver
  3. load the users file                  7. until SIGTERM/SIGINT: feed systemd's watchdog while a
  4. TLS context; the port is free           probe gets through and the receiver runs; then stop both
Between 4 and 5 the history store in `[lan] state_dir` is checked and pruned (history_store). A disk
that does not allow it (read-only, full, missing directory, damaged file that cannot be moved aside)
does not stop the process: it serves without history, says so in /api/v1/status and on the page, and
the receiver thread tries again (history_keeper).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from typing import Callable

import cherrypy

from openseg.shared_schema import config as config_schema
from openseg.shared_schema import sd_notify

from .accounts import cert_dates
from .http import cert_names, tls
from .http.access_log import AccessLog
from .http.app import PROBE_HEADER, LanApp
from .http.auth import Authenticator
from .http.worker_pool import LastIdleFirstPool
from .state.channel_receiver import ChannelReceiver
from .state.history_keeper import HistoryKeeper
from .state.history_store import open_history
from .state.readings import Readings
from .accounts.users_file import UsersFileError, UsersStore

log = logging.getLogger("openseg.lan")

# HTTP server limits. No request we serve has a body, and a Basic header is < 1 KiB. Every connection
# holds a worker while it handshakes (up to HANDSHAKE_TIMEOUT_S) and while it sends its request (up to
# SOCKET_TIMEOUT_S between bytes), so the pool must outnumber the idle and slow clients a home LAN may
# throw at it: 128 workers serve a real client at once beside 50 slow-header clients and 20 idle TCP
# connections (tests/system/test_abuse_lan.py). Cost, measured with cheroot's own pool: 53.7 MB RSS at rest
# (52.8 MB with 32), 57.5 MB with all of them held. Work goes to the worker that went idle last (http/worker_pool.py), so the
# workers a moment's load does not need stay as they started instead of each gathering per-thread state.
# The accept loop itself never waits on a client (tls.WorkerHandshakeAdapter).
THREAD_POOL = 128
SOCKET_TIMEOUT_S = 10
HANDSHAKE_TIMEOUT_S = 5.0
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024
LISTEN_BACKLOG = 64
SHUTDOWN_TIMEOUT_S = 3


class StartupError(Exception):
    """A problem with the installation; the message names the key or file."""


class OneLineFormatter(logging.Formatter):
    """One event per line, even with a traceback, so journald/grep see whole events."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "").replace("\n", " | ")


class _NoCherryPyTimestamp(logging.Filter):
    """CherryPy prefixes its messages with its own "[24/Nov/2026:13:30:32] "; ours is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = re.sub(r"^\[[^\]]*\] ", "", record.msg)
        return True


def setup_logging(level: int = logging.INFO) -> None:
    # The access log, one line per request, does not come through here, nor does `level` apply to it
    # (http/access_log.py).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    for name in ("openseg", "cherrypy.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("cherrypy.error").addFilter(_NoCherryPyTimestamp())


def _warn_if_readable_by_others(path: str, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        log.warning("%s %s is readable by other users (mode %o); chmod 600 it", what, path, mode & 0o777)


def _warn_if_expiring(cert_path: str, config_path: str) -> None:
    try:
        with open(cert_path, encoding="ascii", errors="replace") as f:
            expires = cert_dates.not_after(f.read())
    except (OSError, ValueError):
        return
    left = expires - dt.datetime.now(dt.timezone.utc)
    renew = f"openseg-admin cert renew --config {config_path}, then restart"
    if left <= dt.timedelta(0):
        log.error("TLS certificate %s expired on %s; clients will refuse it (%s)",
                  cert_path, expires.date(), renew)
    elif left < dt.timedelta(days=30):
        log.warning("TLS certificate %s expires on %s (%s)", cert_path, expires.date(), renew)


MALLOC_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
TCACHE_OFF = "glibc.malloc.tcache_count=0"      # what the unit's GLIBC_TUNABLES holds


def _log_malloc_settings(environ=os.environ) -> None:
    """Say whether glibc runs with the unit's malloc settings: without them freed memory stays with
    the process (an arena per busy thread, a login's 16 MiB hash kept once glibc has raised its mmap
    threshold, freed blocks cached per thread), so the LAN's memory figures (bench/RESULTS.md) do not
    hold."""
    unset = [name for name in MALLOC_SETTINGS if not environ.get(name)]
    if "GLIBC_TUNABLES" not in unset and TCACHE_OFF not in environ["GLIBC_TUNABLES"].split(":"):
        unset.append(f"GLIBC_TUNABLES with {TCACHE_OFF}")
    if unset:
        log.warning("glibc malloc: %s not set, so freed memory stays with the process; the unit "
                    "(deploy/openseg-lan.service) and `make run` set them all", ", ".join(unset))
    else:
        log.info("glibc malloc: %s", " ".join(f"{name}={environ[name]}" for name in MALLOC_SETTINGS))


def _access_log() -> AccessLog:
    """The access log on standard error (the journal under systemd). Started without one (fd 2 closed,
    so sys.stderr is None), fd 2 may be any file opened since, so the lines go nowhere instead."""
    if sys.stderr is None:
        return AccessLog(os.open(os.devnull, os.O_WRONLY))
    return AccessLog(sys.stderr.fileno())


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise StartupError(f"[lan] port: cannot listen on {host}:{port}: {exc.strerror}") from None


def default_base_url(bind: str, port: int) -> str:
    ip = ipaddress.ip_address(bind)
    host = socket.gethostname() if ip.is_unspecified else (f"[{ip}]" if ip.version == 6 else str(ip))
    return f"https://{host}:{port}"


def load_installation(config_path: str):
    """Steps 1, 3, 4: config, users, TLS context. Raises ConfigError or StartupError."""
    cfg = config_schema.load(config_path)
    lan = cfg.lan
    try:
        users = UsersStore(lan["users_file"])
    except UsersFileError as exc:
        raise StartupError(f"[lan] users_file: {exc}") from None
    if not len(users):
        log.warning("users file %s has no users: nobody can log in (openseg-admin user add)",
                    lan["users_file"])
    try:
        log.info("TLS key-exchange groups: %s", tls.groups_source())
    except tls.TLSConfigError as exc:
        raise StartupError(f"TLS: {exc}") from None
    try:
        context = tls.server_context(lan["certificate"], lan["private_key"])
    except tls.TLSConfigError as exc:
        raise StartupError(f"[lan] certificate/private_key: {exc}") from None
    _warn_if_readable_by_others(lan["private_key"], "TLS private key")
    _warn_if_expiring(lan["certificate"], cfg.path)
    _warn_if_readable_by_others(lan["users_file"], "users file")
    return cfg, users, context


def configure_http(app: LanApp, lan: dict, context) -> None:
    tls.WorkerHandshakeAdapter.handshake_timeout_s = HANDSHAKE_TIMEOUT_S
    cherrypy.config.update({
        "environment": "production",        # no tracebacks, no autoreload, no screen log
        "engine.autoreload.on": False,
        "log.screen": False,
        "server.socket_host": lan["bind"],
        "server.socket_port": lan["port"],
        "server.socket_queue_size": LISTEN_BACKLOG,
        "server.socket_timeout": SOCKET_TIMEOUT_S,
        "server.thread_pool": THREAD_POOL,
        "server.max_request_header_size": MAX_HEADER_BYTES,
        "server.max_request_body_size": MAX_BODY_BYTES,
        "server.shutdown_timeout": SHUTDOWN_TIMEOUT_S,
        "server.ssl_module": tls.register_adapter(),
        "server.ssl_context": context,
        "server.ssl_certificate": lan["certificate"],
        "server.ssl_private_key": lan["private_key"],
    })
    # Through cherrypy.tree, though the app answers every path itself: the tree joins the path with
    # httputil.urljoin, collapsing '//', and the app's routes and ESPI's path segments rely on that.
    cherrypy.tree.graft(app, "")
    # The server made now rather than at engine start, to give it the worker pool that hands work to
    # the last idle worker (http/worker_pool.py says why); CherryPy keeps a server it is given.
    server = cherrypy.server
    server.httpserver, server.bind_addr = server.httpserver_from_self()
    server.httpserver.requests = LastIdleFirstPool(server.httpserver, THREAD_POOL)


def run(config_path: str) -> int:
    cfg, users, context = load_installation(config_path)
    lan, channel = cfg.lan, cfg.channel
    _check_port_free(lan["bind"], lan["port"])

    retention, history_log = lan["history_retention_days"], logging.getLogger("openseg.lan.history").info
    if retention == 0:
        history = open_history(lan["state_dir"], 0, log=history_log)   # None; deletes an earlier store
    else:
        history = HistoryKeeper(lan["state_dir"], retention, log=history_log)
    readings = Readings(stale_after_s=lan["stale_after_s"], history=history,
                        service_max_w=lan["service_max_w"], poll_interval_s=cfg.han["poll_interval_s"])
    han_uid = channel["han_uid"] if channel["han_uid"] is not None else os.getuid()
    channel_log = logging.getLogger("openseg.lan.channel").info
    receiver = ChannelReceiver(channel["socket_path"], han_uid, readings, channel_log, history)
    try:
        receiver.bind()
    except OSError as exc:
        raise StartupError(f"[channel] socket_path: cannot bind {channel['socket_path']}: "
                           f"{exc.strerror or exc}") from None

    _log_malloc_settings()          # after every check that can refuse to start: errors stay one line
    access_log = _access_log()
    app = LanApp(authenticator=Authenticator(users), readings=readings,
                 channel_counters=receiver.counters, lan_started=time.time(),
                 time_zone=lan["time_zone"], default_base_url=default_base_url(lan["bind"], lan["port"]),
                 link_hosts=cert_names.from_pem_file(lan["certificate"]), currency=lan["currency"],
                 access_log=access_log)
    configure_http(app, lan, context)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    receiver.start()
    try:
        cherrypy.engine.start()
        # Everything made so far (modules, configuration, the worker threads) lives as long as the
        # process: out of the cyclic collector's sight, a full collection has only newer objects to
        # walk (the start-up objects alone took 26 ms a collection, in a process that imported the
        # LAN), so supervise can afford one a minute. Collected first, so no start-up garbage is frozen.
        gc.collect()
        gc.freeze()
        log.info("serving %s on %s:%d (%d user(s))", default_base_url(lan["bind"], lan["port"]),
                 lan["bind"], lan["port"], len(users))
        sd_notify.notify("READY=1", sd_notify.status_text(f"serving HTTPS on {lan['bind']}:{lan['port']}"))
        return supervise(stop, receiver, Probe(lan["bind"], lan["port"], app.probe_token))
    finally:
        sd_notify.notify("STOPPING=1")
        cherrypy.engine.exit()
        receiver.stop()
        if history is not None:
            history.close()         # the receiver thread has ended: this thread may write now
        # The workers have stopped (or cheroot gave up on them after SHUTDOWN_TIMEOUT_S): write the
        # access lines still queued, waiting at most a moment for a standard error that blocks.
        access_log.close()
        log.info("stopped")


class Probe:
    """One real request through the request path: TCP accept, TLS handshake in a worker, the app.
    It carries no credentials, so the answer is a 401 (not access-logged: it carries the token)."""

    def __init__(self, bind: str, port: int, token: str):
        ip = ipaddress.ip_address(bind)
        self.host = ("::1" if ip.version == 6 else "127.0.0.1") if ip.is_unspecified else bind
        self.port, self.token = port, token
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE        # a liveness check of our own socket, not trust

    def problem(self, timeout: float) -> str | None:
        request = (f"GET / HTTP/1.1\r\nHost: {self.host}\r\n{PROBE_HEADER}: {self.token}\r\n"
                   "Connection: close\r\n\r\n").encode()
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as raw:
                with self.context.wrap_socket(raw) as s:
                    s.sendall(request)
                    answer = s.recv(64)
        except (OSError, ssl.SSLError) as exc:
            return f"the request path did not answer a probe: {exc}"
        if not answer.startswith(b"HTTP/1.1 401"):
            return f"unexpected answer to a probe: {answer[:30]!r}"
        return None


CYCLES_EVERY_S = 60.0


def collect_cycles() -> bool:
    """A full cyclic collection, if a younger one has run since the last (something was allocated).

    cheroot's connection objects are reference cycles (each HTTPConnection wraps its own bound methods
    in lru_cache), so a closed connection is freed only by a collection of the oldest generation, which
    CPython runs when the long-lived objects have grown by a quarter: under the bench's load every 15
    minutes or more, with every connection closed meanwhile kept. Collecting each minute keeps one
    minute's. It bounds that garbage; it did not change the slow growth of the hour of memory
    (bench/RESULTS.md, issue 16, notes of (5)), which has another cause."""
    if gc.get_count()[2] == 0:
        return False
    gc.collect()
    return True


def supervise(stop: threading.Event, receiver: ChannelReceiver, probe: Probe, *,
              monotonic: Callable[[], float] = time.monotonic) -> int:
    """Wait for SIGTERM/SIGINT; collect cyclic garbage every CYCLES_EVERY_S. Under systemd's watchdog,
    every WatchdogSec/4 probe the request path and check the receiver thread; WATCHDOG=1 goes out only
    while both are fine (sd_notify.Watchdog)."""
    dog = sd_notify.Watchdog({"http", "channel"})
    every = dog.interval / 4 if dog.armed else 5.0
    reported: str | None = None
    next_collection = monotonic() + CYCLES_EVERY_S
    while not stop.wait(every):
        if cherrypy.engine.state != cherrypy.engine.states.STARTED:
            log.error("the HTTP engine stopped unexpectedly")
            return 1
        if monotonic() >= next_collection:
            collect_cycles()
            next_collection = monotonic() + CYCLES_EVERY_S
        if not dog.armed:
            continue
        problems = []
        if (problem := probe.problem(timeout=every)) is None:
            dog.beat("http")
        else:
            problems.append(problem)
        if receiver.alive():
            dog.beat("channel")
        else:
            problems.append("the channel receiver thread is not turning (stopped or blocked)")
        now = "; ".join(problems) or None
        if now != reported:
            if now:
                log.error("unhealthy, withholding the watchdog: %s", now)
            else:
                log.info("healthy again")
            reported = now
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openseg-lan", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the gateway's TOML config file")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        return run(args.config)
    except (config_schema.ConfigError, StartupError) as exc:
        print(f"openseg-lan: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
