"""TLS evidence: sslyze scans a live `openseg-lan` against Mozilla's "intermediate" configuration.

The trust anchor given to sslyze (--certinfo_ca_file) is the installation's own certificate, which is
how LAN clients trust the gateway (they import or pin it; no public CA can vouch for a box on a home
network). Everything else in Mozilla's profile is checked as sslyze ships it. A negative control
runs the same scan on a deliberately weak TLS server and must see "Not compliant", so the check can
fail. The HTTP security headers are asserted separately, on success and error answers alike.
"""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.lan_fixtures import lan  # noqa: F401  (the module-scoped live openseg-lan fixture)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def sslyze(target: str, *args: str, json_out: Path | None = None) -> subprocess.CompletedProcess:
    exe = BIN / "sslyze"
    if not exe.exists():
        pytest.fail(f"{exe} missing: pip install sslyze (in setup.cfg's test extras)")
    argv = [str(exe), "--mozilla_config=intermediate", *args]
    if json_out:
        argv.append(f"--json_out={json_out}")
    return subprocess.run(argv + [target], capture_output=True, text=True, timeout=240)


def test_sslyze_mozilla_intermediate_compliant(lan, tmp_path):  # noqa: F811
    report = tmp_path / "sslyze.json"
    result = sslyze(f"127.0.0.1:{lan.port}", "--certinfo_ca_file", lan.cafile, json_out=report)
    out = result.stdout + result.stderr
    (Path(__file__).parents[1] / "artifacts").mkdir(exist_ok=True)
    (Path(__file__).parents[1] / "artifacts" / "sslyze.txt").write_text(out)
    assert f"127.0.0.1:{lan.port}: OK - Compliant." in out, out[-3000:]
    assert result.returncode == 0, out[-3000:]

    # Beyond the verdict, the facts it rests on, read from sslyze's JSON report.
    scan = json.loads(report.read_text())["server_scan_results"][0]
    assert scan["scan_status"] == "COMPLETED"
    res = scan["scan_result"]

    def accepted(name):
        attempt = res[name]
        assert attempt["status"] == "COMPLETED", (name, attempt.get("error_reason"))
        return [c["cipher_suite"]["name"] for c in attempt["result"]["accepted_cipher_suites"]]

    for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites",
                "tls_1_1_cipher_suites"):
        assert accepted(old) == [], old
    tls12, tls13 = accepted("tls_1_2_cipher_suites"), accepted("tls_1_3_cipher_suites")
    assert tls12 and tls13
    assert all(name.startswith("TLS_ECDHE_") and ("GCM" in name or "CHACHA20" in name) for name in tls12), tls12
    assert res["tls_compression"]["result"]["supports_compression"] is False
    assert res["heartbleed"]["result"]["is_vulnerable_to_heartbleed"] is False
    assert res["session_renegotiation"]["result"]["is_vulnerable_to_client_renegotiation_dos"] is False


def test_sslyze_fails_a_weak_server(tmp_path):
    """Negative control: TLS 1.2 with a static-RSA suite and no forward secrecy is not intermediate."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "30", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-SHA")
    ctx.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = sslyze(f"127.0.0.1:{server.getsockname()[1]}", "--certinfo_ca_file", str(cert))
    finally:
        stop.set()
        thread.join(5)
        server.close()
    out = result.stdout + result.stderr
    assert "FAILED - Not compliant" in out, out[-3000:]
    assert result.returncode != 0


def check_security_headers(headers: dict[str, str], *, api: bool) -> None:
    hsts = headers.get("strict-transport-security", "")
    assert hsts.startswith("max-age=") and int(hsts.split("=")[1].split(";")[0]) >= 31536000, hsts
    assert headers.get("x-content-type-options") == "nosniff"
    csp = headers.get("content-security-policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in (p.strip() for p in csp.split(";")) if d}
    assert directives.get("default-src") == ["'none'"], csp
    assert directives.get("frame-ancestors") == ["'none'"], csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp and "*" not in csp, csp
    assert headers.get("x-frame-options", "").upper() == "DENY"
    assert headers.get("referrer-policy") == "no-referrer"
    server = headers.get("server", "")
    assert not any(word in server.lower() for word in ("cherrypy", "cheroot", "python", "/")), server
    if api:
        assert "no-store" in headers.get("cache-control", ""), headers.get("cache-control")


def test_security_headers_on_answers_and_errors(lan):  # noqa: F811
    cases = [
        ("/", dict(), 200, False),                                    # the page
        ("/api/v1/status", dict(), 200, True),
        ("/api/v1/current", dict(), (200, 503), True),                # no meter value yet
        ("/espi/1_1/resource/Subscription/nope/UsagePoint", dict(), (403, 404), True),
        ("/api/v1/status", dict(auth=None), 401, True),
        ("/api/v1/status", dict(auth=("home", "wrong-password")), 401, True),
    ]
    for path, kwargs, want, api in cases:
        status, headers, _ = lan.request(path, **kwargs)
        assert status in (want if isinstance(want, tuple) else (want,)), (path, status)
        check_security_headers(headers, api=api)
        if status == 401:
            assert headers.get("www-authenticate", "").startswith("Basic realm="), headers


def test_plain_http_on_the_tls_port_gets_no_content(lan):  # noqa: F811
    with socket.create_connection(("127.0.0.1", lan.port), timeout=10) as sock:
        sock.sendall(b"GET /api/v1/status HTTP/1.1\r\nHost: gateway\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"queries_total" not in data and b"200 OK" not in data, data[:300]
