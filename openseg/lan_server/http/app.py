"""The LAN web application: authenticate, dispatch, add the security headers. A plain WSGI callable.

CherryPy serves it (main.py grafts it onto cherrypy.tree), but it deliberately does not use
CherryPy's handler machinery: every response, including 401/404/500, is built here, so no framework
error page can leak a version or a traceback, and one function shows the whole request path:

    auth (401/429)  ->  method (405)  ->  [an answer that still stands]  ->  query (400)  ->  route (404)
                    ->  resource (web_resources)  ->  headers

The routes are one table, LanApp.EXACT_ROUTES and PREFIX_ROUTES.

Every path requires authentication, even unknown ones, so nothing about the server is visible before
login. The ESPI resources get the authenticated user's subscription and decide 403/404 themselves.
"""
from __future__ import annotations

import hmac
import http
import ipaddress
import json
import logging
import os
import re
import secrets
import time
import urllib.parse
import zlib
from typing import Any, Callable, Mapping, NamedTuple, Protocol

from ..accounts.users_file import User
from .access_log import AccessLog, printable
from .auth import WWW_AUTHENTICATE, Authenticator
from . import web_resources
from .web_resources import NO_STORE, Response

log = logging.getLogger("openseg.lan.http")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
ESPI_PREFIX = "/espi/1_1/resource/"

# The page loads its own JS/CSS from 'self' and fetch()es the API; nothing inline, no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Server": "OpenSEG",
}
_SECURITY_KEYS = {name.lower() for name in SECURITY_HEADERS}
_STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in http.HTTPStatus}
_SECURITY_ITEMS = [(name.lower(), (name, value)) for name, value in SECURITY_HEADERS.items()]
STATIC_CACHE = "private, no-cache"    # the page itself: may be kept, but revalidated

# The kinds of file static/ holds (tests/lan_server/http/test_app.py checks the two agree); any other name is a 404.
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_STATIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?")
MAX_QUERY_FIELDS = 32
BASE_URL_CACHE = 64
PREPARED_ANSWERS = 64
STANDING_ANSWERS = 64
PROBE_HEADER = "X-OpenSEG-Probe"
_PROBE_KEY = "HTTP_" + PROBE_HEADER.upper().replace("-", "_")      # its WSGI environ key
# gzip where it pays: the page's JSON and its own files, from 1 KiB up (a day of chart data, 170 KB,
# is ~25 KB gzipped; a current value, ~150 bytes, would grow). Not the ESPI Atom: Download My Data is
# megabytes, read on the LAN, where a small board's CPU costs more than the bytes.
GZIP_TYPES = {"application/json", "text/javascript; charset=utf-8", "text/css; charset=utf-8",
              "text/html; charset=utf-8", "image/svg+xml"}
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 6




def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, "text/plain; charset=utf-8", (message + "\n").encode(), headers or {})


def _accepts_gzip(header: str) -> bool:
    """RFC 9110 12.5.3: gzip (or *) listed without q=0."""
    for item in header.lower().split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.replace(" ", "")
            return not (q.startswith("q=0") and q.strip("q=0.") == "")
    return False


