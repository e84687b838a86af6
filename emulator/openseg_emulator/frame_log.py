"""The frame log: one JSON object a line, flushed per line, so a test can read it while we run.

Every line has "t" (wall-clock epoch seconds, float) and "event". The file is appended to, so a test
that restarts the emulator on the same log keeps the whole story; each run starts with a "start" line.
Without a path nothing is written (the stderr log is enough for a person).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any


class FrameLog:
    def __init__(self, path: str | os.PathLike | None):
        self.path = path
        self._file = open(path, "a", encoding="utf-8") if path else None

    def write(self, event: str, t: float | None = None, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"t": time.time() if t is None else t, "event": event, **fields}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
