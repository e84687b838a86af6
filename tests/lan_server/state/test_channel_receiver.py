"""The channel receiver on a real AF_UNIX datagram socket: what flows, what is dropped and counted."""
import inspect
import os
import socket
import stat
import tempfile
import time

import msgpack
import pytest

from tests.support.channel_messages import T0, Clock, reading, status
from openseg.lan_server.state import channel_receiver
from openseg.lan_server.state.channel_receiver import ChannelReceiver
from openseg.lan_server.state.readings import Readings
from openseg.shared_schema import messages


def wait_for(condition, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


@pytest.fixture
def short_dir(tmp_path):
    # AF_UNIX paths hold 107 bytes; pytest's tmp_path can be deeper than that on some machines.
    if len(str(tmp_path)) < 70:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="oseg") as d:
        yield __import__("pathlib").Path(d)


@pytest.fixture
def make_receiver(short_dir):
    made = []

    def make(allowed_uid=None, start=True):
        readings = Readings(30.0, clock=Clock(T0 + 100))
        logs: list[str] = []
        rx = ChannelReceiver(str(short_dir / "run" / "readings.sock"),
                             os.getuid() if allowed_uid is None else allowed_uid, readings, logs.append)
        rx.bind()
        if start:
            rx.start()
        made.append(rx)
        return rx, readings, logs

    yield make
    for rx in made:
        rx.stop()


@pytest.fixture
def sender(short_dir):
    # Bound to its own address so that a reply, if the receiver ever sent one, would arrive here.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(short_dir / "han.sock"))
    yield s
    s.close()


def total(rx):
    c = rx.counters()
    return c["received"] + c["rejected"]


