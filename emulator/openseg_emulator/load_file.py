"""A load a test controls from outside: a file holding a number of watts, watched for changes.

The file is checked before every meter read (a stat; it is re-read when its inode, mtime or size
changed) and re-read unconditionally on SIGHUP, which covers a rewrite within the filesystem's
timestamp granularity. A file caught half-written, or holding something that is not a number, keeps
the previous load: a test's write must never crash the meter.
"""
from __future__ import annotations

import os
from fractions import Fraction

MAX_ABS_W = 10_000_000


class LoadFileError(ValueError):
    pass


def parse_watts(text: str) -> Fraction:
    try:
        w = Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        raise LoadFileError(f"not a number of watts: {text.strip()[:40]!r}") from None
    if abs(w) > MAX_ABS_W:
        raise LoadFileError(f"{float(w):g} W is beyond ±{MAX_ABS_W} W")
    return w


class LoadFile:
    def __init__(self, path: str | os.PathLike):
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._reported_bad: tuple[int, int, int] | None = None
        self.watts = self._read()[1]

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _read(self) -> tuple[tuple[int, int, int], Fraction]:
        try:
            signature = self._stat()
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read(256)
        except OSError as e:
            raise LoadFileError(f"cannot read {self.path}: {e.strerror}") from e
        watts = parse_watts(text)
        self._signature = signature
        return signature, watts

    def check(self, force: bool = False) -> tuple[Fraction | None, str | None]:
        """(new watts if the load changed, a problem to report once), after a cheap stat unless forced."""
        try:
            signature = self._stat()
        except OSError as e:
            return None, self._report_once((0, 0, 0), f"cannot stat {self.path}: {e.strerror}")
        if not force and signature == self._signature:
            return None, None
        try:
            _, watts = self._read()
        except LoadFileError as e:
            return None, self._report_once(signature, f"{e}; keeping {float(self.watts):g} W")
        self._reported_bad = None
        if watts == self.watts:
            return None, None
        self.watts = watts
        return watts, None

    def _report_once(self, signature: tuple[int, int, int], message: str) -> str | None:
        if self._reported_bad == signature:
            return None
        self._reported_bad = signature
        return message