def _gzipped(reply: Response) -> Response:
    gz = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = gz.compress(reply.body) + gz.flush()
    return Response(reply.status, reply.content_type, body,
                    {**reply.headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"})


class BadRequest(Exception):
    pass


def parse_query(query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                                       max_num_fields=MAX_QUERY_FIELDS, errors="strict")
    except ValueError:
        raise BadRequest(f"bad query string (at most {MAX_QUERY_FIELDS} parameters, UTF-8)") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise BadRequest(f"parameter {key!r} given more than once")
        params[key] = value
    return params


class Request(NamedTuple):
    """An authenticated GET or HEAD, as a route handler sees it. (A named tuple: made on every request,
    at a fraction of a frozen dataclass's cost.)"""
    environ: dict
    rest: str                   # the path after a prefix route's prefix; "" for an exact route
    params: dict[str, str]
    user: User


class Resources(Protocol):
    """The pure answer builders the app calls: the web_resources module itself, or a test's stand-in."""
    def current_json(self, readings: Any, /) -> Response: ...
    def status_json(self, readings: Any, channel_counters: dict, lan_started: float, /) -> Response: ...
    def metrics_text(self, readings: Any, channel_counters: dict, lan_started: float, /) -> Response: ...
    def history_json(self, readings: Any, params: Mapping[str, Any], /) -> Response: ...
    def espi(self, readings: Any, *, path: str, params: Mapping[str, str], subscription: str,
             base_url: str, time_zone: str, currency: int = ...) -> Response: ...


class LanApp:
    def __init__(self, *, authenticator: Authenticator, readings: Any, access_log: AccessLog,
                 channel_counters: Callable[[], dict], lan_started: float, time_zone: str,
                 default_base_url: str, static_dir: str = STATIC_DIR, resources: Resources | None = None,
                 link_hosts: frozenset[str] = frozenset(), currency: int | None = None):
        self.auth = authenticator
        self.access_log = access_log        # one line per request (main: on standard error)
        self.readings = readings
        self.channel_counters = channel_counters
        self.lan_started = lan_started
        self.time_zone = time_zone
        self.default_base_url = default_base_url.rstrip("/")
        # Host names a request may have its ESPI links point at: the certificate's (cert_names).
        self.link_hosts = frozenset(h.lower() for h in link_hosts)
        # [lan] currency for ESPI ReadingTypes; None: espi.feed's default.
        self.espi_options = {} if currency is None else {"currency": currency}
        self.static_dir = os.path.realpath(static_dir)
        # The pure resource builders (ESPI Atom, JSON); injectable so the app is testable alone.
        self.resources: Resources = web_resources if resources is None else resources
        # main.Probe's header: its requests are answered like any other, just not access-logged.
        self.probe_token = secrets.token_urlsafe(24)
        # Host header -> links' base URL: the same few hosts on every request; parsing an address each
        # time was a twentieth of a request's cost. Bounded: emptied when full (any client can send
        # any Host).
        self._base_urls: dict[str, str] = {}
        # (path, subscription, Host) -> the answer that stood for it: see _authorized. Bounded:
        # emptied when full.
        self._standing: dict[tuple[str, str, str], Response] = {}
        # id(answer) -> (answer, status line, headers): see _prepared.
        self._wire: dict[int, tuple[Response, str, list[tuple[str, str]]]] = {}

    # -- WSGI entry ------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        remote = environ.get("REMOTE_ADDR", "")
        user_name = "-"
        try:
            decision = self.auth.check(remote, environ.get("HTTP_AUTHORIZATION"))
            if decision.ok:
                user_name = decision.user.name
                reply = self._authorized(environ, method, path, decision.user)
            elif decision.retry_after_s:
                reply = _text(429, f"too many failed logins; retry after {decision.retry_after_s} s",
                              {"Retry-After": str(decision.retry_after_s)})
            else:
                reply = _text(401, "authentication required", {"WWW-Authenticate": WWW_AUTHENTICATE})
        except Exception:
            log.exception("internal error on %s %s", method, printable(path))
            reply = _text(500, "internal error")

        if (len(reply.body) >= GZIP_MIN_BYTES and reply.content_type in GZIP_TYPES
                and _accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", ""))):
            reply = _gzipped(reply)
        status, headers = self._prepared(reply)
        start_response(status, list(headers))     # a copy: PEP 3333 lets the server change the list
        probe = environ.get(_PROBE_KEY, "")
        if not (probe and hmac.compare_digest(probe.encode("utf-8", "surrogateescape"),
                                              self.probe_token.encode())):
            self.access_log.line(remote, user_name, method, path, reply.status, len(reply.body),
                                 (time.perf_counter() - started) * 1000)
        return [] if method == "HEAD" else [reply.body]

    def _prepared(self, reply: Response) -> tuple[str, list[tuple[str, str]]]:
        """The status line and header list for `reply`. Kept for an answer that stands (Response.stands:
        a current value, the same Response for every request until the next reading), so the hottest
        answer is not re-assembled each request: every microsecond held under the interpreter lock
        costs several in a loaded server (bench/RESULTS.md, issue 16). Keyed by identity; the entry
        holds the answer, so its id cannot be reused while it is kept. Bounded: emptied when full."""
        held = self._wire.get(id(reply))
        if held is not None and held[0] is reply:
            return held[1], held[2]
        status = _STATUS_LINES.get(reply.status) or f"{reply.status} {http.HTTPStatus(reply.status).phrase}"
        headers = self._headers(reply)
        if reply.stands is None:
            return status, headers
        if len(self._wire) >= PREPARED_ANSWERS:
            self._wire.clear()
        self._wire[id(reply)] = (reply, status, headers)
        return status, headers

    def _headers(self, reply: Response) -> list[tuple[str, str]]:
        out = {"content-type": ("Content-Type", reply.content_type),
               "content-length": ("Content-Length", str(len(reply.body)))}
        for name, value in reply.headers.items():
            key = name.lower()
            if "\r" in value or "\n" in value or key in out or key in _SECURITY_KEYS:
                log.error("dropped response header %s", printable(name))
                continue
            out[key] = (name, value)
        for name, value in NO_STORE.items():    # measurements and errors: never kept by any cache
            out.setdefault(name.lower(), (name, value))
        out.update(_SECURITY_ITEMS)
        return list(out.values())

    # -- after authentication ------------------------------------------------------------------
    def _authorized(self, environ: dict, method: str, path: str, user: User) -> Response:
        if method not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD", {"Allow": "GET, HEAD"})
        query = environ.get("QUERY_STRING")
        standing = None
        if not query:
            # An answer that stands (Response.stands: a current value until the next reading) is
            # the answer to the same path, subscription and Host until it no longer stands, so it
            # is handed out again without routing or building: the most requested answer's whole
            # cost, after authentication, is this lookup and its check (bench/RESULTS.md, issue 16).
            standing = (path, user.subscription, environ.get("HTTP_HOST", ""))
            held = self._standing.get(standing)
            if held is not None and held.stands():
                return held
        try:
            params = parse_query(query) if query else {}
        except BadRequest as exc:
            return _text(400, str(exc))
        handler, rest = self.EXACT_ROUTES.get(path), ""
        if handler is None:
            for prefix, handler in self.PREFIX_ROUTES:
                if path.startswith(prefix):
                    rest = path[len(prefix):]
                    break
            else:
                return _text(404, "no such resource")
        reply = handler(self, Request(environ, rest, params, user))
        if reply.stands is not None and standing is not None:
            if len(self._standing) >= STANDING_ANSWERS:
                self._standing.clear()
            self._standing[standing] = reply
        return reply

    def _page(self, req: Request) -> Response:
        return self._static("index.html")

    def _static_file(self, req: Request) -> Response:
        return self._static(req.rest)

    def _current(self, req: Request) -> Response:
        return self.resources.current_json(self.readings)

    def _status(self, req: Request) -> Response:
        return self.resources.status_json(self.readings, self.channel_counters(), self.lan_started)

    def _metrics(self, req: Request) -> Response:
        return self.resources.metrics_text(self.readings, self.channel_counters(), self.lan_started)

    def _history(self, req: Request) -> Response:
        return self.resources.history_json(self.readings, req.params)

    def _whoami(self, req: Request) -> Response:
        # The page builds its "Download my data" link from this.
        body = json.dumps({"username": req.user.name, "subscription": req.user.subscription}).encode()
        return Response(200, "application/json", body, dict(NO_STORE))

    def _espi_route(self, req: Request) -> Response:
        params, subscription = req.params, req.user.subscription
        # `download` is the page's "Download my data" switch, not an ESPI query parameter.
        download = params.pop("download", "0")
        if download not in ("0", "1"):
            return _text(400, "download: must be 0 or 1")
        reply = self.resources.espi(self.readings, path=req.rest, params=params, subscription=subscription,
                                    base_url=self._base_url(req.environ), time_zone=self.time_zone,
                                    **self.espi_options)
        if download == "1" and reply.status == 200:
            reply = Response(reply.status, reply.content_type, reply.body, {
                **reply.headers, "Content-Disposition": f'attachment; filename="openseg-{subscription}.xml"'})
        return reply

    # The HTTP answers, in one place: a path takes its exact route, else the first prefix route it starts
    # with (the handler gets the rest of the path), else 404. GET and HEAD only (405); a bad query is 400.
    EXACT_ROUTES: dict[str, Callable[[LanApp, Request], Response]] = {
        "/": _page,
        "/api/v1/current": _current,
        "/api/v1/status": _status,
        "/metrics": _metrics,
        "/api/v1/history": _history,
        "/api/v1/whoami": _whoami,
    }
    PREFIX_ROUTES: tuple[tuple[str, Callable[[LanApp, Request], Response]], ...] = (
        ("/static/", _static_file),
        (ESPI_PREFIX, _espi_route),
    )

    def _base_url(self, environ: dict) -> str:
        host = environ.get("HTTP_HOST", "")
        url = self._base_urls.get(host)
        if url is None:
            if len(self._base_urls) >= BASE_URL_CACHE:
                self._base_urls.clear()
            url = self._base_urls[host] = self._base_url_for(host)
        return url

    def _base_url_for(self, host: str) -> str:
        """Links in ESPI documents point back at the host name the client used when the gateway's
        certificate names it (so a client that reached it as gw.local keeps gw.local), otherwise at the
        configured base URL: an unchecked Host header would let anyone choose where the links go."""
        if _HOST.fullmatch(host):
            name = host[1:host.index("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
            try:
                name = str(ipaddress.ip_address(name))      # the certificate's spelling of an address
            except ValueError:
                name = name.lower()
            if name in self.link_hosts:
                return f"https://{host}"
        return self.default_base_url

    def _static(self, name: str) -> Response:
        ctype = STATIC_TYPES.get(os.path.splitext(name)[1].lower())
        if not _STATIC_NAME.fullmatch(name) or ctype is None:
            return _text(404, "no such file")
        full = os.path.realpath(os.path.join(self.static_dir, name))
        if os.path.dirname(full) != self.static_dir:
            return _text(404, "no such file")
        if not os.path.isfile(full):          # also keeps a FIFO or device from blocking a worker
            return _text(404, "no such file")
        try:
            with open(full, "rb") as f:
                body = f.read()
        except OSError:
            return _text(404, "no such file")
        return Response(200, ctype, body, {"Cache-Control": STATIC_CACHE})
