"""The serial port to the XBee, read-only: open (exclusive, raw, 8N1), read with a timeout, reopen after loss.

`SerialLink` cannot write. At every open it hands the write-capable port object to the egress guard
(`hand_over`, which is `EgressGuard.attach`) and keeps for itself only a second descriptor on the same
device opened O_RDONLY, so the kernel refuses a write through anything this view holds (EBADF); on close
it hands over None. Every byte to the radio therefore passes the guard. A port that vanishes (USB
unplugged, emulator gone) raises `LinkLost`; the main loop reports `radio-down` and reopens with
backoff, so a cable fault never ends the process.

A self-pipe (signal.set_wakeup_fd) is watched next to the port, so SIGTERM ends a wait at once instead of
after the current timeout; `Stopping` carries that out to the main loop.
"""
from __future__ import annotations

import os
import select
from typing import Callable

import serial

WRITE_TIMEOUT_S = 2.0    # an XBee that stops taking bytes for this long is as good as gone
READ_CHUNK = 4096


class LinkLost(Exception):
    """The serial device could not be opened, or failed while in use."""


class Stopping(Exception):
    """SIGTERM or SIGINT arrived while waiting; the main loop exits cleanly."""


class SerialLink:
    def __init__(self, port: str, baudrate: int, hand_over: Callable[[serial.Serial | None], None],
                 wakeup_fd: int | None = None):
        self.port = port
        self.baudrate = baudrate
        self._hand_over = hand_over
        self._wakeup_fd = wakeup_fd
        self._fd: int | None = None     # O_RDONLY

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        if self._fd is not None:
            return
        try:
            # exclusive=True takes a flock, so a second openseg-han (or `--check` while the service
            # runs) fails clearly instead of both reading half the frames each.
            port = serial.Serial(
                self.port, self.baudrate, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE, timeout=0, write_timeout=WRITE_TIMEOUT_S,
                xonxoff=False, rtscts=False, dsrdtr=False, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkLost(f"cannot open {self.port}: {exc}") from None
        try:
            port.reset_input_buffer()
            # The same device again (not the path, which udev may have reassigned), read-only; the
            # terminal settings just made belong to the device and hold for this descriptor too.
            self._fd = os.open(f"/proc/self/fd/{port.fileno()}", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except (serial.SerialException, OSError) as exc:
            port.close()
            raise LinkLost(f"cannot use {self.port}: {exc}") from None
        self._hand_over(port)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            self._hand_over(None)
            try:
                os.close(fd)
            except OSError:
                pass    # the device is already gone; nothing left to release

    def read(self, timeout: float) -> bytes:
        """Whatever bytes arrive within `timeout` seconds (b"" if none)."""
        if self._fd is None:
            raise LinkLost(f"{self.port} is not open")
        fd = self._fd
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
