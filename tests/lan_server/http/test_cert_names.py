"""cert_names reads a certificate's subjectAltName with the standard library: checked against the
`cryptography` package (an independent X.509 parser) on certificates made by the gateway's own
`certs.make_identity`, with and without extra names."""
import ipaddress
import ssl

import pytest
from cryptography import x509

from openseg.lan_server.http import cert_names
from openseg.lan_server.accounts import certs


@pytest.mark.parametrize("extra", [[], ["gateway.example.org", "192.168.1.20", "fd00::5"], ["a" * 60 + ".example"] * 1])
def test_names_match_an_independent_x509_parser(tmp_path, extra):
    _, pem = certs.make_identity(extra)
    path = tmp_path / "cert.pem"
    path.write_bytes(pem)
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    expected = {n.lower() for n in san.get_values_for_type(x509.DNSName)} | {
        str(ipaddress.ip_address(a)) for a in san.get_values_for_type(x509.IPAddress)}
    got = cert_names.from_pem_file(str(path))
    assert got == expected and {"localhost", "127.0.0.1", "::1"} <= got
    assert set(n.lower() for n in extra) <= got
    server = pem.decode().split(ssl.PEM_FOOTER)[0] + ssl.PEM_FOOTER      # the chain's first: the server's
    assert cert_names.san_names(ssl.PEM_cert_to_DER_cert(server)) == got


def test_no_san_means_no_names():
    assert cert_names.san_names(b"\x30\x03\x02\x01\x00") == frozenset()
