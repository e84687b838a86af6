"""The serial port to the XBee: open (exclusive, raw, 8N1), read with a timeout, reopen after loss.

Writing is deliberately not part of this module's public surface: `write_raw` exists only to be handed
to `EgressGuard` in `main.py`, so every byte to the radio passes the guard (tests/test_egress_guard.py
checks the wiring). A port that vanishes (USB unplugged, emulator gone) raises `LinkLost`; the main loop
reports `radio-down` and reopens with backoff, so a cable fault never ends the process.

A self-pipe (signal.set_wakeup_fd) is watched next to the port, so SIGTERM ends a wait at once instead of
after the current timeout; `Stopping` carries that out to the main loop.
"""
from __future__ import annotations

import os
import select

import serial

WRITE_TIMEOUT_S = 2.0    # an XBee that stops taking bytes for this long is as good as gone
READ_CHUNK = 4096


class LinkLost(Exception):
    """The serial device could not be opened, or failed while in use."""


class Stopping(Exception):
    """SIGTERM or SIGINT arrived while waiting; the main loop exits cleanly."""


class SerialLink:
    def __init__(self, port: str, baudrate: int, wakeup_fd: int | None = None):
        self.port = port
        self.baudrate = baudrate
        self._wakeup_fd = wakeup_fd
        self._serial: serial.Serial | None = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        if self._serial is not None:
            return
        try:
            # exclusive=True takes a flock, so a second openseg-han (or `--check` while the service
            # runs) fails clearly instead of both reading half the frames each.
            self._serial = serial.Serial(
                self.port, self.baudrate, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE, timeout=0, write_timeout=WRITE_TIMEOUT_S,
                xonxoff=False, rtscts=False, dsrdtr=False, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkLost(f"cannot open {self.port}: {exc}") from None
        try:
            self._serial.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise LinkLost(f"cannot use {self.port}: {exc}") from None

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass    # the device is already gone; nothing left to release

    def read(self, timeout: float) -> bytes:
        """Whatever bytes arrive within `timeout` seconds (b"" if none)."""
        if self._serial is None:
            raise LinkLost(f"{self.port} is not open")
        fd = self._serial.fileno()
        ready = self._select([fd], timeout)
        if fd not in ready:
            return b""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError as exc:      # EIO: the pty master or the USB device went away
            self.close()
            raise LinkLost(f"{self.port}: {exc}") from None
        if not data:
            self.close()
            raise LinkLost(f"{self.port}: end of file (device disconnected)")
        return data

    def sleep(self, timeout: float) -> None:
        """Wait without the port (while it is closed), still ending early on SIGTERM."""
        self._select([], timeout)

    def write_raw(self, data: bytes) -> None:
        if self._serial is None:
            raise LinkLost(f"{self.port} is not open")
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as exc:
            self.close()
            raise LinkLost(f"{self.port}: write failed: {exc}") from None

    def _select(self, fds: list[int], timeout: float) -> list[int]:
        watched = fds + ([self._wakeup_fd] if self._wakeup_fd is not None else [])
        try:
            ready, _, _ = select.select(watched, [], [], max(0.0, timeout))
        except (OSError, ValueError) as exc:   # the port's fd became invalid under us
            self.close()
            raise LinkLost(f"{self.port}: {exc}") from None
        if self._wakeup_fd is not None and self._wakeup_fd in ready:
            raise Stopping()    # the byte stays in the pipe, so every later wait stops too
        return ready
