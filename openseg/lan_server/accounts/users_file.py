"""The LAN users file (users.toml): one table per user with its subscription id and password hash.

    [users."alice"]
    subscription = "9f3c2a71d04be865"
    password_hash = "scrypt$ln=14,r=8,p=6$...$..."

`openseg-admin` is the only writer: it takes a lock, rewrites the whole file to a temporary file and
renames it over the old one, so the server never reads a half-written file. The server reads it
through `UsersStore`, which notices changes (at most one stat per second) so users can be added
without a restart. Names and subscription ids are restricted to a conservative charset so they are
safe in URLs, HTTP headers, log lines and TOML without any escaping.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

from openseg.shared_schema.text_file import TextFileError, parse_toml, read_text

from . import passwords

NAME_MAX_LEN = 32
NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX_LEN - 1}}}")
SUBSCRIPTION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = "1-32 characters: letters, digits, '.', '_', '-', starting with a letter or digit"
SUBSCRIPTION_RULE = "1-64 characters: letters, digits, '_', '-', starting with a letter or digit"

_HEADER = ("# OpenSEG LAN users, written by `openseg-admin user ...`; edit with that command.\n"
           "# Passwords are stored only as scrypt hashes. Keep this file mode 0600.\n")

log = logging.getLogger("openseg.lan.users")


class UsersFileError(ValueError):
    pass


@dataclass(frozen=True)
class User:
    name: str
    subscription: str
    password_hash: str


def check_name(name: str) -> str | None:
    return None if NAME_RE.fullmatch(name) else f"invalid user name {name!r} ({NAME_RULE})"


def check_subscription(sub: str) -> str | None:
    return None if SUBSCRIPTION_RE.fullmatch(sub) else f"invalid subscription id {sub!r} ({SUBSCRIPTION_RULE})"


def generate_subscription_id() -> str:
    return secrets.token_hex(8)


def generate_user_name() -> str:
    """A first user name nobody can guess ("home-" and 40 random bits), so guessing a password
    starts with guessing a name too; a per-user throttle then has no well-known name to aim at."""
    return f"home-{secrets.token_hex(5)}"


def parse(text: str, where: str = "users file") -> dict[str, User]:
    try:
        data = parse_toml(text, where)
    except TextFileError as exc:
        raise UsersFileError(str(exc)) from None
    unknown = set(data) - {"users"}
    if unknown:
        raise UsersFileError(f"{where}: unknown key {sorted(unknown)[0]!r} (only [users.NAME] tables)")
    table = data.get("users", {})
    if not isinstance(table, dict):
        raise UsersFileError(f"{where}: 'users' must be a table")
    users = {}
    for name, entry in table.items():
        here = f"{where}: [users.{name!r}]"
        if problem := check_name(name):
            raise UsersFileError(f"{here}: {problem}")
        if not isinstance(entry, dict) or set(entry) != {"subscription", "password_hash"}:
            raise UsersFileError(f"{here}: needs exactly the keys subscription and password_hash")
        sub, pw_hash = entry["subscription"], entry["password_hash"]
        if not isinstance(sub, str) or (problem := check_subscription(sub)):
            raise UsersFileError(f"{here} subscription: {problem or 'must be a string'}")
        if not isinstance(pw_hash, str):
            raise UsersFileError(f"{here} password_hash: must be a string")
        try:
            passwords.parse_hash(pw_hash)
        except passwords.HashFormatError as exc:
            raise UsersFileError(f"{here} password_hash: {exc}") from None
        users[name] = User(name, sub, pw_hash)
    return users


def load(path: str) -> dict[str, User]:
    try:
        text = read_text(path, "users file", " (create one with `openseg-admin init`)")
    except TextFileError as exc:
        raise UsersFileError(str(exc)) from None
    return parse(text, path)


def render(users: dict[str, User]) -> str:
    # Every value passed check_name/check_subscription/parse_hash, so none needs TOML escaping.
    parts = [_HEADER]
    for user in sorted(users.values(), key=lambda u: u.name):
        parts.append(f'\n[users."{user.name}"]\nsubscription = "{user.subscription}"\n'
                     f'password_hash = "{user.password_hash}"\n')
    return "".join(parts)


def write_atomic(path: str, text: str, mode: int = 0o600) -> None:
    """Write `text` to a temporary file beside `path`, fsync, rename over `path` (mode 0600).

    The new file keeps the old one's owner: `openseg-admin` is run as root on a real gateway, and a
    users file that became root's would be unreadable to the unprivileged LAN process."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)          # the umask may have removed bits; never added any
        if old is not None and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Serialise read-modify-write cycles of two `openseg-admin` runs on the same users file.

    The lock lives on a separate file because the users file itself is replaced by rename."""
    lock_path = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Held(NamedTuple):
    """What the store holds from one reading of the file: replaced as one reference on reload, so a
    request never sees one file's users with another's parameters."""
    users: dict[str, User]
    common_cost: passwords.Parameters      # _common_parameters(users)


class UsersStore:
    """The server's view of the users file, re-read when it changes (checked at most every
    `check_interval_s`). A file that becomes unreadable or invalid is logged and the last good
    set of users stays in force, so a hand-editing mistake does not lock the household out;
    `openseg-admin` never produces such a file."""

    def __init__(self, path: str, *, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._interval = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        users = load(path)               # at start, a bad file is fatal (raises UsersFileError)
        self._held = _Held(users, _common_parameters(users))
        _note_older_hashes(users)
        self._next_check = clock() + check_interval_s

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        with self._lock:
            if now < self._next_check:
                return
            self._next_check = now + self._interval
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                users = load(self.path)
            except UsersFileError as exc:
                log.error("users file not reloaded, keeping the previous %d user(s): %s",
                          len(self._held.users), exc)
                return
            self._held = _Held(users, _common_parameters(users))
            log.info("users file reloaded: %d user(s)", len(users))
            _note_older_hashes(users)

    def get(self, name: str) -> User | None:
        if self._clock() >= self._next_check:     # here, not in a call: every request asks
            self._maybe_reload()
        return self._held.users.get(name)

    def __len__(self) -> int:
        self._maybe_reload()
        return len(self._held.users)

    def hash_parameters(self) -> passwords.Parameters:
        """The scrypt parameters most users' hashes have (the costliest among equals; new hashes'
        without users): what a guess at a name nobody has is checked with, so that it takes the
        time a known name takes. Worked out when the file is read, not per guess."""
        self._maybe_reload()
        return self._held.common_cost


def _common_parameters(users: dict[str, User]) -> passwords.Parameters:
    counts = collections.Counter(passwords.parameters(u.password_hash) for u in users.values())
    return max(counts, key=lambda cost: (counts[cost], cost.work), default=passwords.CURRENT)


def _note_older_hashes(users: dict[str, User]) -> None:
    """Say which users keep hashes made with other parameters than new ones (before issue 16:
    N=2^15, p=3, 32 MiB per check), and how to re-hash them without changing the password."""
    other = sorted(name for name, user in users.items()
                   if passwords.parameters(user.password_hash) != passwords.CURRENT)
    if other:
        log.warning("user(s) %s have password hashes with other scrypt parameters than new ones (%s, "
                    "%d MiB): `openseg-admin user passwd NAME --password-stdin` re-hashes the same password",
                    ", ".join(other), passwords.CURRENT, passwords.CURRENT.memory >> 20)
