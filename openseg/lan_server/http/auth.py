"""HTTP Basic authentication for the LAN server: who is asking, and may they ask now.

Order of checks for a request, and why:
1. A cache of *verified* Authorization headers (a keyed BLAKE2b MAC under a per-process key, never the
   header or the password), kept
   while it is used, answers a client that already logged in, in microseconds, so a page polling
   every few seconds runs the KDF once, when it opens. It is consulted before the throttles, so a
   device that knows the password keeps working while someone else is being throttled for guessing.
2. Throttles refuse with 429 *before* the KDF, so guessing costs the attacker time and costs the
   gateway nothing. Which throttles apply depends on who asks (`throttles_for`):
   - a *known client*, an exact address that has logged in as this user before (KNOWN_TTL_S), is
     counted only against its own (user, address) pair. Nobody else's failures count there, so an
     attacker guessing at the same user, or from the same /64, cannot lock it out;
   - any other client is counted per exact address (one noisy device throttles itself only), per
     IPv6 /64 with a higher limit (rotating privacy addresses does not buy an attacker more guesses,
     and one device alone, stopped at the address limit, cannot reach it), and per user name (many
     addresses guessing one user). These limits stop strangers only; a known client is not counted
     in them and is not refused by them.
   Link-local IPv6 addresses are never grouped: fe80::/64 is on every interface and means nothing.
3. The KDF runs for unknown users too (against a dummy hash with the parameters the users file's
   hashes have), so timing does not reveal which names exist, and at most `kdf_concurrency` at a time, so a burst of guesses cannot make the
   gateway allocate 16 MiB per worker thread. Concurrent requests with the same credentials share
   one run when it succeeds (SharedVerify); a failed guess always costs its own full run.
"""
from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import ipaddress
import itertools
import logging
import math
import secrets
import threading
import time
from typing import Callable, NamedTuple

from ..accounts import passwords
from ..accounts.users_file import NAME_MAX_LEN, NAME_RE, User, UsersStore

REALM = "OpenSEG"
WWW_AUTHENTICATE = f'Basic realm="{REALM}", charset="UTF-8"'

log = logging.getLogger("openseg.lan.auth")


# The longest credential a users file can hold, in base64: a name, ":" and a password of MAX_PASSWORD_LEN
# characters of up to 4 UTF-8 bytes each. Anything longer is refused unread.
MAX_TOKEN = 4 * -(-(NAME_MAX_LEN + 1 + 4 * passwords.MAX_PASSWORD_LEN) // 3)
MAX_HEADER = len("Basic ") + MAX_TOKEN      # the longest header that can be in the verified cache


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, or None if absent/malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token or len(token) > MAX_TOKEN:
        return None
    try:
        # base64.b64decode(validate=True) without its Python wrapper: this runs on every request.
        decoded = binascii.a2b_base64(token.strip(), strict_mode=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def basic_header(name: str, password: str) -> str:
    """The one spelling of a Basic credential the verified cache keeps (RFC 7617's: "Basic", one
    space, padded base64 with zero trailing bits). parse_basic accepts others, so a client holding a
    password could otherwise send endless spellings of it, each a cache miss and a KDF run."""
    token = binascii.b2a_base64(f"{name}:{password}".encode("utf-8"), newline=False)
    return "Basic " + token.decode("ascii")


def client_key(address: str) -> str:
    """The exact client: an IPv4 address, or an IPv6 address (IPv4-mapped ones as IPv4; a zone id
    such as %eth0 is dropped, the address itself identifies the device on that link)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def prefix_key(address: str) -> str | None:
    """The IPv6 /64 an address belongs to (one household's or one host's privacy addresses), or None
    where grouping means nothing: IPv4, IPv4-mapped, and link-local (the same fe80::/64 on every link)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return None
    if ip.version != 6 or ip.ipv4_mapped or ip.is_link_local:
        return None
    return str(ipaddress.ip_network(f"{ip}/64", strict=False))


class Throttle:
    """At most `limit` failed attempts per key within a sliding `window_s`.

    An attempt is counted when it starts (so a burst of parallel guesses cannot all slip past
    the check before the first one fails) and forgiven if it turns out correct."""

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 4096):
        if limit < 1 or window_s <= 0:
            raise ValueError("throttle limit must be >= 1 and window_s > 0")
        self.limit, self.window_s = limit, window_s
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._attempts: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, key: str, now: float) -> collections.deque[float] | None:
        q = self._attempts.get(key)
        if q is not None:
            while q and q[0] <= now - self.window_s:
                q.popleft()
        return q

    def acquire(self, key: str) -> tuple[float, float | None]:
        """(retry_after_s, None) when blocked, else (0, stamp) with the attempt counted."""
        with self._lock:
            now = self._clock()
            q = self._recent(key, now)
            if q is not None and len(q) >= self.limit:
                return max(q[0] + self.window_s - now, 0.001), None
            if q is None:
                self._make_room(now)
                q = self._attempts[key] = collections.deque()
            self._attempts.move_to_end(key)
            q.append(now)
            return 0.0, now

    def forgive(self, key: str, stamp: float) -> None:
        with self._lock:
            q = self._attempts.get(key)
            if q is not None:
                try:
                    q.remove(stamp)
                except ValueError:
                    pass

    def _make_room(self, now: float) -> None:
        if len(self._attempts) < self._max_keys:
            return
        for key in [k for k, q in self._attempts.items() if not q or q[-1] <= now - self.window_s]:
            del self._attempts[key]
        while len(self._attempts) >= self._max_keys:
            self._attempts.popitem(last=False)      # least recently failed


