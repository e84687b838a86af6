"""The gateway's TLS identities: a per-installation CA and the server certificate it signs.

Why a CA: a gateway runs for years, and a self-signed server certificate would make every phone and
TV distrust it at each renewal. `openseg-admin init` makes a CA that lives CA_VALID_DAYS (20 years,
beyond the ten a gateway is expected to run), and a server certificate of SERVER_VALID_DAYS that it
signs. Devices import the CA certificate once; `openseg-admin cert renew --if-due`, run daily by a
systemd timer as root (deploy/openseg-cert-renew.*), issues a new server certificate RENEW_BEFORE_DAYS
before the old one ends, and the devices keep trusting the gateway without anyone doing anything.

The CA key never leaves the admin step: it is written only by `openseg-admin`, in a folder of its own
(mode 0700, key 0600, owned by whoever runs the admin command, root on a gateway) that openseg-lan's
user cannot enter. The serving process reads only its own key and certificate. A CA that a device
trusts could vouch for any site, so this one is name-constrained (RFC 5280, critical): it can only
vouch for this gateway's names (localhost, its host name, the extra names given at init, and names in
the home-network domains .local, .home.arpa, .lan, .home, .internal, .localdomain) and private, loopback
and link-local addresses; a stolen CA key cannot impersonate a bank to the devices
that imported it.

Every certificate carries what strict verifiers (OpenSSL's X509_STRICT, browsers) look for: SANs for
every name the page is reached by, Subject and Authority Key Identifiers, a serverAuth EKU on the
server certificate, CA:TRUE with path length 0 on the CA.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALID_DAYS = 20 * 366
# Under 366 days, Mozilla's "intermediate" limit (tests/system/test_tls_scan.py); every client accepts it
# (Apple's platforms refuse more than 825 days even under a user-installed CA).
SERVER_VALID_DAYS = 365
RENEW_BEFORE_DAYS = 60          # --if-due renews this long before the end: a month of failed timers fits
# What the CA may vouch for besides the gateway's own names: the names of home networks (mDNS .local,
# RFC 8375's home.arpa, what home routers hand out), loopback, private and link-local networks.
PERMITTED_DOMAINS = ("localhost", "local", "home.arpa", "lan", "home", "internal", "localdomain")
PERMITTED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
    "::1/128", "fc00::/7", "fe80::/10"))


def san_entries(extra: list[str] = ()) -> list[x509.GeneralName]:
    """localhost, the loopback addresses, this host's name (and its .local mDNS name), plus extras
    (host names or IP addresses, e.g. the address the gateway listens on)."""
    names: list[str] = ["localhost", "127.0.0.1", "::1"]
    host = socket.gethostname()
    if host and host != "localhost":
        names.append(host)
        if "." not in host:
            names.append(f"{host}.local")
    names.extend(extra)
    out: list[x509.GeneralName] = []
    seen = set()
    for name in names:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            entry = x509.DNSName(name.lower())
        else:
            if ip.is_unspecified:
                continue                         # 0.0.0.0 / :: is not an address a client uses
            entry = x509.IPAddress(ip)
        if entry not in seen:
            seen.add(entry)
            out.append(entry)
    return out


class CertError(ValueError):
    """A name the CA cannot vouch for, or a CA file that is not usable; the message says which."""


def _now(now: dt.datetime | None) -> dt.datetime:
    return now or dt.datetime.now(dt.timezone.utc)


def _name(role: str) -> x509.Name:
    host = socket.gethostname() or "localhost"
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenSEG gateway"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"{role} {host}"[:64])])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _permitted(names: list[x509.GeneralName]) -> list[x509.GeneralName]:
    """The CA's permitted subtrees: each DNS name (and its subdomains), the home-network domains,
    every permitted network, and any other address the gateway was given at init."""
    dns = set(PERMITTED_DOMAINS) | {n.value for n in names if isinstance(n, x509.DNSName)}
    nets = list(PERMITTED_NETWORKS)
    for n in names:
        if isinstance(n, x509.IPAddress) and not any(n.value in net for net in nets if n.value.version == net.version):
            nets.append(ipaddress.ip_network(n.value))
    return [x509.DNSName(d) for d in sorted(dns)] + [x509.IPAddress(net) for net in nets]


def make_ca(extra_names: list[str] = (), *, now: dt.datetime | None = None,
            days: int = CA_VALID_DAYS) -> tuple[bytes, bytes]:
    """(CA key PEM, CA certificate PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now, name, public = _now(now), _name("OpenSEG CA"), key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(permitted_subtrees=_permitted(san_entries(list(extra_names))),
                                            excluded_subtrees=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def outside_ca(ca_cert: x509.Certificate, names: list[x509.GeneralName]) -> list[str]:
    """The names this CA's name constraints do not permit (a server certificate naming them would
    be refused by every client)."""
    try:
        permitted = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value.permitted_subtrees
    except x509.ExtensionNotFound:
        return []
    out = []
    for n in names:
        if isinstance(n, x509.DNSName):
            ok = any(isinstance(p, x509.DNSName) and (n.value == p.value or n.value.endswith("." + p.value))
                     for p in permitted)
        else:
            ok = any(isinstance(p, x509.IPAddress) and p.value.version == n.value.version and n.value in p.value
                     for p in permitted)
        if not ok:
            out.append(str(n.value))
    return out


def issue_server(ca_key_pem: bytes, ca_cert_pem: bytes, extra_names: list[str] = (), *,
                 now: dt.datetime | None = None, days: int = SERVER_VALID_DAYS) -> tuple[bytes, bytes]:
    """(server key PEM, certificate chain PEM: the server certificate, then the CA's, so a client
    given either file as its trust anchor verifies the gateway)."""
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    if ca_key.public_key().public_numbers() != ca_cert.public_key().public_numbers():
        raise CertError("the CA key does not match the CA certificate")
    names = san_entries(list(extra_names))
    if outside := outside_ca(ca_cert, names):
        raise CertError(f"the gateway's CA cannot vouch for {', '.join(outside)} (it was made for other "
                        "names); `openseg-admin init --force` makes a new CA, which every device must import")
    key = ec.generate_private_key(ec.SECP256R1())
    now, public = _now(now), key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("OpenSEG gateway")).issuer_name(ca_cert.subject).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))      # tolerate a little clock skew
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM) + ca_cert_pem


