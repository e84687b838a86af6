"""The host names and addresses a certificate is valid for (its subjectAltName), read from the DER
with the standard library alone: the serving process needs only these names to decide which Host
headers it may echo into ESPI links (app.py), not a whole X.509 library.

A name a client used is echoed into the links of an answer only if the gateway's own certificate
vouches for it; any other Host header (`evil.example`) gets the configured base URL, so a proxy or a
DNS rebinding page cannot make the gateway hand out links to somewhere else.
"""
from __future__ import annotations

import ipaddress
import ssl

SAN_OID = b"\x06\x03\x55\x1d\x11"      # OID 2.5.29.17, subjectAltName
DNS_NAME, IP_ADDRESS = 0x82, 0x87       # GeneralName [2] dNSName, [7] iPAddress (implicit tags)


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the DER element at pos."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def san_names(der: bytes) -> frozenset[str]:
    """The DNS names (lower case) and IP addresses (canonical text) of the certificate's
    subjectAltName; empty when it has none."""
    at = der.find(SAN_OID)
    if at < 0:
        return frozenset()
    tag, start, end = _tlv(der, at + len(SAN_OID))
    if tag == 0x01:                                     # the optional `critical` BOOLEAN
        tag, start, end = _tlv(der, end)
    if tag != 0x04:
        return frozenset()
    tag, pos, stop = _tlv(der, start)                   # SEQUENCE OF GeneralName
    names = set()
    while pos < stop:
        tag, start, end = _tlv(der, pos)
        if tag == DNS_NAME:
            names.add(der[start:end].decode("ascii").lower())
        elif tag == IP_ADDRESS and end - start in (4, 16):
            names.add(str(ipaddress.ip_address(der[start:end])))
        pos = end
    return frozenset(names)


def from_pem_file(path: str) -> frozenset[str]:
    """The names of the file's first certificate: the server's (a chain file has the CA's after it)."""
    with open(path, encoding="ascii") as f:
        text = f.read()
    end = text.find(ssl.PEM_FOOTER)
    return san_names(ssl.PEM_cert_to_DER_cert(text if end < 0 else text[:end + len(ssl.PEM_FOOTER)]))