class _Verified:
    """One verified Authorization header: who it logged in as, the hash it was checked against, until
    when it stands unless used again, and when it was last used (VerifiedCache's count of hits)."""
    __slots__ = ("name", "password_hash", "expires", "used")

    def __init__(self, name: str, password_hash: str, expires: float, used: int):
        self.name, self.password_hash, self.expires, self.used = name, password_hash, expires, used


class VerifiedCache:
    """Authorization headers that passed the KDF, by MAC(process key, header), never the header or the
    password, with the user and the hash they were verified against (the caller compares it with the
    users file's current hash, so a password change or removal takes effect at once).

    Keyed by the whole header, so a request that hits does not parse it: every request of an open
    page comes here, and in the loaded server the check's every microsecond costs several (parsing
    the header and the name-and-password MAC, 1.9 us a request in a loop, cost the server about as
    much as the rest of the answer; bench/RESULTS.md, issue 16). A header verifies as one user only
    (its name is in it). Only the canonical spelling is added (`basic_header`); the Authenticator
    looks another spelling up by its canonical form, so the spellings of one credential share one
    entry and one KDF run.

    The MAC is keyed BLAKE2b (RFC 7693's keyed mode, a PRF like HMAC), from CPython's own hashlib
    code. HMAC-SHA256 goes through OpenSSL 3.0, whose one-shot HMAC looks up HMAC and SHA-256 by name
    on each call: in the live server under load it cost 25 us of CPU per request (3 us in a loop on
    its own), keyed BLAKE2b a few (bench/RESULTS.md, issue 16).

    An entry lives while it is used: each hit moves its expiry to `ttl_s` after that use, so a page
    polling every few seconds never runs the KDF again (a fixed lifetime made every open page pay two
    scrypt runs every five minutes). The bound is on idleness (`ttl_s` without a hit) and on the
    number of entries (`max_entries`, least recently used out first).

    A hit takes no lock and moves nothing: it stamps its entry's expiry and the count of uses (each
    one attribute store, whole under the interpreter lock), and `add`, after a KDF run, finds the
    least recently used by that count. (A hit that races an eviction answers for an entry just dropped,
    which was verified all the same; the caller checks its user against the users file either way.)"""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic, max_entries: int = 256):
        self.ttl_s = ttl_s
        self._clock = clock
        self._max = max_entries
        self._keyed = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=32)
        self._lock = threading.Lock()           # adds and evictions; hits go without it
        self._entries: dict[bytes, _Verified] = {}
        self._uses = itertools.count()          # next() is one step under the interpreter lock

    def mac(self, text: str) -> bytes:
        mac = self._keyed.copy()        # the key's block already hashed: a third less per request
        mac.update(text.encode("utf-8", "surrogatepass"))
        return mac.digest()

    def digest(self, name: str, password: str) -> bytes:
        """The MAC of a name and password (SharedVerify's key for one login's KDF run)."""
        return self.mac(f"{name}\0{password}")

    def hit(self, authorization: str) -> tuple[str, str] | None:
        """(user name, password hash) `authorization` was verified as, if it was used within `ttl_s`;
        the use keeps it another `ttl_s`. None: not verified (or no longer)."""
        entry = self._entries.get(self.mac(authorization))
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.expires:
            return None
        entry.expires = now + self.ttl_s
        entry.used = next(self._uses)
        return entry.name, entry.password_hash

    def add(self, authorization: str, user: User) -> None:
        if self.ttl_s <= 0:
            return
        key = self.mac(authorization)
        now = self._clock()
        with self._lock:
            self._entries.pop(key, None)
            if len(self._entries) >= self._max:
                for old in [k for k, e in self._entries.items() if e.expires <= now]:
                    del self._entries[old]
                while len(self._entries) >= self._max:
                    entries = self._entries
                    del entries[min(entries, key=lambda k: entries[k].used)]    # the least recently used
            self._entries[key] = _Verified(user.name, user.password_hash, now + self.ttl_s, next(self._uses))

    def __len__(self) -> int:
        return len(self._entries)


