"""The access log: one line per answered request, on the LAN process's standard error (the journal
under systemd), in the format every other log line has (main.OneLineFormatter):

    2026-12-02 08:31:05,123 INFO openseg.lan.access: 10.0.0.2 alice "GET /api/v1/current" 200 151 0.4ms

Every request writes one, so its cost is every request's cost, and issue 16 bounds the access log and
the current-value answer together at about 0.11 ms of CPU. It therefore does not go through the logging
module: a LogRecord, the logger's dispatch and the text stream's buffering cost 0.02 ms a line in the
live server under load (bench/RESULTS.md, issue 16). Here a line is one f-string and one write(2) of
the whole line, straight away: nothing waits in a buffer for a crash to lose.

Each part is made printable first (`printable`), so a client cannot start a line of its own, and a line
stays far below PIPE_BUF (4096 bytes), so lines written by several threads at once never interleave.
Other log lines go through sys.stderr's own buffer; a line of theirs longer than that (a traceback
made one line) may be written in pieces, and an access line can land between two of them.
"""
from __future__ import annotations

import os
import time
from typing import Callable

LOGGER_NAME = "openseg.lan.access"      # where the line says it comes from, as a logger's name would


def printable(text: str, limit: int = 200) -> str:
    """For log lines: one line, bounded, no control characters from the client, and no quote or
    backslash of its own, so a path cannot close the quoted request and fake the fields after it, and
    an escape in the line is always one this made."""
    text = text[:limit]
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', "\\x22")


class AccessLog:
    def __init__(self, fd: int, *, clock: Callable[[], float] = time.time):
        self.fd = fd
        self._clock = clock
        self._stamp = (-1, "")      # (second, its text): the same second for many lines, formatted once

    def line(self, remote: str, user: str, method: str, path: str, status: int, size: int,
             took_ms: float) -> None:
        now = self._clock()
        second = int(now)
        held, stamp = self._stamp
        if second != held:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._stamp = (second, stamp)
        data = (f"{stamp},{int((now - second) * 1000):03d} INFO {LOGGER_NAME}: {printable(remote, 64)} "
                f"{printable(user, 64)} \"{printable(method, 16)} {printable(path)}\" {status} {size} "
                f"{took_ms:.1f}ms\n").encode("utf-8", "backslashreplace")
        try:
            while data:                 # a signal can cut a write short; the rest follows
                data = data[os.write(self.fd, data):]
        except OSError:
            # The journal is gone (or stderr closed): like the logging module, drop the line; there
            # is nowhere left to report it.
            pass