def test_socket_mode_and_private_directory(make_receiver):
    rx, _, _ = make_receiver(start=False)
    st = os.stat(rx.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    parent = os.stat(os.path.dirname(rx.socket_path))
    assert stat.S_IMODE(parent.st_mode) & 0o007 == 0          # others can neither list nor enter
    assert stat.S_IMODE(parent.st_mode) == 0o710


def test_good_datagrams_flow_into_the_readings(make_receiver, sender):
    rx, readings, _ = make_receiver()
    sender.sendto(messages.encode(status(1, T0 + 99, poll_interval_s=7.0)), rx.socket_path)
    for i in range(2, 12):
        sender.sendto(messages.encode(reading(i, i, T0 + 7 * i, demand=1000 + i)), rx.socket_path)
    wait_for(lambda: rx.counters()["received"] == 11, what="11 messages")
    snap = readings.snapshot()
    assert snap.latest.seq == 11 and snap.latest.demand == 1011 and snap.report.state == "polling"
    c = rx.counters()
    assert (c["rejected"], c["seq_gaps"], c["last_seq"]) == (0, 0, 11)


def test_bad_datagrams_are_dropped_and_counted_by_reason_while_good_ones_keep_flowing(make_receiver, sender):
    rx, readings, logs = make_receiver()
    good = reading(1, 1, T0 + 7)
    bad = [
        (b"\xc1\xc1garbage", "undecodable"),                                 # 0xc1 is never valid msgpack
        (b"\x80" * (messages.MAX_DATAGRAM + 500), "oversized"),
        (msgpack.packb({"v": 1, "seq": 2, "kind": "reading"}), "invalid"),   # fields missing
        (msgpack.packb({**good, "seq": 3, "demand": 1 << 30}), "invalid"),   # out of range
        (msgpack.packb({**good, "seq": 4, "v": 2}), "version"),
        (msgpack.packb({**good, "seq": 5, "v": 2, "new_field": 1}), "version"),
        (msgpack.packb([1, 2, 3]), "undecodable"),                          # arrays are refused unpacked
        (msgpack.packb(5), "invalid"),                                       # msgpack, but not a map
    ]
    sender.sendto(messages.encode(good), rx.socket_path)
    for data, _ in bad:
        sender.sendto(data, rx.socket_path)
    sender.sendto(messages.encode(reading(6, 2, T0 + 14, demand=4242)), rx.socket_path)
    wait_for(lambda: total(rx) == 2 + len(bad), what="all datagrams")
    c = rx.counters()
    assert c["received"] == 2 and readings.snapshot().latest.demand == 4242
    expected = {reason: sum(1 for _, r in bad if r == reason) for reason in channel_receiver.REASONS}
    assert c["rejected_by_reason"] == expected and c["rejected"] == len(bad)
    assert any("undecodable" in line for line in logs) and any("oversized" in line for line in logs)


def test_a_foreign_uid_is_dropped(make_receiver, sender):
    rx, readings, logs = make_receiver(allowed_uid=os.getuid() + 1)
    for i in range(3):
        sender.sendto(messages.encode(reading(i, i, T0 + 7 * i)), rx.socket_path)
    wait_for(lambda: rx.counters()["rejected"] == 3, what="3 drops")
    c = rx.counters()
    assert c["received"] == 0 and c["rejected_by_reason"]["foreign-uid"] == 3
    assert readings.snapshot().latest is None
    assert sum("foreign-uid" in line for line in logs) == 1      # logged once, not per datagram


def test_sequence_gaps_and_restarts(make_receiver, sender):
    rx, _, _ = make_receiver()
    assert rx.alive()
    for seq in (1, 2, 5, 6, 10):
        sender.sendto(messages.encode(reading(seq, seq, T0 + seq)), rx.socket_path)
    wait_for(lambda: total(rx) == 5)
    c = rx.counters()
    assert (c["seq_gaps"], c["seq_missing"], c["han_restarts"], c["last_seq"]) == (2, 5, 0, 10)
    # The HAN restarts: numbering begins again at 0, and its first status names a new start time.
    sender.sendto(messages.encode(status(0, T0 + 50, started=T0 + 49)), rx.socket_path)
    sender.sendto(messages.encode(reading(1, 0, T0 + 57)), rx.socket_path)
    wait_for(lambda: total(rx) == 7)
    c = rx.counters()
    assert (c["seq_gaps"], c["seq_missing"], c["han_restarts"], c["last_seq"]) == (2, 5, 1, 1)
    # A new start time alone (sequence kept rising) is a restart too.
    sender.sendto(messages.encode(status(2, T0 + 60, started=T0 + 59)), rx.socket_path)
    wait_for(lambda: total(rx) == 8)
    assert rx.counters()["han_restarts"] == 2
    # A restart whose first message was lost: seq 1 after a restart means seq 0 never arrived.
    sender.sendto(messages.encode(status(1, T0 + 70, started=T0 + 69)), rx.socket_path)
    wait_for(lambda: total(rx) == 9)
    c = rx.counters()
    assert (c["han_restarts"], c["seq_gaps"], c["seq_missing"]) == (3, 3, 6)


def test_the_receiver_never_sends(make_receiver, sender):
    source = inspect.getsource(channel_receiver)
    for call in (".send(", ".sendto(", ".sendmsg(", ".sendall(", "sendfile"):
        assert call not in source
    rx, _, _ = make_receiver()
    sender.sendto(messages.encode(reading(1, 1, T0)), rx.socket_path)
    sender.sendto(b"garbage", rx.socket_path)
    wait_for(lambda: total(rx) == 2)
    with pytest.raises(BlockingIOError):
        sender.recv(4096, socket.MSG_DONTWAIT)


def test_passed_file_descriptors_are_refused_and_closed(make_receiver, sender):
    rx, readings, _ = make_receiver()
    r, w = os.pipe()
    try:
        before = len(os.listdir("/proc/self/fd"))
        sender.sendmsg([messages.encode(reading(1, 1, T0))],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, __import__("array").array("i", [r, w]))],
                       0, rx.socket_path)
        wait_for(lambda: total(rx) == 1)
        assert rx.counters()["rejected_by_reason"]["unexpected-ancillary"] == 1
        assert readings.snapshot().latest is None
        assert len(os.listdir("/proc/self/fd")) == before          # nothing received was kept open
    finally:
        os.close(r)
        os.close(w)


def test_datagram_without_credentials_is_dropped(make_receiver):
    rx, readings, _ = make_receiver(start=False)
    rx.handle(messages.encode(reading(1, 1, T0)), [], 0)
    rx.handle(messages.encode(reading(2, 2, T0)), [], socket.MSG_TRUNC)
    assert rx.counters()["rejected_by_reason"]["no-credentials"] == 2
    assert readings.snapshot().latest is None


def test_stale_socket_is_replaced_and_stop_removes_it(short_dir):
    path = short_dir / "r.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    leftover.bind(str(path))
    leftover.close()
    rx = ChannelReceiver(str(path), os.getuid(), Readings(30.0), lambda line: None)
    rx.start()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o620
    rx.stop()
    assert not path.exists()


def test_stop_leaves_a_successors_socket_alone(short_dir):
    path = short_dir / "r.sock"
    first = ChannelReceiver(str(path), os.getuid(), Readings(30.0), lambda line: None)
    first.start()
    second = ChannelReceiver(str(path), os.getuid(), Readings(30.0), lambda line: None)
    second.start()               # replaces the path with its own socket
    first.stop()
    assert path.exists()
    second.stop()
    assert not path.exists()


def test_a_file_that_is_not_a_socket_is_never_removed(short_dir):
    path = short_dir / "important.txt"
    path.write_text("keep me")
    rx = ChannelReceiver(str(path), os.getuid(), Readings(30.0), lambda line: None)
    with pytest.raises(OSError, match="not a socket"):
        rx.bind()
    assert path.read_text() == "keep me"
