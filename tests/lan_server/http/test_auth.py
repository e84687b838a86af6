"""Passwords, the users file and the authenticator, in-process with a fake clock.

The e2e tests (tests/system/test_openseg_lan.py) show the same behaviour through a real openseg-lan;
these pin down the properties that are invisible from outside: the KDF is not run when a request is
throttled or cached, parallel guesses cannot overshoot the limit, a password change invalidates the
cache at once.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time

import pytest

from openseg.lan_server.accounts import passwords, users_file
from openseg.lan_server.http.auth import (MAX_HEADER, MAX_TOKEN, Authenticator, Throttle, VerifiedCache, basic_header,
                                         client_key, parse_basic, prefix_key)
from openseg.lan_server.accounts.users_file import NAME_RE, User, UsersFileError, UsersStore

FAST = dict(ln=10, r=8, p=1)       # cheap parameters for tests that hash many times


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- passwords ---------------------------------------------------------------------------------------
def test_hash_verify_roundtrip_and_default_parameters():
    stored = passwords.hash_password("correct horse battery")
    assert stored.startswith(f"scrypt$ln={passwords.LOG2_N},r={passwords.R},p={passwords.P}$")
    n = 1 << passwords.LOG2_N
    assert 128 * passwords.R * n == 16 << 20         # 16 MiB per hash: memory-hard, and issue 16's bound
    # tobtu.com's minimum scrypt settings, the source of OWASP's table: N >= 600000/r/p * 0.95
    assert n * passwords.R * passwords.P >= 600_000 * 0.95
    # the CPU work of the parameters used before (N=2^15, r=8, p=3), so a guess costs no less
    assert n * passwords.R * passwords.P >= (1 << 15) * 8 * 3
    assert passwords.CURRENT == (passwords.LOG2_N, passwords.R, passwords.P)
    assert passwords.CURRENT.memory == 128 * passwords.R * n and passwords.CURRENT.work == n * passwords.R * passwords.P
    assert passwords.verify_password("correct horse battery", stored)
    assert not passwords.verify_password("correct horse batterz", stored)
    assert not passwords.verify_password("", stored)


@pytest.mark.parametrize("cost", [passwords.CURRENT, passwords.Parameters(15, 8, 3)])
def test_the_stored_key_is_scrypt_with_the_stored_parameters(cost):
    """A known answer from hashlib.scrypt called here with the parameters the hash names: the KDF
    really runs with them (a p or N that the header claims but the call drops would fail this)."""
    stored = passwords.hash_password("correct horse battery", ln=cost.ln, r=cost.r, p=cost.p)
    _, params, salt, key = stored.split("$")
    assert params == str(cost)
    expected = hashlib.scrypt(b"correct horse battery", salt=base64.b64decode(salt), n=2 ** cost.ln,
                              r=cost.r, p=cost.p, maxmem=1 << 30, dklen=32)
    assert base64.b64decode(key) == expected


@pytest.mark.parametrize("length", [16, 20, 64])
def test_a_stored_key_of_any_accepted_length_verifies(length):
    """parse_hash accepts keys of 16 to 64 bytes, so verification derives as many (from hashlib.scrypt
    here, the independent reference): a hash with a shorter key than ours must not lock its user out."""
    salt = b"saltsaltsalt"
    key = hashlib.scrypt(b"correct horse battery", salt=salt, n=2 ** 10, r=8, p=1, dklen=length)
    stored = f"scrypt$ln=10,r=8,p=1${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert passwords.verify_password("correct horse battery", stored)
    assert not passwords.verify_password("correct horse batterz", stored)
    with pytest.raises(passwords.HashFormatError, match="longer than 64"):
        passwords.parse_hash(stored.rsplit("$", 1)[0] + "$" + base64.b64encode(bytes(65)).decode())


def test_owasps_rows_up_to_64_mib_are_accepted_from_a_users_file():
    for ln, p in ((16, 2), (15, 3), (14, 5), (13, 10)):
        assert passwords.parse_hash(f"scrypt$ln={ln},r=8,p={p}$c2FsdHNhbHRzYWx0$" + "A" * 44).cost == (ln, 8, p)


def test_hashes_made_with_the_earlier_parameters_still_verify():
    stored = passwords.hash_password("correct horse battery", ln=15, r=8, p=3)      # 32 MiB, before issue 16
    assert stored.startswith("scrypt$ln=15,r=8,p=3$")
    assert passwords.verify_password("correct horse battery", stored)
    assert not passwords.verify_password("correct horse batterz", stored)


def test_same_password_hashes_differently():
    assert passwords.hash_password("abcdefghijk", **FAST) != passwords.hash_password("abcdefghijk", **FAST)


@pytest.mark.parametrize("bad", [
    "", "plain", "scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ=",                          # missing key
    "scrypt$ln=40,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 44,                      # absurd memory
    "scrypt$ln=15,r=99,p=1$c2FsdHNhbHRzYWx0$" + "A" * 44,
    "scrypt$ln=20,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 44,                      # 1 GiB
    "scrypt$ln=17,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 44,                      # 128 MiB
    "scrypt$ln=16,r=8,p=16$c2FsdHNhbHRzYWx0$" + "A" * 44,                     # 64 MiB, 16x the work
    "scrypt$ln=15,r=8,p=1$!!!$" + "A" * 44,
    "bcrypt$ln=15,r=8,p=1$c2FsdHNhbHRzYWx0$" + "A" * 44,
])
def test_malformed_or_hostile_hashes_are_rejected(bad):
    with pytest.raises(passwords.HashFormatError):
        passwords.parse_hash(bad)


def test_generated_passwords_are_unique_strong_and_typeable():
    seen = {passwords.generate_password() for _ in range(200)}
    assert len(seen) == 200
    for pw in seen:
        groups = pw.split("-")
        assert len(groups) == 4 and all(len(g) == 5 for g in groups)
        assert not set(pw) & set("0O1lI")
        assert passwords.check_chosen_password(pw) is None


def test_chosen_password_rules():
    assert passwords.check_chosen_password("short")
    assert passwords.check_chosen_password("x" * 2000)
    assert passwords.check_chosen_password("has\ttab-inside-it")
    assert passwords.check_chosen_password("long enough pass") is None


# -- Basic header, client key ----------------------------------------------------------------------------
def test_parse_basic():
    assert parse_basic(basic("alice", "pw:with:colons")) == ("alice", "pw:with:colons")
    assert parse_basic(basic("zoë", "pässword")) == ("zoë", "pässword")
    assert parse_basic("basic " + base64.b64encode(b"a:b").decode()) == ("a", "b")
    for bad in (None, "", "Basic", "Bearer abc", "Basic !!!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                "Basic " + base64.b64encode(b"\xff\xfe:x").decode(), "Basic " + "A" * 5000):
        assert parse_basic(bad) is None, bad


def test_client_key_is_the_exact_address_and_prefix_key_the_global_64():
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2::5") != client_key("2001:db8:1:2:ffff::9")
    assert client_key("fe80::1%eth0") == "fe80::1"
    assert prefix_key("2001:db8:1:2::5") == prefix_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert prefix_key("2001:db8:1:3::5") != prefix_key("2001:db8:1:2::5")
    # Never grouped: IPv4, and link-local (every interface has the same fe80::/64).
    assert prefix_key("192.0.2.7") is None and prefix_key("::ffff:192.0.2.7") is None
    assert prefix_key("fe80::1%eth0") is None and prefix_key("fe80::2") is None


# -- throttle and cache -------------------------------------------------------------------------------
def test_throttle_sliding_window():
    clock = Clock()
    t = Throttle(3, 60.0, clock=clock)
    for _ in range(3):
        wait, stamp = t.acquire("k")
        assert wait == 0 and stamp is not None
        clock.t += 1
    wait, stamp = t.acquire("k")
    assert stamp is None and 56 < wait <= 58          # oldest attempt (t=1000) leaves at t=1060
    assert t.acquire("other")[1] is not None          # keys are independent
    clock.t = 1060.5
    assert t.acquire("k")[1] is not None              # one slot freed


def test_throttle_forgive_removes_only_that_attempt():
    clock = Clock()
    t = Throttle(2, 60.0, clock=clock)
    _, s1 = t.acquire("k")
    clock.t += 1
    _, s2 = t.acquire("k")
    t.forgive("k", s2)
    assert t.acquire("k")[1] is not None
    assert t.acquire("k")[1] is None


def test_throttle_memory_is_bounded():
    t = Throttle(1, 60.0, clock=Clock(), max_keys=100)
    for i in range(1000):
        t.acquire(f"k{i}")
    assert len(t._attempts) <= 100


def test_verified_cache():
    """Hits only the exact header that was verified, tells who it was verified as and against which
    hash (the Authenticator compares that with the users file's), and keeps neither the header nor the
    password."""
    clock = Clock()
    cache = VerifiedCache(10.0, clock=clock)
    u = User("alice", "sub1", "scrypt$hash-a")
    right = basic("alice", "a-long-secret")
    assert cache.hit(right) is None
    cache.add(right, u)
    assert cache.hit(right) == ("alice", "scrypt$hash-a")
    assert cache.hit(basic("alice", "a-long-secreT")) is None
    assert cache.hit(right.replace("Basic", "basic")) is None   # the exact header; see the next test
    clock.t += 10.0
    assert cache.hit(right) is None
    held = repr([(k, vars_of(e)) for k, e in cache._entries.items()])
    assert "a-long-secret" not in held and right.split()[1] not in held


def vars_of(entry):
    return {name: getattr(entry, name) for name in entry.__slots__}


# -- authenticator -----------------------------------------------------------------------------------
class CountingVerify:
    def __init__(self, delay: float = 0.0):
        self.calls: list[str] = []
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, password: str, stored: str) -> bool:
        with self._lock:
            self.calls.append(stored)
        time.sleep(self.delay)
        return passwords.verify_password(password, stored)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "users.toml"
    users = {n: User(n, f"sub-{n}", passwords.hash_password(f"{n}-password", **FAST)) for n in ("alice", "bob")}
    path.write_text(users_file.render(users))
    return UsersStore(str(path), clock=Clock())


def make_auth(store, **kw):
    verify = CountingVerify(kw.pop("delay", 0.0))
    clock = kw.pop("clock", Clock())
    kw = {"address_limit": 3, "user_limit": 6, "window_s": 60.0, "cache_ttl_s": 30.0, **kw}
    return Authenticator(store, clock=clock, verify=verify, **kw), verify, clock


def test_no_or_malformed_credentials_are_401_without_kdf(store):
    auth, verify, _ = make_auth(store)
    assert not auth.check("10.0.0.1", None).ok
    assert not auth.check("10.0.0.1", "Basic ???").ok
    assert verify.calls == []


def test_right_password_then_cached(store):
    auth, verify, clock = make_auth(store)
    d = auth.check("10.0.0.1", basic("alice", "alice-password"))
    assert d.ok and d.user.subscription == "sub-alice"
    assert len(verify.calls) == 1
    for _ in range(5):
        assert auth.check("10.0.0.9", basic("alice", "alice-password")).ok
    assert len(verify.calls) == 1                         # served from the cache: no KDF
    clock.t += 31
    assert auth.check("10.0.0.1", basic("alice", "alice-password")).ok
    assert len(verify.calls) == 2                         # cache entry expired


def spellings(user: str, password: str) -> list[str]:
    """Other headers parse_basic reads as the same credentials: scheme case, spaces, and non-zero
    trailing bits before the padding (RFC 4648 lets a decoder accept them; binascii does)."""
    token = basic(user, password).split()[1]
    assert token.endswith("=") and not token.endswith("==")   # one pad: the last digit has 2 spare bits
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digit = b64.index(token[-2])
    out = ["basic " + token, "BASIC " + token, "Basic  " + token, " Basic " + token + " "]
    out += ["Basic " + token[:-2] + b64[digit | bits] + "=" for bits in (1, 2, 3)]
    assert all(parse_basic(h) == (user, password) for h in out)
    return out


def test_every_spelling_of_one_credential_shares_one_entry_and_one_kdf_run(store):
    """Endless spellings of a known password must not each run the KDF (a success is forgiven by the
    throttles, so nothing else would stop them) nor push other users' entries out of the cache."""
    auth, verify, _ = make_auth(store)
    other = spellings("alice", "alice-password")
    assert auth.check("10.0.0.1", other[0]).ok
    assert len(verify.calls) == 1 and len(auth.cache) == 1
    for header in other[1:] + [basic("alice", "alice-password")] + other:
        assert auth.check("10.0.0.1", header).user.name == "alice"
    assert len(verify.calls) == 1 and len(auth.cache) == 1
    assert auth.cache.hit(basic("alice", "alice-password")) is not None   # the entry is the canonical one
    assert basic_header("zoë", "pässword:x") == basic("zoë", "pässword:x")
    # A wrong password in any spelling is still a full-price guess.
    wrong = spellings("alice", "alice-passwore")
    for header in wrong[:2]:
        assert not auth.check("10.0.0.1", header).ok
    assert len(verify.calls) == 3 and len(auth.cache) == 1


def test_unknown_user_costs_a_kdf_too(store):
    auth, verify, _ = make_auth(store)
    assert not auth.check("10.0.0.1", basic("mallory", "whatever1")).ok
    assert not auth.check("10.0.0.1", basic("bad name!", "whatever1")).ok
    assert len(verify.calls) == 2
    assert all(c == auth.dummy_hash() for c in verify.calls)
    # the users' own parameters (FAST here), so a guess at a name nobody has takes a known name's time
    assert passwords.parameters(verify.calls[0]) == passwords.Parameters(**FAST)


def test_address_throttle_before_kdf_and_other_address_gets_in(store):
    auth, verify, _ = make_auth(store)
    for _ in range(3):
        d = auth.check("10.0.0.1", basic("alice", "guess-guess"))
        assert not d.ok and d.retry_after_s == 0
    d = auth.check("10.0.0.1", basic("alice", "guess-guess"))
    assert not d.ok and d.retry_after_s > 0
    d = auth.check("10.0.0.1", basic("alice", "alice-password"))     # even the right one: no KDF now
    assert d.retry_after_s > 0
    assert len(verify.calls) == 3
    assert auth.check("10.0.0.2", basic("alice", "alice-password")).ok


def test_user_throttle_across_addresses(store):
    auth, verify, _ = make_auth(store)
    for i in range(6):
        auth.check(f"10.0.1.{i // 2}", basic("alice", "guess-guess"))     # 2 per address: under 3
    calls = len(verify.calls)
    d = auth.check("10.0.2.1", basic("alice", "alice-password"))
    assert d.retry_after_s > 0                                           # user throttled, no KDF
    assert auth.check("10.0.2.1", basic("bob", "bob-password")).ok        # other users unaffected
    assert len(verify.calls) == calls + 1


def test_verified_password_keeps_working_while_its_user_is_under_attack(store):
    auth, verify, _ = make_auth(store)
    assert auth.check("10.0.0.100", basic("alice", "alice-password")).ok   # the household's display
    for i in range(6):
        auth.check(f"10.0.1.{i // 2}", basic("alice", "guess-guess"))
    calls = len(verify.calls)
    assert auth.check("10.0.1.9", basic("alice", "guess-guess")).retry_after_s > 0
    assert auth.check("10.0.0.100", basic("alice", "alice-password")).ok   # cache, not throttled
    assert len(verify.calls) == calls


def test_successes_do_not_count_and_throttle_expires(store):
    auth, _, clock = make_auth(store, cache_ttl_s=0)
    for _ in range(10):
        assert auth.check("10.0.0.1", basic("alice", "alice-password")).ok
    for _ in range(3):
        auth.check("10.0.0.1", basic("alice", "guess-guess"))
    assert auth.check("10.0.0.1", basic("alice", "alice-password")).retry_after_s > 0
    clock.t += 61
    assert auth.check("10.0.0.1", basic("alice", "alice-password")).ok


def test_parallel_guesses_cannot_overshoot_the_limit(store):
    auth, verify, _ = make_auth(store, delay=0.05, kdf_concurrency=8)
    barrier = threading.Barrier(12)

    def guess():
        barrier.wait()
        auth.check("10.0.0.1", basic("alice", "guess-guess"))

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(verify.calls) == 3


def test_kdf_concurrency_is_bounded(store):
    running, peak, lock = [0], [0], threading.Lock()

    def verify(password, stored):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return False

    auth = Authenticator(store, address_limit=50, user_limit=100, kdf_concurrency=2, verify=verify)
    threads = [threading.Thread(target=auth.check, args=(f"10.0.0.{i}", basic("alice", "x" * 12)))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2


def test_issue_lockout_guessing_from_four_addresses_leaves_known_clients_working(store):
    """Issue 14: 32 wrong guesses from 4 loopback addresses used to lock "alice" out for ten minutes,
    her right password included, and a display once its cache entry expired."""
    auth, verify, clock = make_auth(store, address_limit=10, user_limit=30, window_s=600.0, cache_ttl_s=300.0)
    assert auth.check("127.0.0.1", basic("alice", "alice-password")).ok      # the display, a while ago
    assert auth.check("127.0.0.9", basic("alice", "alice-password")).ok      # her phone
    clock.t += 3600
    for i in range(32):
        auth.check(f"127.0.0.{2 + i % 4}", basic("alice", f"guess-{i}"))
    # Guessing stays throttled: from the four addresses, and from any other stranger.
    assert auth.check("127.0.0.2", basic("alice", "guess-x")).retry_after_s > 0
    calls = len(verify.calls)
    assert auth.check("127.0.0.50", basic("alice", "guess-y")).retry_after_s > 0
    assert len(verify.calls) == calls                                        # no KDF for them
    # The household's devices, with their cache entries long expired, still get in.
    assert auth.check("127.0.0.1", basic("alice", "alice-password")).ok
    assert len(verify.calls) == calls + 1                                    # a KDF, not a 429
    assert auth.check("127.0.0.9", basic("alice", "alice-password")).ok


def test_known_client_is_throttled_on_its_own_failures_only(store):
    auth, verify, clock = make_auth(store, cache_ttl_s=0)
    assert auth.check("10.0.0.100", basic("alice", "alice-password")).ok
    for i in range(3):                                   # guessing from the known address itself
        assert not auth.check("10.0.0.100", basic("alice", f"guess-{i}")).ok
    assert auth.check("10.0.0.100", basic("alice", "alice-password")).retry_after_s > 0
    # Known for alice only: as bob, that address is a stranger with its own address count.
    assert auth.check("10.0.0.100", basic("bob", "bob-password")).ok
    clock.t += 61
    assert auth.check("10.0.0.100", basic("alice", "alice-password")).ok


def test_strangers_failures_as_a_user_never_reach_known_addresses_of_that_user(store):
    auth, _, _ = make_auth(store, cache_ttl_s=0)
    assert auth.check("10.0.0.100", basic("alice", "alice-password")).ok
    for i in range(60):                                 # far beyond every limit, from 30 addresses
        auth.check(f"10.0.1.{i // 2}", basic("alice", "guess-guess"))
    assert auth.check("10.0.0.100", basic("alice", "alice-password")).ok


def test_one_noisy_ipv6_device_does_not_lock_out_its_prefix_or_the_link(store):
    auth, _, _ = make_auth(store, cache_ttl_s=0)       # address limit 3, so the /64 allows 15
    for i in range(40):
        auth.check("2001:db8:1:2::bad", basic("alice", f"guess-{i}"))
        auth.check("fe80::bad%eth0", basic("alice", f"guess-{i}"))
    assert auth.check("2001:db8:1:2::bad", basic("bob", "bob-password")).retry_after_s > 0
    # Other devices on the same /64 and the same link, never logged in before: not refused.
    assert auth.check("2001:db8:1:2::77", basic("bob", "bob-password")).ok
    assert auth.check("fe80::77%eth0", basic("bob", "bob-password")).ok
    assert auth.check("fe80::78%wlan0", basic("bob", "bob-password")).ok


def test_rotating_ipv6_addresses_do_not_buy_an_attacker_more_guesses(store):
    auth, verify, _ = make_auth(store, user_limit=100)  # so that only the /64 limit can stop it
    for i in range(40):
        auth.check(f"2001:db8:1:2::{i + 1:x}", basic("mallory", "guess-guess"))
    assert len(verify.calls) == 15                      # the /64 stopped it at 5 x the address limit
    assert auth.check("2001:db8:1:2::99", basic("bob", "bob-password")).retry_after_s > 0
    assert auth.check("2001:db8:1:3::1", basic("bob", "bob-password")).ok


def test_address_limit_must_be_below_user_limit(store):
    with pytest.raises(ValueError):
        Authenticator(store, address_limit=10, user_limit=10)


# -- users file -----------------------------------------------------------------------------------------
def test_users_file_render_parse_roundtrip():
    users = {"alice": User("alice", "s-1", passwords.hash_password("alice-password", **FAST)),
             "Bob.2": User("Bob.2", "X_9", passwords.hash_password("bob-password", **FAST))}
    assert users_file.parse(users_file.render(users)) == users


@pytest.mark.parametrize("text, needle", [
    ("[users.alice]\nsubscription = 's'\n", "exactly the keys"),
    ("[users.\"a b\"]\nsubscription = 's'\npassword_hash = 'x'\n", "invalid user name"),
    ("[users.alice]\nsubscription = 'a/b'\npassword_hash = 'x'\n", "invalid subscription"),
    ("[users.alice]\nsubscription = 's'\npassword_hash = 'md5$x'\n", "password_hash"),
    ("[other]\n", "unknown key"),
    ("[users.alice\n", "not valid TOML"),
])
def test_users_file_errors_name_the_problem(text, needle):
    with pytest.raises(UsersFileError, match=needle):
        users_file.parse(text)


def test_name_and_subscription_rules():
    for good in ("alice", "a", "Bob.smith", "x_y-z", "a" * 32):
        assert users_file.check_name(good) is None
    for bad in ("", ".hidden", "-x", "a b", "a:b", "a/b", "é", "a" * 33, 'a"b', "a\nb"):
        assert users_file.check_name(bad), bad
    for good in ("1", "e4d19b95a9a024b4", "sub_1-A"):
        assert users_file.check_subscription(good) is None
    for bad in ("", "a.b", "a/b", "../x", "a b", "x" * 65, "%2e"):
        assert users_file.check_subscription(bad), bad


def test_store_reloads_on_change_at_most_once_per_interval(tmp_path):
    path = tmp_path / "users.toml"
    alice = User("alice", "s1", passwords.hash_password("alice-password", **FAST))
    path.write_text(users_file.render({"alice": alice}))
    clock = Clock()
    store = UsersStore(str(path), clock=clock, check_interval_s=1.0)
    carol = User("carol", "s3", passwords.hash_password("carol-password", **FAST))
    users_file.write_atomic(str(path), users_file.render({"alice": alice, "carol": carol}))
    assert store.get("carol") is None                  # not yet checked again
    clock.t += 1.0
    assert store.get("carol") == carol
    # a broken file keeps the last good users (and is logged)
    path.write_text("[users.alice\n")
    clock.t += 1.0
    assert store.get("carol") == carol
    users_file.write_atomic(str(path), users_file.render({"alice": alice}))
    clock.t += 1.0
    assert store.get("carol") is None and store.get("alice") == alice


def test_password_change_invalidates_cache_immediately(tmp_path):
    path = tmp_path / "users.toml"
    path.write_text(users_file.render({"alice": User("alice", "s1", passwords.hash_password("old-password", **FAST))}))
    clock = Clock()
    store = UsersStore(str(path), clock=clock)
    auth = Authenticator(store, clock=clock, address_limit=3, user_limit=6)
    assert auth.check("10.0.0.1", basic("alice", "old-password")).ok
    users_file.write_atomic(str(path), users_file.render(
        {"alice": User("alice", "s1", passwords.hash_password("new-password", **FAST))}))
    clock.t += 1.0
    assert not auth.check("10.0.0.1", basic("alice", "old-password")).ok
    assert auth.check("10.0.0.1", basic("alice", "new-password")).ok


def test_removed_user_is_refused_at_once_though_their_header_was_verified(tmp_path):
    path = tmp_path / "users.toml"
    hashed = passwords.hash_password("pw-of-alice", **FAST)
    path.write_text(users_file.render({"alice": User("alice", "s1", hashed), "bob": User("bob", "s2", hashed)}))
    clock = Clock()
    auth = Authenticator(UsersStore(str(path), clock=clock), clock=clock, address_limit=3, user_limit=6)
    assert auth.check("10.0.0.1", basic("alice", "pw-of-alice")).user.name == "alice"
    users_file.write_atomic(str(path), users_file.render({"bob": User("bob", "s2", hashed)}))
    clock.t += 1.0
    assert not auth.check("10.0.0.1", basic("alice", "pw-of-alice")).ok


def test_write_atomic_mode_and_no_leftovers(tmp_path):
    path = tmp_path / "users.toml"
    old = os.umask(0)
    try:
        users_file.write_atomic(str(path), "x = 1\n")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.toml"]


# -- logins that cost once (issue 16) ------------------------------------------------------------------
def test_verified_cache_lives_while_used_and_expires_when_idle():
    clock = Clock()
    cache = VerifiedCache(10.0, clock=clock)
    u = User("alice", "sub1", "scrypt$hash-a")
    cache.add(basic("alice", "pw"), u)
    for _ in range(20):                   # a page polling every 7 s: far past the first 10 s
        clock.t += 7.0
        assert cache.hit(basic("alice", "pw"))
    clock.t += 7.0
    assert not cache.hit(basic("alice", "pw2"))   # a wrong password neither hits nor keeps the entry alive
    clock.t += 3.0
    assert not cache.hit(basic("alice", "pw"))    # 10 s without a hit


def test_verified_cache_mac_is_keyed_per_process_and_full_length():
    """The cache keeps a MAC of the header, never the header or the password: 32 bytes, under a key of
    its own (another process's cache, or a reader of this one's memory, cannot match it), and no wrong
    password among thousands matches it (a truncated MAC would let one in 1 in 2^8 * length)."""
    clock = Clock()
    one, other = VerifiedCache(10.0, clock=clock), VerifiedCache(10.0, clock=clock)
    assert len(one.mac("Basic x")) == 32 and len(one.digest("alice", "pw")) == 32
    assert one.digest("alice", "pw") == one.digest("alice", "pw") != other.digest("alice", "pw")
    assert one.digest("alice", "pw") != one.digest("alice", "pw ") != one.digest("alicE", "pw")
    assert one.mac("Basic x") == one.mac("Basic x") != other.mac("Basic x")
    u = User("alice", "sub1", "scrypt$hash-a")
    one.add(basic("alice", "right-password"), u)
    assert not any(one.hit(basic("alice", f"wrong-{i}")) for i in range(3000))
    assert one.hit(basic("alice", "right-password"))
    assert not other.hit(basic("alice", "right-password"))


def test_verified_cache_bound_drops_the_least_recently_used():
    clock = Clock()
    cache = VerifiedCache(100.0, clock=clock, max_entries=2)
    a, b, c = (User(n, "sub1", f"scrypt$hash-{n}") for n in "abc")
    cache.add(basic("a", "pw"), a)
    cache.add(basic("b", "pw"), b)
    clock.t += 1
    assert cache.hit(basic("a", "pw"))    # a is now the more recently used
    cache.add(basic("c", "pw"), c)
    assert len(cache) == 2
    assert cache.hit(basic("a", "pw")) and cache.hit(basic("c", "pw")) and not cache.hit(basic("b", "pw"))


class GatedVerify:
    """A KDF that holds every run until released, so tests can line callers up deterministically."""

    def __init__(self):
        self.calls: list[str] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, password: str, stored: str) -> bool:
        with self._lock:
            self.calls.append(password)
        self.entered.release()
        assert self.release.wait(30)
        return passwords.verify_password(password, stored)


def _in_thread(auth, address, header, out):
    t = threading.Thread(target=lambda: out.append(auth.check(address, header)))
    t.start()
    return t


def _wait_until(cond):
    deadline = time.monotonic() + 30
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_concurrent_logins_of_one_user_share_one_kdf(store):
    verify = GatedVerify()
    auth = Authenticator(store, address_limit=3, user_limit=6, verify=verify, kdf_concurrency=4)
    out: list = []
    first = _in_thread(auth, "10.0.0.1", basic("alice", "alice-password"), out)
    assert verify.entered.acquire(timeout=30)                     # the first is inside the KDF
    second = _in_thread(auth, "10.0.0.1", basic("alice", "alice-password"), out)
    _wait_until(lambda: auth.shared_verify.waiting() == 1)        # the second waits on that run
    verify.release.set()
    first.join()
    second.join()
    assert [d.ok for d in out] == [True, True]
    assert len(verify.calls) == 1


def test_a_wrong_password_costs_full_price_even_in_company(store):
    verify = GatedVerify()
    auth = Authenticator(store, address_limit=5, user_limit=10, verify=verify, kdf_concurrency=4)
    out: list = []
    first = _in_thread(auth, "10.0.0.1", basic("alice", "guess-guess"), out)
    assert verify.entered.acquire(timeout=30)
    copy = _in_thread(auth, "10.0.0.1", basic("alice", "guess-guess"), out)
    _wait_until(lambda: auth.shared_verify.waiting() == 1)        # joined the run, which fails...
    right = _in_thread(auth, "10.0.0.2", basic("alice", "alice-password"), out)
    assert verify.entered.acquire(timeout=30)                     # another password: its own run
    verify.release.set()
    for t in (first, copy, right):
        t.join()
    assert sorted(d.ok for d in out) == [False, False, True]
    # ...so the copy ran the KDF itself: three runs for three requests, none shared.
    assert sorted(verify.calls) == ["alice-password", "guess-guess", "guess-guess"]
    assert auth.shared_verify.waiting() == 0
    assert not auth.check("10.0.0.3", basic("alice", "guess-guess")).ok   # no failure is remembered
    assert len(verify.calls) == 4


def test_no_kdf_at_start_and_the_dummy_hash_matches_nothing(store):
    verify = CountingVerify()
    auth = Authenticator(store, verify=verify)
    assert verify.calls == []
    dummy = auth.dummy_hash()
    assert verify.calls == []                                    # made without the KDF
    passwords.parse_hash(dummy)                                  # a well-formed hash
    assert dummy.startswith(f"scrypt$ln={FAST['ln']},r={FAST['r']},p={FAST['p']}$")
    assert auth.dummy_hash() == dummy                            # one per set of parameters, kept
    assert not passwords.verify_password("", dummy)


def test_the_dummy_hash_follows_the_users_files_parameters(tmp_path):
    """An unknown name costs what a known one costs: the parameters most users have (the costliest
    among equals), new hashes' parameters with no users, and a reload changes it."""
    path = tmp_path / "users.toml"
    clock = Clock()
    old = passwords.hash_password("alice-password", ln=15, r=8, p=3)              # before issue 16
    path.write_text(users_file.render({"alice": User("alice", "s1", old)}))
    store = UsersStore(str(path), clock=clock)
    auth = Authenticator(store)
    assert auth.dummy_hash().startswith("scrypt$ln=15,r=8,p=3$")
    users = {"alice": User("alice", "s1", old),
             "bob": User("bob", "s2", passwords.hash_password("bob-password", **FAST)),
             "carol": User("carol", "s3", passwords.hash_password("carol-password", **FAST))}
    path.write_text(users_file.render(users))
    clock.t += 2
    assert auth.dummy_hash().startswith(f"scrypt$ln={FAST['ln']},r={FAST['r']},p={FAST['p']}$")
    del users["carol"]                                           # one each: the costlier
    path.write_text(users_file.render(users))
    clock.t += 2
    assert auth.dummy_hash().startswith("scrypt$ln=15,r=8,p=3$")
    path.write_text(users_file.render({}))
    clock.t += 2
    assert auth.dummy_hash().startswith(f"scrypt${passwords.CURRENT}$")


def test_users_with_older_hashes_are_named_in_the_log(tmp_path, caplog):
    path = tmp_path / "users.toml"
    users = {"alice": User("alice", "s1", passwords.hash_password("alice-password", ln=15, r=8, p=3)),
             "bob": User("bob", "s2", passwords.hash_password("bob-password"))}
    path.write_text(users_file.render(users))
    with caplog.at_level(logging.WARNING, logger="openseg.lan.users"):
        UsersStore(str(path))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "user(s) alice have" in lines[0] and "bob" not in lines[0]
    assert "--password-stdin" in lines[0]
    caplog.clear()
    users["alice"] = User("alice", "s1", passwords.hash_password("alice-password"))
    path.write_text(users_file.render(users))
    with caplog.at_level(logging.WARNING, logger="openseg.lan.users"):
        UsersStore(str(path))
    assert caplog.records == []



def test_a_changed_password_is_refused_at_once_in_every_spelling(tmp_path):
    """A non-canonical spelling is answered from the canonical entry only while the users file still
    has the hash it was verified against (from helper-25's review: a check of the user alone let the
    old password in, spelled "basic", after a change)."""
    path = tmp_path / "users.toml"
    path.write_text(users_file.render({"alice": User("alice", "s1", passwords.hash_password("old-password-1", **FAST))}))
    clock = Clock()
    auth = Authenticator(UsersStore(str(path), clock=clock), clock=clock, address_limit=5, user_limit=10)
    assert auth.check("10.0.0.1", basic("alice", "old-password-1")).ok
    users_file.write_atomic(str(path), users_file.render(
        {"alice": User("alice", "s1", passwords.hash_password("new-password-1", **FAST))}))
    clock.t += 1.0
    for header in spellings("alice", "old-password-1")[:2] + [basic("alice", "old-password-1")]:
        assert not auth.check("10.0.0.1", header).ok
    assert auth.check("10.0.0.1", basic("alice", "new-password-1").replace("Basic", "basic")).ok


def test_the_longest_credential_a_users_file_holds_logs_in_once_and_stays_cached(tmp_path):
    """A 32-character name and a password of MAX_PASSWORD_LEN characters of 4 UTF-8 bytes each, which
    the admin tool accepts, is exactly the longest header read (a shorter bound locked that user out,
    or made every request of theirs a KDF run); a longer one is refused unread."""
    name, password = "n" * 32, "\U0001F600" * passwords.MAX_PASSWORD_LEN
    assert NAME_RE.fullmatch(name) and passwords.check_chosen_password(password) is None
    header = basic(name, password)
    assert len(header) == MAX_HEADER
    path = tmp_path / "users.toml"
    path.write_text(users_file.render({name: User(name, "s1", passwords.hash_password(password, **FAST))}))
    verify = CountingVerify()
    auth = Authenticator(UsersStore(str(path), clock=Clock()), clock=Clock(), address_limit=3, user_limit=6,
                         verify=verify)
    for h in (header, header, "basic " + header.split()[1]):
        assert auth.check("10.0.0.1", h).user.name == name
    assert len(verify.calls) == 1
    # The next valid length (base64 comes in fours; MAX_TOKEN + 1 to + 3 are not base64 at all).
    longer = "Basic " + base64.b64encode(b"a:" + b"b" * (3 * (MAX_TOKEN // 4 + 1) - 2)).decode()
    assert len(longer) == MAX_HEADER + 4 and parse_basic(longer) is None
