"""Issue 12: certificates that need no person. A per-installation CA (20 years) made by `openseg-admin
init` signs a 365-day server certificate; `cert renew --if-due` (the daily timer) renews it 60 days
before its end; a client given the CA certificate once keeps trusting the gateway across renewals.
Checked with real TLS clients (curl, Python's ssl, openssl verify), not with our own code."""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.lan_fixtures import LanServer, parse_fields, require_curl, run_admin
from openseg.lan_server.accounts import certs

OPENSSL = shutil.which("openssl")
NOW = dt.datetime.now(dt.timezone.utc)


def load(path) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def curl_ok(server: LanServer, cafile: str, host: str = "127.0.0.1") -> subprocess.CompletedProcess:
    """curl (its own TLS library) with only the CA file as trust: the page must come back 200."""
    return subprocess.run([require_curl(), "--silent", "--show-error", "--cacert", cafile, "--max-time", "20",
                           "--user", f"{server.username}:{server.password}", "--output", "/dev/null",
                           "--write-out", "%{http_code} %{ssl_verify_result}",
                           "--resolve", f"localhost:{server.port}:127.0.0.1",
                           f"https://{host}:{server.port}/api/v1/status"],
                          capture_output=True, text=True, timeout=30)


def python_ok(server: LanServer, cafile: str) -> bytes:
    """Python's ssl with default verification (hostname included) and only the CA file as trust;
    returns the server certificate it verified (DER)."""
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.getpeercert(binary_form=True)


@pytest.fixture
def server(tmp_path):
    with LanServer(tmp_path) as s:
        yield s


def test_init_makes_a_long_lived_ca_whose_key_stays_with_the_admin(tmp_path):
    out = run_admin("init", "--dir", str(tmp_path / "gw"), "--san", "192.168.1.20", "--san", "gw.example")
    assert out.returncode == 0, out.stderr
    gw = tmp_path / "gw"
    assert parse_fields(out.stdout)["ca certificate"] == str(gw / "ca.pem")
    ca = load(gw / "ca.pem")
    assert ca.not_valid_after_utc - NOW > dt.timedelta(days=10 * 366)      # no CA expiry within ten years
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    leaf = load(gw / "tls" / "cert.pem")
    leaf.verify_directly_issued_by(ca)
    assert dt.timedelta(days=365) <= leaf.not_valid_after_utc - leaf.not_valid_before_utc < dt.timedelta(days=366)
    # The CA key: in a folder only its owner (root on a gateway) may enter; openseg-lan's config does
    # not name it, and a service user cannot read it.
    assert stat.S_IMODE(os.stat(gw / "ca").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(gw / "ca" / "key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(gw / "ca.pem").st_mode) == 0o644
    assert "ca/" not in (gw / "gateway.toml").read_text()
    if os.getuid() == 0 and shutil.which("setpriv"):
        other = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat",
                                str(gw / "ca" / "key.pem")], capture_output=True, text=True)
        assert other.returncode != 0 and "Permission denied" in other.stderr


def test_a_renewed_certificate_is_trusted_with_the_same_ca_file(server, tmp_path):
    ca_file = str(server.dir / "ca.pem")
    keep = str(tmp_path / "ca-as-imported.pem")
    shutil.copy(ca_file, keep)                  # what a phone imported once, on the first day
    first = python_ok(server, keep)
    assert curl_ok(server, keep).stdout == "200 0"
    assert curl_ok(server, keep, host="localhost").stdout == "200 0"

    # The daily timer: nothing to do while the certificate has more than 60 days left.
    out = run_admin("cert", "renew", "--if-due", "--config", str(server.config))
    assert out.returncode == 0 and "not due" in out.stdout, out.stdout + out.stderr

    # 40 days before its end (a certificate the same CA issued that way), it renews.
    with open(server.dir / "ca" / "key.pem", "rb") as f:
        ca_key = f.read()
    with open(ca_file, "rb") as f:
        ca_pem = f.read()
    key_pem, chain = certs.issue_server(ca_key, ca_pem, ["127.0.0.1"], now=NOW - dt.timedelta(days=325))
    (server.dir / "tls" / "key.pem").write_bytes(key_pem)
    (server.dir / "tls" / "cert.pem").write_bytes(chain)
    assert certs.renewal_due(chain, ca_pem) is not None
    out = run_admin("cert", "renew", "--if-due", "--config", str(server.config))
    assert out.returncode == 0 and "renewing:" in out.stdout, out.stdout + out.stderr
    assert certs.renewal_due((server.dir / "tls" / "cert.pem").read_bytes(), ca_pem) is None
    server.stop()
    server.start()
    second = python_ok(server, keep)
    assert second != first
    assert curl_ok(server, keep).stdout == "200 0"
    # And an unconditional renewal (`cert renew`, as a person would run it) too.
    assert run_admin("cert", "renew", "--config", str(server.config)).returncode == 0
    server.stop()
    server.start()
    third = python_ok(server, keep)
    assert third not in (first, second)
    assert curl_ok(server, keep, host="localhost").stdout == "200 0"
    assert (server.dir / "ca.pem").read_bytes() == open(keep, "rb").read()     # the CA never changed


def test_the_ca_can_vouch_only_for_the_gateway(tmp_path):
    """A CA a phone trusts could vouch for any site; this one's name constraints stop that, checked by
    openssl verify (a real verifier) on a certificate forged with the CA key itself."""
    assert OPENSSL, "openssl is needed (make system-deps installs it)"
    gw = tmp_path / "gw"
    assert run_admin("init", "--dir", str(gw)).returncode == 0
    ca_key = serialization.load_pem_private_key((gw / "ca" / "key.pem").read_bytes(), None)
    ca = load(gw / "ca.pem")

    def forged(name: x509.GeneralName) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
                .issuer_name(ca.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - dt.timedelta(minutes=1)).not_valid_after(NOW + dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([name]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        path = tmp_path / "forged.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out = subprocess.run([OPENSSL, "verify", "-CAfile", str(gw / "ca.pem"), str(path)],
                             capture_output=True, text=True)
        return out.stdout + out.stderr

    assert "permitted subtree violation" in forged(x509.DNSName("www.bank.example"))
    assert "permitted subtree violation" in forged(x509.IPAddress(ipaddress.ip_address("8.8.8.8")))
    assert ": OK" in forged(x509.DNSName("gateway.local"))
    assert ": OK" in forged(x509.IPAddress(ipaddress.ip_address("192.168.7.9")))
    # openseg-admin refuses to issue one for a name outside, and says why.
    out = run_admin("cert", "renew", "--san", "www.bank.example", "--config", str(gw / "gateway.toml"))
    assert out.returncode == 1 and "cannot vouch for www.bank.example" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_an_installation_from_before_the_ca_gets_one_at_its_next_renewal(tmp_path):
    gw = tmp_path / "gw"
    assert run_admin("init", "--dir", str(gw)).returncode == 0
    shutil.rmtree(gw / "ca")
    (gw / "ca.pem").unlink()
    out = run_admin("cert", "renew", "--if-due", "--config", str(gw / "gateway.toml"))
    assert out.returncode == 0, out.stderr
    assert "new: import it once" in out.stdout and "renewing: it is not signed by the gateway's CA" in out.stdout
    load(gw / "tls" / "cert.pem").verify_directly_issued_by(load(gw / "ca.pem"))
