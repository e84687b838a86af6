"""The emulated meter's registers kept in a file across runs (`--state-file`), so a demo's history
never runs backwards when the emulator restarts: a real meter's register does not start over either.

The file is JSON with the exact register values as fractions of a kWh ({"kwh": "n/d", "received_kwh":
"n/d"}). It is replaced atomically (write, fsync, rename) after every answer, so what was last
answered is never more than what the next run starts from.
"""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path


class StateFileError(Exception):
    pass


def load(path: Path) -> tuple[Fraction, Fraction] | None:
    """(delivered kWh, received kWh) saved by an earlier run; None when there is no file yet."""
    try:
        data = json.loads(path.read_text())
        kwh, received = Fraction(data["kwh"]), Fraction(data["received_kwh"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise StateFileError(f"{path}: not a register state this emulator wrote ({exc})") from None
    if kwh < 0 or received < 0:
        raise StateFileError(f"{path}: negative register")
    return kwh, received


def save(path: Path, kwh: Fraction, received_kwh: Fraction) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"kwh": str(kwh), "received_kwh": str(received_kwh)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
