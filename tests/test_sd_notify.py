"""shared_schema.sd_notify against a fake notify socket: a real AF_UNIX datagram socket standing in
for systemd's /run/systemd/notify, read back datagram by datagram."""
from __future__ import annotations

import os
import socket
import threading

import pytest

from shared_schema import sd_notify
from shared_schema.sd_notify import Watchdog, notify, watchdog_interval_s


class FakeManager:
    """What systemd does with $NOTIFY_SOCKET: bind it, read datagrams."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self):
        self.sock.close()


@pytest.fixture
def manager(tmp_path):
    m = FakeManager(str(tmp_path / "notify"))
    m.env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
    yield m
    m.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_without_notify_socket_nothing_is_sent(manager):
    assert notify("READY=1", env={}) is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert manager.messages() == []


def test_fields_go_out_as_one_datagram(manager):
    assert notify("READY=1", sd_notify.status_text("polling\nmeter 0x0000"), env=manager.env)
    assert manager.messages() == ["READY=1\nSTATUS=polling meter 0x0000"]


def test_abstract_namespace_socket():
    name = f"openseg-test-{os.getpid()}-{threading.get_ident()}"
    m = FakeManager("\0" + name)
    try:
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert m.messages() == ["WATCHDOG=1"]
    finally:
        m.close()


def test_a_missing_manager_is_not_an_error(tmp_path):
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_from_the_environment():
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 60.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_unarmed_watchdog_never_pings(manager):
    clock = Clock()
    dog = Watchdog({"poll"}, env=manager.env, clock=clock)
    for _ in range(10):
        clock.now += 100
        assert dog.beat("poll") is False
    assert not dog.armed and dog.deadline() == float("inf")
    assert manager.messages() == []


def test_single_loop_pings_while_it_turns_and_stops_when_it_stalls(manager):
    clock = Clock()
    env = {**manager.env, "WATCHDOG_USEC": "8000000"}        # WatchdogSec=8
    dog = Watchdog({"poll"}, env=env, clock=clock)
    sent = []
    for _ in range(16):                                     # the loop turns once a second
        clock.now += 1
        sent.append(dog.beat("poll"))
    assert sum(sent) == 8, "at most one ping per interval/4, and one every 2 s here"
    assert manager.messages() == ["WATCHDOG=1"] * 8
    stalled_at = clock.now
    clock.now += 60                                         # the loop is stuck: no beat, no ping
    assert manager.messages() == []
    assert dog.deadline() == stalled_at + 4
    clock.now += 1
    assert dog.beat("poll") is True                         # it turns again: pinging resumes
    assert manager.messages() == ["WATCHDOG=1"]


def test_one_stalled_loop_stops_the_pings_although_the_other_runs(manager):
    """The LAN process: the request path and the channel receiver must both make progress."""
    clock = Clock()
    env = {**manager.env, "WATCHDOG_USEC": "4000000"}
    dog = Watchdog({"http", "channel"}, env=env, clock=clock)
    for _ in range(8):
        clock.now += 1
        dog.beat("http")
        dog.beat("channel")
    assert manager.messages() == ["WATCHDOG=1"] * 8
    # the receiver thread stops turning; requests are still answered, many of them
    dog.beat("http")
    clock.now += 1
    dog.beat("http")             # completes the round begun before the stall: at most one more ping
    before = len(manager.messages())
    for _ in range(100):
        clock.now += 0.5
        assert dog.beat("http") is False
    assert before <= 1 and manager.messages() == []
    clock.now += 1
    assert dog.beat("channel") is True
    assert manager.messages() == ["WATCHDOG=1"]


def test_unknown_loop_is_a_bug(manager):
    dog = Watchdog({"poll"}, env={**manager.env, "WATCHDOG_USEC": "1000000"})
    with pytest.raises(ValueError):
        dog.beat("pol")
    with pytest.raises(ValueError):
        Watchdog(set())
