"""TLS for the LAN server: the SSLContext policy and a cheroot SSL adapter that handshakes in a worker.

Policy: TLS 1.2 and 1.3 only; TLS 1.2 suites are ECDHE with AES-GCM or ChaCha20-Poly1305 (forward
secret, AEAD); TLS 1.3 suites are OpenSSL's defaults, which are exactly those AEADs (checked at start,
since Python cannot set them); no compression, no renegotiation. The key-exchange groups (X25519,
P-256, P-384) are not set here: Python 3.11 sets only one (set_ecdh_curve, which would override the
list), so OpenSSL reads them from its own configuration file, openssl.cnf beside this module, which
OPENSSL_CONF names wherever openseg-lan is started (the systemd unit, devstack). Without OPENSSL_CONF
the process gets OpenSSL 3's default groups: all strong, but adding P-521, X448 and ffdhe, outside
Mozilla's intermediate profile (tests/system/test_tls_scan.py). `groups_source` says which, for the
start-up log.

Why a custom adapter: cheroot's BuiltinSSLAdapter.wrap() runs the TLS handshake inside the accept
loop (do_handshake_on_connect=True), so one client that opens a TCP connection and never sends a
ClientHello blocks every other client until the socket timeout (cheroot issue #375 and friends).
`WorkerHandshakeAdapter.wrap()` does no I/O: it only attaches the TLS state to the socket. The
handshake runs on the first read or write, which happens in the worker thread that serves the
connection, bounded by a deadline; a failure is logged and ends that connection only. The socket does
that itself (HandshakeFirstSocket, the server context's `sslsocket_class`), so cheroot's own reader and
writer serve it unchanged.
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
import threading

from cheroot import errors
from cheroot.ssl.builtin import BuiltinSSLAdapter

log = logging.getLogger("openseg.lan.tls")

TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305",
])
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


class TLSConfigError(ValueError):
    pass


def groups_source(environ=os.environ) -> str:
    """Where OpenSSL takes the key-exchange groups from, for the start-up log. Raises TLSConfigError
    when OPENSSL_CONF names a file that cannot be read: OpenSSL would quietly use its defaults."""
    path = environ.get("OPENSSL_CONF")
    if not path:
        return "OpenSSL's defaults (OPENSSL_CONF is not set)"
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSConfigError(f"OPENSSL_CONF={path}: cannot read: {exc.strerror}") from None
    return f"OPENSSL_CONF={path}"


def server_context(certificate: str, private_key: str) -> ssl.SSLContext:
    """The server's SSLContext. Raises TLSConfigError naming the file that is wrong."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_SINGLE_ECDH_USE)
    ctx.set_ciphers(TLS12_CIPHERS)
    tls13 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
    if not tls13 <= TLS13_SUITES:
        raise TLSConfigError(f"OpenSSL enables TLS 1.3 suites outside policy: {sorted(tls13 - TLS13_SUITES)}")
    ctx.sslsocket_class = HandshakeFirstSocket
    ctx.set_alpn_protocols(["http/1.1"])
    for path in (certificate, private_key):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TLSConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        ctx.load_cert_chain(certificate, private_key)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{certificate} / {private_key}: not a matching PEM certificate and "
                             f"private key ({exc.reason or exc})") from None
    return ctx


class _Handshake:
    """The server side of one connection's handshake, run once by the first reader or writer."""

    def __init__(self, adapter: "WorkerHandshakeAdapter", sock: ssl.SSLSocket, env: dict, peer: str):
        self._adapter, self._sock, self._env, self._peer = adapter, sock, env, peer
        self._lock = threading.Lock()
        self._done = False
        self._failed: str | None = None

    def ensure(self) -> None:
        if self._done:
            return
        with self._lock:
            if self._done:
                return
            if self._failed is not None:
                raise errors.FatalSSLAlert(self._failed)
            try:
                self._run()
            except Exception as exc:
                self._failed = self._report(exc)
                raise errors.FatalSSLAlert(self._failed) from exc
            self._done = True

    def _run(self) -> None:
        sock = self._sock
        previous = sock.gettimeout()
        limit = self._adapter.handshake_timeout_s
        sock.settimeout(limit if previous is None else min(previous, limit))
        try:
            sock.do_handshake()       # CPython applies the timeout as one deadline for the whole handshake
        finally:
            sock.settimeout(previous)
        self._env.update(self._adapter.get_environ(sock))

    def _report(self, exc: Exception) -> str:
        if isinstance(exc, (TimeoutError, socket.timeout)):
            reason = "timed out"
            log.info("TLS handshake with %s %s", self._peer, reason)
        elif isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError)):
            reason = "closed by the client"        # port probes, health checks: not worth a log line
            log.debug("TLS handshake with %s: %s", self._peer, reason)
        elif isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST":
            reason = "plain HTTP on the HTTPS port"
            log.info("%s from %s; answered 400", reason, self._peer)
            self._answer_plain_http()
        else:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            log.info("TLS handshake with %s failed: %s", self._peer, reason)
        return reason

    def broken(self, exc: ssl.SSLError) -> errors.FatalSSLAlert:
        reason = exc.reason or type(exc).__name__
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            log.debug("TLS session with %s closed: %s", self._peer, reason)
        else:
            log.info("TLS session with %s ended: %s", self._peer, reason)
        return errors.FatalSSLAlert(reason)

    def _answer_plain_http(self) -> None:
        body = b"This gateway only speaks HTTPS on this port.\n"
        msg = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        try:
            socket.socket.sendall(self._sock, msg)     # the raw TCP socket under the TLS object
        except OSError:
            pass


