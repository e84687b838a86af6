"""A fresh per-installation TLS identity: ECDSA P-256 key and a self-signed certificate.

Every gateway gets its own key at `openseg-admin init`, so no two installations share a secret and
a user can pin the certificate (or install it as trusted) once. The certificate carries what strict
verifiers (OpenSSL's X509_STRICT, browsers) look for: SANs for every name the page is reached by,
Subject and Authority Key Identifiers, a serverAuth EKU, and it is not a CA.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 365


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


def make_identity(extra_names: list[str] = (), *, days: int = VALID_DAYS,
                  now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or dt.datetime.now(dt.timezone.utc)
    host = socket.gethostname() or "localhost"
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenSEG gateway"),
        x509.NameAttribute(NameOID.COMMON_NAME, host[:64]),
    ])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))      # tolerate a little clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san_entries(list(extra_names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def write_identity(key_path: str, cert_path: str, extra_names: list[str] = ()) -> None:
    """Write a new key (created with mode 0600 from the start, never readable by others even
    briefly) and its certificate (0644: it is public)."""
    key_pem, cert_pem = make_identity(extra_names)
    for path, data, mode in ((key_path, key_pem, 0o600), (cert_path, cert_pem, 0o644)):
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
