"""SerialLink on a real pseudo-terminal: raw bytes both ways, exclusivity, loss, and stopping on a signal."""
import errno
import os
import pty
import time

import pytest

from openseg.han_reader.link import LinkLost, SerialLink, Stopping


class Handed:
    """Stands for EgressGuard.attach: keeps the write-capable port the link hands over, closes the old."""

    def __init__(self):
        self.port = None
        self.calls = 0

    def __call__(self, port):
        self.calls += 1
        if self.port is not None:
            self.port.close()
        self.port = port


def fds_on(path: str) -> dict[int, int]:
    """This process's descriptors on the device behind `path` -> their access mode (os.O_RDONLY, ...)."""
    target = os.path.realpath(path)
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != target:
                continue
            with open(f"/proc/self/fdinfo/{name}") as info:
                flags = int(next(line for line in info if line.startswith("flags:")).split()[1], 8)
        except OSError:
            continue
        out[int(name)] = flags & os.O_ACCMODE
    return out


@pytest.fixture
def pty_pair(tmp_path):
    master, slave = pty.openpty()
    link_path = tmp_path / "xbee"
    link_path.symlink_to(os.ttyname(slave))       # as the emulator publishes its pty
    os.close(slave)
    yield master, str(link_path)
    try:
        os.close(master)
    except OSError:
        pass


def test_raw_bytes_both_ways(pty_pair):
    master, path = pty_pair
    handed = Handed()
    link = SerialLink(path, 9600, handed)
    link.open()
    try:
        everything = bytes(range(256))             # raw mode: no byte is translated or swallowed
        handed.port.write(everything)
        got = b""
        deadline = time.monotonic() + 2
        while len(got) < 256 and time.monotonic() < deadline:
            got += os.read(master, 4096)
        assert got == everything
        os.write(master, everything)
        got = b""
        while len(got) < 256 and time.monotonic() < deadline:
            got += link.read(0.5)
        assert got == everything
        t0 = time.monotonic()
        assert link.read(0.2) == b""
        assert 0.15 < time.monotonic() - t0 < 1.0
    finally:
        link.close()


def test_the_link_holds_only_a_read_only_descriptor_and_hands_the_writer_over(pty_pair):
    """The one capability to write: the link keeps an O_RDONLY descriptor, whose write(2) the kernel
    refuses; the only write-capable descriptor is the port handed over (to the guard, in main.py)."""
    _, path = pty_pair
    handed = Handed()
    link = SerialLink(path, 9600, handed)
    link.open()
    try:
        modes = fds_on(path)
        assert sorted(modes.values()) == [os.O_RDONLY, os.O_RDWR]
        writer = handed.port.fileno()
        assert modes[writer] == os.O_RDWR
        (reader,) = (fd for fd, mode in modes.items() if mode == os.O_RDONLY)
        with pytest.raises(OSError) as refused:
            os.write(reader, b"\x7e")
        assert refused.value.errno == errno.EBADF
        assert not [v for v in vars(link).values() if hasattr(v, "write")], "the link kept a writer"
    finally:
        link.close()
    assert handed.port is None and handed.calls == 2 and fds_on(path) == {}


def test_the_port_is_exclusive(pty_pair):
    _, path = pty_pair
    first = SerialLink(path, 9600, Handed())
    first.open()
    try:
        with pytest.raises(LinkLost, match="exclusively lock"):
            SerialLink(path, 9600, Handed()).open()
    finally:
        first.close()


def test_a_vanished_device_raises_link_lost_and_can_be_reopened(pty_pair, tmp_path):
    master, path = pty_pair
    link = SerialLink(path, 9600, Handed())
    link.open()
    os.close(master)                               # the emulator (or the USB device) went away
    with pytest.raises(LinkLost):
        link.read(1.0)
    assert not link.is_open
    with pytest.raises(LinkLost):
        link.read(0.1)
    os.unlink(path)
    with pytest.raises(LinkLost, match="cannot open"):
        link.open()
    master2, slave2 = pty.openpty()                # it comes back under the same name
    os.symlink(os.ttyname(slave2), path)
    os.close(slave2)
    try:
        link.open()
        os.write(master2, b"\x7e")
        assert link.read(1.0) == b"\x7e"
    finally:
        link.close()
        os.close(master2)


def test_a_wakeup_byte_ends_any_wait_with_stopping(pty_pair):
    _, path = pty_pair
    r, w = os.pipe()
    link = SerialLink(path, 9600, Handed(), wakeup_fd=r)
    link.open()
    try:
        os.write(w, b"\x0f")                       # what signal.set_wakeup_fd writes on SIGTERM
        t0 = time.monotonic()
        with pytest.raises(Stopping):
            link.read(10.0)
        with pytest.raises(Stopping):
            link.sleep(10.0)                       # it stays stopped
        assert time.monotonic() - t0 < 1.0
    finally:
        link.close()
        os.close(r)
        os.close(w)
