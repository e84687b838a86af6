"""The channel sender never blocks, never binds, never receives, and counts what it drops."""
import ast
import os
import pathlib
import socket
import time

import pytest

from openseg.han_reader.channel_sender import ChannelSender
from openseg.han_reader.clock import SystemClock
from openseg.shared_schema import messages

ROOT = pathlib.Path(__file__).resolve().parents[2]
GAP = {"slot": 1, "due": 1_750_000_000.0, "cause": "timeout"}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "readings.sock")


def receiver(path, rcvbuf=None):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(path)
    sock.settimeout(2)
    return sock


def test_messages_arrive_stamped_and_in_sequence(path):
    rx = receiver(path)
    tx = ChannelSender(path, SystemClock())
    for i in range(3):
        assert tx.send("gap", {**GAP, "slot": i})
    got = [messages.decode(rx.recv(4096)) for _ in range(3)]
    assert [m["seq"] for m in got] == [0, 1, 2] and [m["slot"] for m in got] == [0, 1, 2]
    assert all(m["v"] == messages.VERSION and m["kind"] == "gap" and abs(m["sent"] - time.time()) < 5
               for m in got)
    assert (tx.sent, tx.dropped) == (3, 0)


def test_lan_side_absent_drops_and_counts_without_blocking(path, caplog):
    caplog.set_level("INFO")
    tx = ChannelSender(path, SystemClock())
    t0 = time.monotonic()
    for i in range(50):
        assert not tx.send("gap", {**GAP, "slot": i})
    assert time.monotonic() - t0 < 0.5
    assert (tx.sent, tx.dropped, tx.seq) == (0, 50, 50)      # dropped messages still took a seq number
    assert len([r for r in caplog.records if "cannot deliver" in r.message]) == 1   # logged once per run
    rx = receiver(path)
    assert tx.send("gap", GAP)
    assert messages.decode(rx.recv(4096))["seq"] == 50
    assert any("delivering again after 50" in r.message for r in caplog.records)


def test_stale_socket_file_is_a_drop(path):
    receiver(path).close()                     # the file stays, nobody is bound to it any more
    assert os.path.exists(path)
    tx = ChannelSender(path, SystemClock())
    assert not tx.send("gap", GAP) and tx.dropped == 1


def test_slow_lan_side_full_buffer_never_blocks(path):
    rx = receiver(path, rcvbuf=4096)
    tx = ChannelSender(path, SystemClock())
    worst = 0.0
    for i in range(2000):
        t0 = time.monotonic()
        tx.send("gap", {**GAP, "slot": i})
        worst = max(worst, time.monotonic() - t0)
    assert tx.dropped > 0 and tx.sent > 0 and tx.sent + tx.dropped == 2000
    assert worst < 0.1
    # what did arrive is intact and in order
    rx.setblocking(False)
    seqs = []
    while True:
        try:
            seqs.append(messages.decode(rx.recv(4096))["seq"])
        except BlockingIOError:
            break
    assert seqs == sorted(seqs) and len(seqs) == tx.sent


def test_sender_socket_has_no_address_and_no_passcred(path):
    rx = receiver(path)
    tx = ChannelSender(path, SystemClock())
    tx.send("gap", GAP)
    assert tx._sock.getsockname() in ("", None, b"")          # never bound, not even auto-bound
    assert tx._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 0
    assert tx._sock.gettimeout() == 0.0                        # non-blocking
    _, addr = rx.recvfrom(4096)
    assert not addr                                            # the receiver sees no reply address


def test_an_invalid_message_is_refused_and_counted_not_raised(path, caplog):
    tx = ChannelSender(path, SystemClock())
    assert not tx.send("gap", {**GAP, "cause": "bored"})
    assert tx.dropped == 1 and "BUG" in caplog.text


def test_no_han_module_binds_receives_or_asks_for_credentials():
    forbidden = {"bind", "recv", "recvfrom", "recv_into", "recvfrom_into", "recvmsg", "listen", "accept",
                 "SO_PASSCRED"}
    for p in (ROOT / "openseg" / "han_reader").glob("*.py"):
        names = {n.attr for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Attribute)}
        assert not names & forbidden, f"{p.name} uses {sorted(names & forbidden)}"
