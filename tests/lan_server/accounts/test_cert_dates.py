"""openseg.lan_server.accounts.cert_dates (the serving process's certificate expiry, without `cryptography`) against
`cryptography`'s own reading of the same certificates."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from openseg.lan_server.accounts import cert_dates, certs


def _cert(not_after: dt.datetime, key=None) -> bytes:
    from cryptography.hazmat.primitives import serialization
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("when", [
    dt.datetime(2027, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc),       # UTCTime
    dt.datetime(2049, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),   # UTCTime, last year of it
    dt.datetime(2050, 1, 1, 0, 0, 0, tzinfo=dt.timezone.utc),        # GeneralizedTime from 2050
    dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc),   # RFC 5280's "no expiry"
])
def test_not_after_matches_cryptography(when):
    pem = _cert(when)
    assert cert_dates.not_after(pem.decode()) == x509.load_pem_x509_certificate(pem).not_valid_after_utc == when


def test_the_gateways_own_certificate_and_a_chain_file():
    _, cert_pem = certs.make_identity(days=10)
    other = _cert(dt.datetime(2031, 1, 1, tzinfo=dt.timezone.utc),
                  rsa.generate_private_key(public_exponent=65537, key_size=2048))
    expected = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    assert cert_dates.not_after((cert_pem + other).decode()) == expected   # the first one counts


@pytest.mark.parametrize("text", ["", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                  "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"])
def test_garbage_is_a_value_error(text):
    with pytest.raises(ValueError):
        cert_dates.not_after(text)


def test_the_serving_process_does_not_import_cryptography():
    code = "import sys, openseg.lan_server.main; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
