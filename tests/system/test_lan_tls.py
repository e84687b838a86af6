"""TLS of the LAN server: the context policy, the worker-handshake adapter, and a real openseg-lan
probed with Python's ssl, curl, openssl s_client and hand-made ClientHellos (which test the server's
answer at the protocol level, whatever the local client libraries can still offer)."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings

import pytest
from cheroot import errors

from tests.support.lan_fixtures import LanServer, fresh_lan, lan  # noqa: F401  (pytest fixtures)
from openseg.lan_server.accounts import certs
from openseg.lan_server.http import tls

OPENSSL = shutil.which("openssl")
ALLOWED_TLS12 = set(tls.TLS12_CIPHERS.split(":"))
ALLOWED = ALLOWED_TLS12 | tls.TLS13_SUITES


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    certs.write_identity(str(d / "key.pem"), str(d / "cert.pem"))
    return str(d / "cert.pem"), str(d / "key.pem")


def client_context(*, minimum=None, maximum=None, ciphers=None, curve=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE         # these probes are about the server's policy, not trust
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # TLSv1_1 is deprecated: that's the point
        if minimum:
            ctx.minimum_version = minimum
        if maximum:
            ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if curve:
        ctx.set_ecdh_curve(curve)
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> tuple[str, tuple, object, str | None]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.version(), s.cipher(), s.compression(), s.selected_alpn_protocol()


# -- the context -------------------------------------------------------------------------------------
def test_context_policy(identity):
    ctx = tls.server_context(*identity)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert ctx.options & flag
    names = {c["name"] for c in ctx.get_ciphers()}
    assert names <= ALLOWED
    for c in ctx.get_ciphers():
        assert c["aead"], c["name"]
        if c["protocol"] == "TLSv1.2":
            assert c["kea"] == "kx-ecdhe", c["name"]


def test_context_errors_name_the_file(identity, tmp_path):
    cert, key = identity
    with pytest.raises(tls.TLSConfigError, match="missing.pem: cannot read"):
        tls.server_context(str(tmp_path / "missing.pem"), key)
    other_key = tmp_path / "other.pem"
    certs.write_identity(str(other_key), str(tmp_path / "other-cert.pem"))
    with pytest.raises(tls.TLSConfigError, match="not a matching"):
        tls.server_context(cert, str(other_key))


# -- the adapter: wrap() never waits for the client --------------------------------------------------
@pytest.fixture
def adapter(identity):
    a = tls.WorkerHandshakeAdapter(*identity)
    a.context = tls.server_context(*identity)
    return a


def _client_sends_a_line(client_side: socket.socket) -> threading.Thread:
    """A real TLS client on the other end of the pair: handshakes, sends one line, waits for the answer."""
    def client():
        with client_context().wrap_socket(client_side, server_hostname="localhost") as c:
            c.sendall(b"GET / HTTP/1.1\r\n")
            c.recv(100)
    t = threading.Thread(target=client)
    t.start()
    return t


def test_wrap_does_no_io_and_the_handshake_runs_on_first_read(adapter):
    server_side, client_side = socket.socketpair()
    server_side.settimeout(10)
    try:
        started = time.monotonic()
        tls_sock, env = adapter.wrap(server_side)        # the client has sent nothing at all
        assert time.monotonic() - started < 0.5
        assert env == {}
        reader = adapter.makefile(tls_sock, "rb")
        writer = adapter.makefile(tls_sock, "wb")
        t = _client_sends_a_line(client_side)
        assert reader.readline() == b"GET / HTTP/1.1\r\n"       # handshake happened in this thread
        assert env["SSL_PROTOCOL"] in ("TLSv1.3", "TLSv1.2") and env["HTTPS"] == "on"
        writer.write(b"ok")
        writer.flush()
        t.join(10)
    finally:
        server_side.close()
        client_side.close()


def test_environ_never_reads_the_session(adapter, monkeypatch):
    """CPython 3.11 loses a duplicated SSL_SESSION (about 1 KB) on every read of SSLSocket.session
    (gh-116810); cheroot's own get_environ read it once per connection. The adapter's environ must come
    from a real handshake without it."""
    reads = []
    real = ssl.SSLSocket.session

    def counted(sock):
        reads.append(sock)
        return real.fget(sock)
    monkeypatch.setattr(ssl.SSLSocket, "session", property(counted, real.fset))
    server_side, client_side = socket.socketpair()
    server_side.settimeout(10)
    try:
        tls_sock, env = adapter.wrap(server_side)
        t = _client_sends_a_line(client_side)
        assert adapter.makefile(tls_sock, "rb").readline() == b"GET / HTTP/1.1\r\n"
        writer = adapter.makefile(tls_sock, "wb")
        writer.write(b"ok")
        writer.flush()
        t.join(10)
        assert set(env) == {"wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL", "SSL_CIPHER"}
        assert env["wsgi.url_scheme"] == "https"
        assert env["SSL_CIPHER"] == tls_sock.cipher()[0]
        assert reads == []
        assert tls_sock.session is not None and len(reads) == 1      # the counter sees a read
    finally:
        server_side.close()
        client_side.close()


def test_handshake_timeout_and_failure_end_only_that_connection(adapter, caplog):
    caplog.set_level(logging.INFO, logger="openseg.lan.tls")
    adapter.handshake_timeout_s = 0.3
    server_side, client_side = socket.socketpair()
    server_side.settimeout(10)                          # the socket timeout is longer: the cap applies
    try:
        tls_sock, _ = adapter.wrap(server_side)
        reader = adapter.makefile(tls_sock, "rb")
        started = time.monotonic()
        with pytest.raises(errors.FatalSSLAlert):
            reader.readline()
        assert 0.25 <= time.monotonic() - started < 5
        with pytest.raises(errors.FatalSSLAlert):       # and stays failed, no second wait
            adapter.makefile(tls_sock, "wb").write(b"x")
        assert "timed out" in caplog.text
    finally:
        server_side.close()
        client_side.close()


def test_plain_http_gets_a_plain_answer(adapter):
    server_side, client_side = socket.socketpair()
    server_side.settimeout(5)
    client_side.settimeout(5)
    try:
        tls_sock, _ = adapter.wrap(server_side)
        client_side.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(errors.FatalSSLAlert):
            adapter.makefile(tls_sock, "rb").readline()
        assert client_side.recv(200).startswith(b"HTTP/1.1 400 Bad Request")
    finally:
        server_side.close()
        client_side.close()


# -- a real openseg-lan: what clients get --------------------------------------------------------------
def test_default_clients_get_tls13_with_an_aead_and_no_compression(lan):
    version, cipher, compression, alpn = handshake(lan.port, lan.ssl_context())
    assert version == "TLSv1.3" and cipher[0] in tls.TLS13_SUITES
    assert compression is None and alpn in (None, "http/1.1")


@pytest.mark.parametrize("cipher", sorted(c for c in ALLOWED_TLS12 if "ECDSA" in c))   # the key is ECDSA
def test_each_allowed_tls12_suite_works_with_the_ecdsa_key(lan, cipher):
    version, negotiated, _, _ = handshake(lan.port, client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=cipher))
    assert version == "TLSv1.2" and negotiated[0] == cipher


def test_certificate_verifies_for_localhost_with_only_its_own_cert_as_trust_anchor(lan):
    status, _, _ = lan.request("/api/v1/current", host="localhost")
    assert status == 200
    out = lan.curl("--output", "/dev/null", "--write-out", "%{http_code}", f"https://localhost:{lan.port}/api/v1/current")
    assert out.returncode == 0 and out.stdout == "200", out.stderr


def test_tls11_is_refused_python_client(lan, identity):
    tls11 = dict(minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    # Control: this client really can speak TLS 1.1 (against a local server that allows it) ...
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(*identity)
    a, b = socket.socketpair()
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(_server_handshake(permissive, a)))
    t.start()
    try:
        with client_context(**tls11).wrap_socket(b) as c:
            can_offer = c.version() == "TLSv1.1"
    except ssl.SSLError:
        can_offer = False
    t.join(10)
    a.close()
    b.close()
    if not can_offer:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all; test_tls11_is_refused_raw_hello covers it")
    # ... and openseg-lan refuses it with a protocol_version alert.
    with pytest.raises(ssl.SSLError) as exc:
        handshake(lan.port, client_context(**tls11))
    assert exc.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"), exc.value


def _server_handshake(ctx, sock):
    try:
        with ctx.wrap_socket(sock, server_side=True) as s:
            return s.version()
    except (ssl.SSLError, OSError):
        return None


def test_tls11_is_refused_curl(lan):
    out = lan.curl("--tlsv1.1", "--tls-max", "1.1", "--ciphers", "DEFAULT@SECLEVEL=0",
                   f"https://127.0.0.1:{lan.port}/api/v1/current")
    assert out.returncode == 35, (out.returncode, out.stderr)       # CURLE_SSL_CONNECT_ERROR
    out = lan.curl("--tlsv1.0", "--tls-max", "1.0", "--ciphers", "DEFAULT@SECLEVEL=0",
                   f"https://127.0.0.1:{lan.port}/api/v1/current")
    assert out.returncode == 35, (out.returncode, out.stderr)


@pytest.mark.parametrize("ciphers", [
    "AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256",      # RSA key exchange, CBC
    "AES128-GCM-SHA256:AES256-GCM-SHA384",                    # RSA key exchange (no forward secrecy)
    "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384",  # CBC
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-CHACHA20-POLY1305",    # finite-field DH
    "ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-AES256-CCM8",          # AEAD, but not GCM/ChaCha20
])
def test_weak_tls12_suites_are_refused(lan, ciphers):
    ctx = client_context(maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers + ":@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as exc:
        handshake(lan.port, ctx)
    assert exc.value.reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER"), exc.value


def test_weak_cipher_refused_curl(lan):
    out = lan.curl("--tls-max", "1.2", "--ciphers", "AES128-SHA:AES256-SHA:ECDHE-ECDSA-AES128-SHA",
                   f"https://127.0.0.1:{lan.port}/api/v1/current")
    assert out.returncode == 35, (out.returncode, out.stderr)
    out = lan.curl("--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256", "--output", "/dev/null",
                   "--write-out", "%{http_code}", f"https://127.0.0.1:{lan.port}/api/v1/current")
    assert out.returncode == 0 and out.stdout == "200", out.stderr           # control


@pytest.mark.skipif(OPENSSL is None, reason="openssl command-line tool not installed")
def test_tls13_ccm_suites_are_refused(lan):
    def s_client(suite):
        return subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{lan.port}", "-tls1_3",
                               "-ciphersuites", suite], input="", capture_output=True, text=True, timeout=30)
    assert "TLS_AES_128_GCM_SHA256" in s_client("TLS_AES_128_GCM_SHA256").stdout       # control
    out = s_client("TLS_AES_128_CCM_SHA256:TLS_AES_128_CCM_8_SHA256")
    assert "handshake failure" in out.stderr or "no shared cipher" in out.stderr, out.stderr


# The server's groups are X25519, P-256 and P-384, from OpenSSL's configuration file (OPENSSL_CONF, as
# the unit and devstack set it; tls.py says why); a client that offers only another is refused.
@pytest.mark.parametrize("curve, ok", [("X25519", True), ("prime256v1", True), ("secp384r1", True),
                                       ("secp521r1", False), ("brainpoolP256r1", False)])
def test_key_exchange_groups_tls13(lan, curve, ok):
    ctx = client_context(minimum=ssl.TLSVersion.TLSv1_3, curve=curve)
    if ok:
        assert handshake(lan.port, ctx)[0] == "TLSv1.3"
    else:
        with pytest.raises(ssl.SSLError):
            handshake(lan.port, ctx)


def test_key_exchange_groups_tls12(lan):
    # In TLS 1.2 the client's group list also has to admit the certificate's curve (P-256), so
    # a one-curve client can only be a P-256 one; P-521 alone is refused.
    assert handshake(lan.port, client_context(maximum=ssl.TLSVersion.TLSv1_2, curve="prime256v1"))[0] == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        handshake(lan.port, client_context(maximum=ssl.TLSVersion.TLSv1_2, curve="secp521r1"))


@pytest.mark.skipif(OPENSSL is None, reason="openssl command-line tool not installed")
@pytest.mark.parametrize("offered, expected", [("P-521:P-256", "prime256v1"), ("P-521:X25519:P-256", "X25519")])
def test_tls12_never_negotiates_an_unlisted_group(lan, offered, expected):
    out = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{lan.port}", "-tls1_2", "-groups", offered],
                         input="", capture_output=True, text=True, timeout=30)
    temp_key = [line for line in out.stdout.splitlines() if "Server Temp Key" in line]
    assert temp_key and expected in temp_key[0], out.stdout


def s_client_tls13_key(port: int, offered: str) -> str | None:
    """The key `openssl s_client -tls1_3 -groups offered` agrees on with the server, None if refused."""
    out = subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-groups", offered],
                         input="", capture_output=True, text=True, timeout=30)
    temp_key = [line.removeprefix("Server Temp Key: ") for line in out.stdout.splitlines()
                if line.startswith("Server Temp Key: ")]
    return temp_key[0] if temp_key else None


GROUPS_BEYOND_THE_LIST = ("X448", "P-521", "ffdhe2048")      # in OpenSSL 3's default list, not in ours


@pytest.mark.skipif(OPENSSL is None, reason="openssl command-line tool not installed")
def test_tls13_groups_beyond_the_configured_list_are_refused_and_x25519_preferred(lan):
    assert {g: s_client_tls13_key(lan.port, g) for g in GROUPS_BEYOND_THE_LIST} == dict.fromkeys(GROUPS_BEYOND_THE_LIST)
    # the client's first choice is X448 (its key share); the server asks for X25519 instead
    assert s_client_tls13_key(lan.port, "X448:P-521:P-384:X25519") == "X25519, 253 bits"
    assert s_client_tls13_key(lan.port, "P-384") == "ECDH, secp384r1, 384 bits"


@pytest.mark.skipif(OPENSSL is None, reason="openssl command-line tool not installed")
def test_without_the_openssl_conf_openssl_defaults_apply(tmp_path):
    # control: the configuration file, not the code, keeps them out (SECURITY.md §6); an empty one
    # leaves OpenSSL's default list, which has them all
    server = LanServer(tmp_path)
    server.start(env={"OPENSSL_CONF": os.devnull})
    try:
        keys = {g: s_client_tls13_key(server.port, g) for g in GROUPS_BEYOND_THE_LIST}
    finally:
        server.stop()
    assert None not in keys.values(), keys


def test_groups_source_without_openssl_conf():
    assert tls.groups_source({}) == "OpenSSL's defaults (OPENSSL_CONF is not set)"


@pytest.mark.skipif(OPENSSL is None, reason="openssl command-line tool not installed")
def test_renegotiation_is_refused(lan):
    proc = subprocess.Popen([OPENSSL, "s_client", "-connect", f"127.0.0.1:{lan.port}", "-tls1_2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:            # wait for the end of the handshake summary
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("    Verify return code") or "Extended master secret" in line:
                break
        assert any("Secure Renegotiation" in line for line in lines), "".join(lines)
        proc.stdin.write("R\n")                         # s_client: renegotiate now
        proc.stdin.flush()
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "RENEGOTIATING" in rest
    assert "no renegotiation" in rest.lower(), rest


def test_compression_is_off(lan):
    ctx = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    ctx.options &= ~ssl.OP_NO_COMPRESSION                 # the client would accept it
    assert handshake(lan.port, ctx)[2] is None


# -- hand-made ClientHellos: the server's answer at the protocol level --------------------------------
def client_hello(version: int, suites: list[int]) -> bytes:
    ext = b""
    groups = struct.pack("!3H", 0x001D, 0x0017, 0x0018)             # x25519, P-256, P-384
    ext += struct.pack("!HHH", 0x000A, len(groups) + 2, len(groups)) + groups
    ext += struct.pack("!HHB", 0x000B, 2, 1) + b"\x00"               # ec_point_formats: uncompressed
    sigs = struct.pack("!4H", 0x0403, 0x0503, 0x0804, 0x0401)
    ext += struct.pack("!HHH", 0x000D, len(sigs) + 2, len(sigs)) + sigs
    body = (struct.pack("!H", version) + os.urandom(32) + b"\x00"
            + struct.pack("!H", 2 * len(suites)) + struct.pack(f"!{len(suites)}H", *suites)
            + b"\x01\x00" + struct.pack("!H", len(ext)) + ext)
    handshake_msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake_msg)) + handshake_msg


def first_record(port: int, hello: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(hello)
        header = b""
        while len(header) < 5:
            chunk = s.recv(5 - len(header))
            assert chunk, "server closed without answering"
            header += chunk
        length = struct.unpack("!H", header[3:5])[0]
        body = b""
        while len(body) < min(length, 64):
            chunk = s.recv(length - len(body))
            if not chunk:
                break
            body += chunk
        return header[0], body


GOOD_TLS12 = [0xC02B]                                     # ECDHE-ECDSA-AES128-GCM-SHA256
ALERT, HANDSHAKE = 21, 22


def test_raw_hello_control_gets_a_server_hello(lan):
    kind, body = first_record(lan.port, client_hello(0x0303, GOOD_TLS12))
    assert kind == HANDSHAKE and body[0] == 2              # ServerHello


@pytest.mark.parametrize("version, alerts", [(0x0302, {70}), (0x0301, {70}),   # TLS 1.1, 1.0: protocol_version
                                             (0x0300, {70, 40})])             # SSL 3.0: or handshake_failure
def test_old_protocols_are_refused_raw_hello(lan, version, alerts):
    suites = GOOD_TLS12 + [0xC009, 0xC013, 0x002F, 0x0035, 0x000A]   # incl. the suites they could use
    kind, body = first_record(lan.port, client_hello(version, suites))
    assert kind == ALERT and body[0] == 2 and body[1] in alerts, (kind, body)       # fatal alert


def test_weak_suites_are_refused_raw_hello(lan):
    weak = [0x002F, 0x0035, 0x003C, 0x009C, 0x009D, 0xC009, 0xC00A, 0xC023, 0xC024, 0x000A, 0x0005]
    kind, body = first_record(lan.port, client_hello(0x0303, weak))
    assert kind == ALERT and body[:2] == bytes([2, 40]), (kind, body)   # fatal handshake_failure


# -- the accept loop is never held by a client -----------------------------------------------------------
def timed_request(lan) -> tuple[int, float]:
    started = time.monotonic()
    status, _, _ = lan.request("/api/v1/current", timeout=30)
    return status, time.monotonic() - started


def test_idle_tcp_connections_do_not_delay_other_clients(fresh_lan):
    lan = fresh_lan
    assert timed_request(lan)[0] == 200            # verifies the password once; later requests are cached
    idle = [socket.create_connection(("127.0.0.1", lan.port)) for _ in range(6)]   # never send a byte
    half = socket.create_connection(("127.0.0.1", lan.port))
    half.sendall(client_hello(0x0303, GOOD_TLS12)[:7])                              # a ClientHello, cut short
    try:
        for _ in range(3):
            status, elapsed = timed_request(lan)
            assert status == 200 and elapsed < 1.0, elapsed
        out = lan.curl("--output", "/dev/null", "--write-out", "%{http_code} %{time_total}",
                       f"https://127.0.0.1:{lan.port}/api/v1/current")
        code, total = out.stdout.split()
        assert code == "200" and float(total) < 1.0, out.stdout
        # The server gives up on the silent ones after its handshake timeout, freeing their workers.
        idle[0].settimeout(30)
        started = time.monotonic()
        assert idle[0].recv(1) == b""
        assert time.monotonic() - started < 15
    finally:
        for s in idle + [half]:
            s.close()
    assert "timed out" in lan.log_text()


def test_slow_clients_after_the_handshake_do_not_starve_others(fresh_lan):
    lan = fresh_lan
    assert timed_request(lan)[0] == 200
    slow = []
    try:
        for _ in range(6):       # TLS done, then half a request line, then nothing (slowloris)
            raw = socket.create_connection(("127.0.0.1", lan.port), timeout=10)
            s = lan.ssl_context().wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"GET /api/v1/cur")
            slow.append(s)
        slow += [socket.create_connection(("127.0.0.1", lan.port)) for _ in range(6)]
        status, elapsed = timed_request(lan)
        assert status == 200 and elapsed < 1.0, elapsed
    finally:
        for s in slow:
            s.close()