def make_identity(extra_names: list[str] = (), *, days: int = SERVER_VALID_DAYS,
                  now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM) signed by a throw-away CA: for tests and tools that need a server
    identity and no installation."""
    ca_key, ca_cert = make_ca(extra_names, now=now)
    return issue_server(ca_key, ca_cert, extra_names, now=now, days=days)


def renewal_due(chain_pem: bytes, ca_cert_pem: bytes, *, now: dt.datetime | None = None) -> str | None:
    """Why the server certificate should be renewed now, or None: it ends within RENEW_BEFORE_DAYS,
    or it is not the CA's (an installation from before the CA, or a CA made anew)."""
    cert = x509.load_pem_x509_certificate(chain_pem)
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "it is not signed by the gateway's CA"
    left = cert.not_valid_after_utc - _now(now)
    if left < dt.timedelta(days=RENEW_BEFORE_DAYS):
        return f"it ends on {cert.not_valid_after_utc.date()}"
    return None


def write_private(path: str, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a temporary file created with `mode` from the start (a key is
    never readable by others, even briefly), fsync'ed and renamed over `path`."""
    tmp = f"{path}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_identity(key_path: str, cert_path: str, extra_names: list[str] = (), *,
                   ca_key_path: str | None = None, ca_cert_path: str | None = None) -> None:
    """A new server key (0600) and certificate chain (0644: it is public), signed by the CA in
    ca_key_path/ca_cert_path (by a throw-away CA when none is given: tests)."""
    if ca_key_path is None:
        key_pem, cert_pem = make_identity(extra_names)
    else:
        with open(ca_key_path, "rb") as f:
            ca_key = f.read()
        with open(ca_cert_path, "rb") as f:
            ca_cert = f.read()
        key_pem, cert_pem = issue_server(ca_key, ca_cert, extra_names)
    write_private(key_path, key_pem, 0o600)
    write_private(cert_path, cert_pem, 0o644)


def write_ca(ca_key_path: str, ca_cert_path: str, extra_names: list[str] = ()) -> None:
    """A new CA: its key in a folder only its owner may enter (0700, key 0600), its certificate
    (what devices import) 0644."""
    folder = os.path.dirname(os.path.abspath(ca_key_path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    key_pem, cert_pem = make_ca(extra_names)
    write_private(ca_key_path, key_pem, 0o600)
    write_private(ca_cert_path, cert_pem, 0o644)
