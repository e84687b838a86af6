"""The emulator's end of the serial line: a pty master, its slave symlinked at a path, a paced writer.

We do not keep the slave open ourselves. That way the kernel tells us when the host has the port open
(poll on the master reports POLLHUP while no one does), and, as on a real UART, what the radio says
while nobody listens is lost instead of piling up in the pty for the next opener. Raw mode set on the
slave once stays with the pty across the host's closes and reopens.
"""
from __future__ import annotations

import errno
import math
import os
import select
import time
import tty
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class LinkError(Exception):
    pass


class PtyLink:
    def __init__(self, link: str | os.PathLike):
        self.link = Path(link)
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            self.slave_name = os.ttyname(slave)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        self._poll = select.poll()
        self._poll.register(master, select.POLLIN)
        self._published = False

    def publish(self) -> None:
        """Point the symlink at our slave. A stale symlink is replaced atomically; anything else at
        the path is left alone, since it is not ours to delete."""
        if self.link.exists() or self.link.is_symlink():
            if not self.link.is_symlink():
                raise LinkError(f"{self.link} exists and is not a symlink; not replacing it")
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        try:
            tmp.unlink(missing_ok=True)
            os.symlink(self.slave_name, tmp)
            os.replace(tmp, self.link)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise LinkError(f"cannot create the symlink {self.link}: {e.strerror}") from e
        self._published = True

    def host_present(self) -> bool:
        return not any(ev & select.POLLHUP for _, ev in self._poll.poll(0))

    def read(self) -> bytes:
        try:
            return os.read(self.master, 4096)
        except BlockingIOError:
            return b""
        except OSError as e:
            if e.errno == errno.EIO:        # the host closed the slave between poll and read
                return b""
            raise

    def write(self, data: bytes) -> int:
        """Bytes actually written; 0 when nobody listens or the pty is full (a UART would lose them)."""
        if not self.host_present():
            return 0
        try:
            return os.write(self.master, data)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno == errno.EIO:
                return 0
            raise

    def close(self) -> None:
        if self._published:
            try:
                if os.readlink(self.link) == self.slave_name:
                    self.link.unlink()
            except OSError:
                pass        # someone else replaced or removed it: theirs now
            self._published = False
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@dataclass
class Sent:
    """A frame that has left (or failed to leave) the UART, with wall-clock times of its first and last byte."""
    tag: Any
    data: bytes
    complete: bool
    t_start: float | None
    t_end: float | None


@dataclass
class _Outgoing:
    data: bytes
    tag: Any
    start: float              # clock time the first byte may begin
    written: int = 0
    t_start: float | None = None


class UartWriter:
    """Sends frames in order, at most `baud`/10 bytes a second (8N1), or as fast as the pty takes
    them when baud is 0. A byte is written when its last bit would have left the wire, so the time
    of a frame's final write is the time a real host would have it complete."""

    def __init__(self, link: PtyLink, baud: int = 0, wall=time.time):
        self.link = link
        self.byte_time = 10.0 / baud if baud else 0.0
        self.wall = wall
        self._queue: deque[_Outgoing] = deque()
        self._line_free = 0.0

    def send(self, data: bytes, now: float, tag: Any = None) -> None:
        start = max(now, self._line_free)
        self._line_free = start + len(data) * self.byte_time
        self._queue.append(_Outgoing(data, tag, start))

    def next_due(self) -> float | None:
        if not self._queue:
            return None
        head = self._queue[0]
        return head.start + (head.written + 1) * self.byte_time

    def clear(self, now: float) -> list[Sent]:
        lost = [Sent(p.tag, p.data, False, p.t_start, None) for p in self._queue]
        self._queue.clear()
        self._line_free = now
        return lost

    def pump(self, now: float, on_done: Callable[[Sent], None]) -> None:
        """Write what is due. `on_done` hears of each frame as soon as its last byte is written (or
        it is lost), before any later frame's bytes go out, so a log line about a frame always
        precedes what the host can see after it."""
        while self._queue:
            head = self._queue[0]
            if self.byte_time:
                # The small epsilon keeps float rounding from holding back a byte that is due now.
                due = math.floor((now - head.start) / self.byte_time + 1e-9)
                allowed = max(0, min(len(head.data), due))
            else:
                allowed = len(head.data)
            if allowed <= head.written:
                return
            n = self.link.write(head.data[head.written:allowed])
            stamp = self.wall()
            if n and head.t_start is None:
                head.t_start = stamp
            head.written += n
            if head.written < allowed:
                # Nobody listening, or the host stopped reading: the rest of this frame is lost.
                self._queue.popleft()
                on_done(Sent(head.tag, head.data, False, head.t_start, stamp))
            elif head.written == len(head.data):
                self._queue.popleft()
                on_done(Sent(head.tag, head.data, True, head.t_start, stamp))
            else:
                return