class SharedVerify:
    """Concurrent logins with the same credentials share one KDF run: a page's first tick sends two
    requests at once, and both would otherwise pay scrypt (CPU and 16 MiB each). Only a success is
    shared. A caller whose shared run failed runs the KDF itself, so every wrong guess costs the
    guesser a full KDF, however many copies of it arrive together."""

    def __init__(self, verify: Callable[[str, str], bool], slots: threading.BoundedSemaphore):
        self._verify = verify
        self._slots = slots
        self._lock = threading.Lock()
        self._running: dict[tuple[str, bytes], _Run] = {}     # (stored hash, credential MAC)

    def __call__(self, key: tuple[str, bytes], password: str, stored: str) -> bool:
        with self._lock:
            run = self._running.get(key)
            leader = run is None
            if leader:
                run = self._running[key] = _Run()
            else:
                run.followers += 1
        if not leader:
            run.done.wait()
            if run.good:
                return True
            return self._run(password, stored)
        try:
            run.good = self._run(password, stored)
        finally:
            with self._lock:
                del self._running[key]
            run.done.set()
        return run.good

    def _run(self, password: str, stored: str) -> bool:
        with self._slots:
            return self._verify(password, stored)

    def waiting(self) -> int:
        """How many callers wait on another's run now."""
        with self._lock:
            return sum(run.followers for run in self._running.values())


class _Run:
    def __init__(self):
        self.done = threading.Event()
        self.good = False
        self.followers = 0