class HandshakeFirstSocket(ssl.SSLSocket):
    """The server's TLS socket as cheroot's reader and writer use it (recv_into, send): handshake first;
    afterwards a TLS protocol error (a refused renegotiation, a bad record) ends the connection quietly
    instead of reaching cheroot, which would log a traceback and try to write a 500 into the broken
    session. Without a handshake attached (WorkerHandshakeAdapter.wrap attaches one) it is a plain
    SSLSocket."""

    handshake: _Handshake | None = None

    def recv_into(self, buffer, nbytes=0, flags=0):
        if self.handshake is None:
            return super().recv_into(buffer, nbytes, flags)
        self.handshake.ensure()
        try:
            return super().recv_into(buffer, nbytes, flags)
        except ssl.SSLError as exc:
            raise self.handshake.broken(exc) from exc

    def send(self, data, flags=0):
        if self.handshake is None:
            return super().send(data, flags)
        self.handshake.ensure()
        try:
            return super().send(data, flags)
        except ssl.SSLError as exc:
            raise self.handshake.broken(exc) from exc


class WorkerHandshakeAdapter(BuiltinSSLAdapter):
    """BuiltinSSLAdapter whose wrap() does no I/O (see module docstring)."""

    handshake_timeout_s = 5.0     # a LAN client finishes in milliseconds; also capped by socket_timeout

    def wrap(self, sock):
        try:
            name = sock.getpeername()
        except OSError:
            name = None
        peer = f"{name[0]}:{name[1]}" if isinstance(name, tuple) and len(name) >= 2 else "a local peer"
        if self.context.sslsocket_class is not HandshakeFirstSocket:
            raise TypeError("WorkerHandshakeAdapter needs a context from tls.server_context")
        try:
            tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            raise errors.FatalSSLAlert(*exc.args) from exc
        env: dict = {}             # cheroot keeps this dict; the handshake fills it in
        tls.handshake = _Handshake(self, tls, env, peer)
        return tls, env

    def get_environ(self, sock):
        """The connection's TLS entries in the WSGI environ: the scheme, protocol and cipher only.

        Not cheroot's own get_environ, which reads `sock.session`: in CPython 3.11 every read of
        SSLSocket.session duplicates the SSL_SESSION and never frees it (CPython gh-116810, fixed in
        3.12 and 3.13 only), about 1 KB lost per TLS connection, the LAN's steady growth under load
        (bench/RESULTS.md, issue 16). Nothing in the gateway reads the other entries (session id,
        cipher key sizes, the server certificate's fields), which cheroot also worked out per connection."""
        cipher = sock.cipher()
        # wsgi.url_scheme as cheroot's own sets it: over TLS it is https even when an absolute-form
        # request line (GET http://...) made cheroot's request say otherwise.
        return {"wsgi.url_scheme": "https", "HTTPS": "on", "SSL_PROTOCOL": cipher[1], "SSL_CIPHER": cipher[0]}


ADAPTER_NAME = "openseg-worker-handshake"


def register_adapter() -> str:
    """Make the adapter selectable as CherryPy's `server.ssl_module`; returns its name."""
    from cheroot import server as cheroot_server
    cheroot_server.ssl_adapters[ADAPTER_NAME] = WorkerHandshakeAdapter
    return ADAPTER_NAME
