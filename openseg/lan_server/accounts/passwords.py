"""LAN user passwords: scrypt hashes, verification and generation.

scrypt is memory-hard and in the standard library (hashlib), so no extra dependency. The parameters
(N=2^14, r=8, p=6: 16 MiB per hash, ~0.3 s on a desktop core, ~1 s on a small ARM board) are above
OWASP's equivalent scrypt settings, whose row for 16 MiB is p=5 (Password Storage Cheat Sheet, from
tobtu.com's "minimum password settings": N*p >= 600000/r * 0.95, a GPU memory-bandwidth model). They
were N=2^15, p=3 (32 MiB): the same CPU work (N*r*p) and the same cost in that model, half the memory,
so half the memory x time an attacker with custom hardware pays; acceptable for generated passwords
(~115 bits), and chosen ones are at least 10 characters. The reason: a guess's hash was the LAN's
largest allocation, and a Pi Zero 2 W has 512 MB for everything (issue 16). The server caches verified
credentials (auth.py), so a correct client pays this once while it keeps using the server, not per
request. Parameters are stored in each hash, so older hashes keep working and new ones can be raised.

The freed 16 MiB goes back to the system only with the unit's MALLOC_MMAP_THRESHOLD_: glibc's default
raises its mmap threshold after such a free (up to 32 MiB) and then keeps the buffer in an arena.

Hash format: scrypt$ln=14,r=8,p=6$<salt base64>$<key base64>
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import NamedTuple


class Parameters(NamedTuple):
    ln: int         # log2 of N, the CPU/memory cost
    r: int          # block size
    p: int          # parallelisation: lanes run one after another in OpenSSL, reusing the memory

    @property
    def memory(self) -> int:
        """Bytes one hash needs (128 * r * N)."""
        return (128 * self.r) << self.ln

    @property
    def work(self) -> int:
        """The CPU work of one hash, in units of a 128-byte block mix (N * r * p)."""
        return (self.r * self.p) << self.ln

    def __str__(self) -> str:
        return f"ln={self.ln},r={self.r},p={self.p}"


LOG2_N, R, P = 14, 8, 6
CURRENT = Parameters(LOG2_N, R, P)
SALT_BYTES, KEY_BYTES = 16, 32
# Bounds for parameters read back from a users file, so a corrupt or hostile file cannot make the
# server allocate more than a small board can give or spin for seconds on one login: at most OWASP's
# 64 MiB row in memory, at most 4 x its costliest row (N=2^17, r=8, p=1) in work.
_LN_RANGE, _R_RANGE, _P_RANGE = (10, 20), (1, 16), (1, 16)
MAX_MEMORY = 64 << 20
MAX_WORK = 4 * ((8 * 1) << 17)

MIN_PASSWORD_LEN = 10       # for passwords a person chooses (--password-stdin)
MAX_PASSWORD_LEN = 1024

# Generated passwords: 4 groups of 5 from an alphabet without look-alikes (0/O, 1/l/I), so a person
# can type one on a phone; 20 symbols from 54 is ~115 bits.
_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_FORMAT = re.compile(r"scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


class HashFormatError(ValueError):
    pass


class StoredHash(NamedTuple):
    """A users file's password hash, parsed and within bounds (parse_hash)."""
    cost: Parameters
    salt: bytes
    key: bytes


def generate_password() -> str:
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(5)) for _ in range(4))


def check_chosen_password(password: str) -> str | None:
    """Why a password a person typed is unacceptable, or None."""
    if len(password) < MIN_PASSWORD_LEN:
        return f"password must be at least {MIN_PASSWORD_LEN} characters"
    if len(password) > MAX_PASSWORD_LEN:
        return f"password must be at most {MAX_PASSWORD_LEN} characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        return "password must not contain control characters"
    return None


def _kdf(password: str, salt: bytes, cost: Parameters, length: int = KEY_BYTES) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << cost.ln, r=cost.r, p=cost.p,
                          maxmem=2 * cost.memory + (1 << 20), dklen=length)


def hash_password(password: str, *, ln: int = LOG2_N, r: int = R, p: int = P) -> str:
    cost = Parameters(ln, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _kdf(password, salt, cost)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${cost}${b64(salt)}${b64(key)}"


def parse_hash(stored: str) -> StoredHash:
    m = _FORMAT.fullmatch(stored)
    if not m:
        raise HashFormatError("not an OpenSEG scrypt hash (scrypt$ln=..,r=..,p=..$salt$key)")
    ln, r, p = (int(m.group(i)) for i in (1, 2, 3))
    for name, value, (lo, hi) in (("ln", ln, _LN_RANGE), ("r", r, _R_RANGE), ("p", p, _P_RANGE)):
        if not lo <= value <= hi:
            raise HashFormatError(f"scrypt parameter {name}={value} outside {lo}-{hi}")
    cost = Parameters(ln, r, p)
    if cost.memory > MAX_MEMORY:
        raise HashFormatError(f"scrypt parameters {cost} need {cost.memory >> 20} MiB, more than "
                              f"{MAX_MEMORY >> 20} MiB")
    if cost.work > MAX_WORK:
        raise HashFormatError(f"scrypt parameters {cost} are {cost.work / CURRENT.work:.0f} times the "
                              f"work of {CURRENT}, more than {MAX_WORK / CURRENT.work:.0f} times")
    try:
        salt = base64.b64decode(m.group(4), validate=True)
        key = base64.b64decode(m.group(5), validate=True)
    except ValueError:
        raise HashFormatError("salt or key is not valid base64") from None
    if len(salt) < 8 or len(key) < 16:
        raise HashFormatError("salt or key too short")
    if len(key) > 64:
        raise HashFormatError("key longer than 64 bytes")
    return StoredHash(cost, salt, key)


def parameters(stored: str) -> Parameters:
    """The parameters of a stored hash (which must already be valid)."""
    return parse_hash(stored).cost


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a stored hash (which must already be valid)."""
    cost, salt, key = parse_hash(stored)
    if len(password) > MAX_PASSWORD_LEN:
        # Still do the work, so an over-long guess is not a faster way to learn anything.
        password = password[:MAX_PASSWORD_LEN] + "\0"
    # As long a key as the hash stores (16-64 bytes; ours are KEY_BYTES), so every hash the users file
    # accepts can verify.
    return hmac.compare_digest(_kdf(password, salt, cost, len(key)), key)
