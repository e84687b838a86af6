"""One `make run` per run folder: an exclusive lock on DIR/.lock held for the whole run, with the
holder's pid written inside so a second run can say who holds it. The kernel drops the lock when the
holder exits, however it exits, so a crashed run never leaves a stale lock behind.

A second run opens the file without truncating it and touches nothing else in DIR before it knows it
holds the lock."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Busy(Exception):
    """Another process holds the folder; `pid` is what it wrote (None if unreadable)."""

    def __init__(self, path: Path, pid: int | None):
        super().__init__(f"{path.parent} is in use by process {pid if pid is not None else '(unknown)'}")
        self.path, self.pid = path, pid


class RunLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise Busy(self.path, int(text) if text.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)       # the pid stays in the file; the lock is what counts
            self.fd = None
