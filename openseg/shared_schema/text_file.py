"""Reading the small TOML files a person writes or may damage (the gateway config, the LAN users
file), with every way that can fail turned into one error naming the file and the reason: missing,
unreadable, a directory or a device, too large, not UTF-8, not TOML, nested too deeply. The processes
print that one line and exit 2; nothing about a file a person edited may end in a traceback.

The file is opened without blocking (a FIFO put in its place would otherwise hang the process before
it could say anything) and only a regular file is read.
"""
from __future__ import annotations

import os
import stat
import tomllib
from typing import Any

MAX_BYTES = 1 << 20      # both files are a few KiB; a MiB is a mistake (or /dev/zero), not a config


class TextFileError(ValueError):
    """The message starts with the file's path and says what is wrong, on one line."""


def read_text(path: str, what: str, missing_hint: str = "") -> str:
    """The UTF-8 text of the regular file `path`; `what` names it in messages ("config file")."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TextFileError(f"{path}: no such {what}{missing_hint}") from None
    except OSError as exc:
        raise TextFileError(f"{path}: cannot open the {what}: {exc.strerror}") from None
    except ValueError:          # a NUL in the path
        raise TextFileError(f"{path!r}: not a usable file name for the {what}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise TextFileError(f"{path}: is a directory, not a {what}")
        if not stat.S_ISREG(mode):
            raise TextFileError(f"{path}: not a regular file, cannot be the {what}")
        chunks, size = [], 0
        while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise TextFileError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_BYTES:
        raise TextFileError(f"{path}: larger than {MAX_BYTES // 1024} KiB, cannot be the {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise TextFileError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); "
                            "save the file as UTF-8") from None


def parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TextFileError(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:      # tomllib recurses into nested arrays and inline tables
        raise TextFileError(f"{where}: not valid TOML: nested too deeply") from None


def shown(name: str) -> str:
    """A key or section name as a message shows it: plain when printable, else quoted and escaped
    (a TOML key may hold a newline, and a message must stay one line)."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)
