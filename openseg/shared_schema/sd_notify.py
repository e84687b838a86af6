"""systemd's notify protocol for both processes (Type=notify, WatchdogSec=), in a few lines, no dependency.

Why it lives here: the two processes may not import each other (.importlinter), and shared_schema is
the one package both may import; a single copy is one thing to audit instead of two that drift apart.
It imports only the standard library and no code of either process, so sharing it widens nothing.

The protocol (sd_notify(3)): one datagram of "KEY=VALUE" lines to the AF_UNIX socket named by
$NOTIFY_SOCKET (a path, or "@name" for the abstract namespace). Without $NOTIFY_SOCKET (run by hand, in
tests) every call is a no-op that returns False. The socket is connected, used and closed per message:
nothing stays open, nothing is bound, nothing is ever received.

`Watchdog` is the rule for WATCHDOG=1: it is sent only from inside the loops that do the process's
work, and only once *every* registered loop has reported progress since the previous ping. One loop
that stalls (blocked, dead-locked, or its thread gone) stops the pings even while the others run, and
systemd restarts the service after WatchdogSec.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Iterable, Mapping


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send e.g. notify("READY=1", "STATUS=polling"); True if a manager was there to tell."""
    env = os.environ if env is None else env
    path = env.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return False
    address = "\0" + path[1:] if path[0] == "@" else path
    message = "\n".join(fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """WatchdogSec in seconds when the watchdog is armed for this process, else None."""
    env = os.environ if env is None else env
    usec, for_pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if for_pid and for_pid != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


def status_text(text: str) -> str:
    """A STATUS= field: one line, bounded (the whole datagram must stay small)."""
    return "STATUS=" + " ".join(text.split())[:200]


class Watchdog:
    """WATCHDOG=1 when every loop in `loops` has called beat() since the last ping.

    beat(loop) is cheap and may be called as often as the loop turns: the ping itself goes out at
    most once per `interval / 4`, from whichever beat completes the set. `deadline()` tells a loop
    that sleeps how long it may wait before it must beat again (half the interval)."""

    def __init__(self, loops: Iterable[str], *, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic, send: Callable[..., bool] | None = None):
        self.loops = frozenset(loops)
        if not self.loops:
            raise ValueError("a watchdog needs at least one loop")
        self._env = os.environ if env is None else env
        self.interval = watchdog_interval_s(self._env)
        self._clock = clock
        self._send = send or (lambda *fields: notify(*fields, env=self._env))
        self._lock = threading.Lock()
        self._waiting = set(self.loops)
        self._last_ping = clock()
        self.pings = 0

    @property
    def armed(self) -> bool:
        return self.interval is not None

    def deadline(self) -> float:
        """The clock value by which the loops should have beaten again (infinity when not armed)."""
        if self.interval is None:
            return float("inf")
        return self._last_ping + self.interval / 2

    def beat(self, loop: str) -> bool:
        """`loop` made progress; True if this beat sent WATCHDOG=1."""
        if self.interval is None:
            return False
        if loop not in self.loops:
            raise ValueError(f"unknown loop {loop!r} (registered: {', '.join(sorted(self.loops))})")
        with self._lock:
            self._waiting.discard(loop)
            now = self._clock()
            if self._waiting or now - self._last_ping < self.interval / 4:
                return False
            self._waiting = set(self.loops)
            self._last_ping = now
            self.pings += 1
        return self._send("WATCHDOG=1")
