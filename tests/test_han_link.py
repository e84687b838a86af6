"""SerialLink on a real pseudo-terminal: raw bytes both ways, exclusivity, loss, and stopping on a signal."""
import os
import pty
import time

import pytest

from han_reader.link import LinkLost, SerialLink, Stopping


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
    link = SerialLink(path, 9600)
    link.open()
    try:
        everything = bytes(range(256))             # raw mode: no byte is translated or swallowed
        link.write_raw(everything)
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


def test_the_port_is_exclusive(pty_pair):
    _, path = pty_pair
    first = SerialLink(path, 9600)
    first.open()
    try:
        with pytest.raises(LinkLost, match="exclusively lock"):
            SerialLink(path, 9600).open()
    finally:
        first.close()


def test_a_vanished_device_raises_link_lost_and_can_be_reopened(pty_pair, tmp_path):
    master, path = pty_pair
    link = SerialLink(path, 9600)
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
    link = SerialLink(path, 9600, wakeup_fd=r)
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