class KnownClients:
    """(user, exact address) pairs that logged in successfully within `ttl_s`: the clients whose
    right password must keep working while strangers guess. Bounded; the least recently seen goes
    first. Only a successful KDF check adds a pair, so no failed attempt can make or break one."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic, max_entries: int = 1024):
        self.ttl_s = ttl_s
        self._clock = clock
        self._max = max_entries
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()

    def knows(self, name: str, address: str) -> bool:
        seen = self._seen.get((name, address))
        return seen is not None and self._clock() - seen < self.ttl_s

    def add(self, name: str, address: str) -> None:
        with self._lock:
            self._seen[(name, address)] = self._clock()
            self._seen.move_to_end((name, address))
            while len(self._seen) > self._max:
                self._seen.popitem(last=False)


def _dummy_hash(cost: passwords.Parameters) -> str:
    """What an unknown user's guess is checked against: a hash with the parameters real ones have
    (`UsersStore.hash_parameters`) and a random salt and key, so checking costs what a known name's
    check costs and matches nothing (a 2^-256 chance). Made without running the KDF: none at start-up
    (16 MiB and about a second on a small board)."""
    b64 = lambda n: base64.b64encode(secrets.token_bytes(n)).decode("ascii")  # noqa: E731
    return f"scrypt${cost}${b64(passwords.SALT_BYTES)}${b64(passwords.KEY_BYTES)}"


class Decision(NamedTuple):
    """What check() decided (a named tuple: one is made on every request)."""
    user: User | None = None            # set when authenticated
    retry_after_s: int = 0              # > 0 when throttled (429)

    @property
    def ok(self) -> bool:
        return self.user is not None


KNOWN_TTL_S = 30 * 86400.0      # a household device that logged in within a month is known
PREFIX_FACTOR = 5               # a /64 may fail this many times an address's limit


class Authenticator:
    """Defaults are for production; tests pass smaller limits and a fake clock."""

    def __init__(self, users: UsersStore, *, address_limit: int = 10, user_limit: int = 30,
                 window_s: float = 600.0, cache_ttl_s: float = 300.0, kdf_concurrency: int = 2,
                 known_ttl_s: float = KNOWN_TTL_S, clock: Callable[[], float] = time.monotonic,
                 verify: Callable[[str, str], bool] = passwords.verify_password):
        if address_limit >= user_limit:
            raise ValueError("address_limit must be below user_limit, so one guessing host is "
                             "stopped before the user it guesses at is")
        self.users = users
        self.by_address = Throttle(address_limit, window_s, clock=clock)
        self.by_prefix = Throttle(address_limit * PREFIX_FACTOR, window_s, clock=clock)
        self.by_user = Throttle(user_limit, window_s, clock=clock)
        self.by_known = Throttle(address_limit, window_s, clock=clock)
        self.known = KnownClients(known_ttl_s, clock=clock)
        self.cache = VerifiedCache(cache_ttl_s, clock=clock)
        self.shared_verify = SharedVerify(verify, threading.BoundedSemaphore(kdf_concurrency))
        self._dummies: dict[passwords.Parameters, str] = {}

    def dummy_hash(self) -> str:
        """The hash a guess at an unknown name is checked against, with the users file's parameters
        (one per set of parameters, kept: made once, no KDF)."""
        cost = self.users.hash_parameters()
        dummy = self._dummies.get(cost)
        return dummy if dummy is not None else self._dummies.setdefault(cost, _dummy_hash(cost))

    def throttles_for(self, name: str, remote_addr: str) -> list[tuple[Throttle, str]]:
        """The (throttle, key) pairs an attempt by `name` from `remote_addr` is counted in, in order."""
        addr = client_key(remote_addr)
        user_key = name if NAME_RE.fullmatch(name) else "\0invalid-name"
        if self.known.knows(user_key, addr):
            return [(self.by_known, f"{user_key}\0{addr}")]
        out = [(self.by_address, addr)]
        prefix = prefix_key(remote_addr)
        if prefix is not None:
            out.append((self.by_prefix, prefix))
        out.append((self.by_user, user_key))
        return out

    def _admit(self, counted: list[tuple[Throttle, str]]) -> tuple[int, list[tuple[Throttle, str, float]]]:
        """Count the attempt in every throttle, or in none: (retry_after_s, []) when one refuses."""
        taken: list[tuple[Throttle, str, float]] = []
        for throttle, key in counted:
            wait, stamp = throttle.acquire(key)
            if stamp is None:
                for t, k, s in taken:
                    t.forgive(k, s)
                log.debug("throttled: %s (retry after %.0f s)", key, wait)
                return math.ceil(wait), []
            taken.append((throttle, key, stamp))
        return 0, taken

    def _verified(self, authorization: str) -> User | None:
        """The user `authorization` was verified as, if that still stands: the entry is in use and the
        users file still has that user with that hash."""
        held = self.cache.hit(authorization) if len(authorization) <= MAX_HEADER else None
        if held is None:
            return None
        user = self.users.get(held[0])
        return user if user is not None and user.password_hash == held[1] else None

    def check(self, remote_addr: str, authorization: str | None) -> Decision:
        if authorization:
            user = self._verified(authorization)
            if user is not None:
                return Decision(user=user)
        creds = parse_basic(authorization)
        if creds is None:
            return Decision()
        name, password = creds
        canonical = basic_header(name, password)
        if canonical != authorization:
            # "basic", extra spaces or padding: the same credentials, answered from their entry.
            user = self._verified(canonical)
            if user is not None:
                return Decision(user=user)
        user = self.users.get(name)

        wait, taken = self._admit(self.throttles_for(name, remote_addr))
        if not taken:
            return Decision(retry_after_s=wait)

        stored = user.password_hash if user else self.dummy_hash()
        good = self.shared_verify((stored, self.cache.digest(name, password)), password, stored)
        if good and user is not None:
            for throttle, key, stamp in taken:
                throttle.forgive(key, stamp)
            self.known.add(user.name, client_key(remote_addr))
            self.cache.add(canonical, user)
            return Decision(user=user)
        log.warning("login failed: user %s from %s", name if NAME_RE.fullmatch(name) else "(invalid name)",
                    remote_addr)
        return Decision()
