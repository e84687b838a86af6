"""When a PEM certificate expires, read from its DER bytes: the few tags of X.509's outer structure
that lead to `validity.notAfter` (RFC 5280, 4.1), nothing more.

Why not `cryptography.x509`: the serving process only needs this one date, for a start-up warning,
and importing `cryptography` costs it ~8 MB of memory for as long as it runs. openseg-admin, which
makes and renews certificates, uses `cryptography` (certs.py); tests check this reader against it.
"""
from __future__ import annotations

import datetime as dt
import ssl

_SEQUENCE, _INTEGER, _UTC_TIME, _GENERALIZED_TIME, _VERSION = 0x30, 0x02, 0x17, 0x18, 0xA0


class CertificateFormatError(ValueError):
    pass


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the content, end of the content) of the DER element at `at`."""
    if at + 2 > len(der):
        raise CertificateFormatError("truncated DER")
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or at + count > len(der):
            raise CertificateFormatError("bad DER length")
        length = int.from_bytes(der[at:at + count], "big")
        at += count
    if at + length > len(der):
        raise CertificateFormatError("truncated DER")
    return tag, at, at + length


def _expect(der: bytes, at: int, tag: int) -> tuple[int, int]:
    got, start, end = _element(der, at)
    if got != tag:
        raise CertificateFormatError(f"expected DER tag 0x{tag:02x}, found 0x{got:02x}")
    return start, end


def _time(tag: int, text: bytes) -> dt.datetime:
    try:
        s = text.decode("ascii")
        if tag == _UTC_TIME:             # YYMMDDHHMMSSZ; RFC 5280: YY < 50 is 20YY
            year = int(s[:2])
            s = f"{2000 + year if year < 50 else 1900 + year}{s[2:]}"
        elif tag != _GENERALIZED_TIME:
            raise CertificateFormatError(f"expected a time, found DER tag 0x{tag:02x}")
        return dt.datetime.strptime(s, "%Y%m%d%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CertificateFormatError(f"bad certificate time: {exc}") from None


def not_after(pem: str) -> dt.datetime:
    """The first certificate's notAfter, in UTC. Raises CertificateFormatError (a ValueError)."""
    begin = pem.find(ssl.PEM_HEADER)
    end = pem.find(ssl.PEM_FOOTER, begin)
    try:
        if begin < 0 or end < 0:
            raise ValueError
        der = ssl.PEM_cert_to_DER_cert(pem[begin:end + len(ssl.PEM_FOOTER)])
    except ValueError:
        raise CertificateFormatError("not a PEM certificate") from None
    cert, _ = _expect(der, 0, _SEQUENCE)
    at, _ = _expect(der, cert, _SEQUENCE)                # tbsCertificate
    tag, _, end = _element(der, at)
    if tag == _VERSION:
        at = end
    for tag in (_INTEGER, _SEQUENCE, _SEQUENCE):         # serialNumber, signature, issuer
        _, at = _expect(der, at, tag)
    validity, _ = _expect(der, at, _SEQUENCE)
    _, _, at = _element(der, validity)                   # notBefore
    tag, start, end = _element(der, at)
    return _time(tag, der[start:end])
