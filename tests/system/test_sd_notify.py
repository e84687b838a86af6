"""openseg.shared_schema.sd_notify against a fake notify socket: a real AF_UNIX datagram socket standing in
for systemd's /run/systemd/notify, read back datagram by datagram (with the sender's pid, as systemd
reads it for NotifyAccess=main).

Unit level: the protocol and the Watchdog rule. Process level: the real openseg-han and openseg-lan
under a fake manager with WatchdogSec=2: READY=1 only once each really serves, WATCHDOG=1 while their
loops turn, and no WATCHDOG=1 while a loop is stalled (the HAN stopped; the LAN's request path held
by idle connections; the LAN's receiver thread blocked inside the readings).
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import pytest

from openseg.shared_schema import sd_notify
from openseg.shared_schema.sd_notify import Watchdog, notify, watchdog_interval_s


_UCRED = struct.Struct("iII")


class FakeManager:
    """What systemd does with $NOTIFY_SOCKET: bind it, read datagrams and who sent them."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.log: list[tuple[float, int, str]] = []      # (monotonic time, sender pid, message)

    def collect(self) -> list[tuple[float, int, str]]:
        new = []
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except BlockingIOError:
                self.log += new
                return new
            pid = next((_UCRED.unpack_from(d)[0] for level, kind, d in anc
                        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), -1)
            new.append((time.monotonic(), pid, data.decode()))

    def messages(self) -> list[str]:
        return [m for _, _, m in self.collect()]

    def fields(self, pid: int) -> list[str]:
        """Every field sent by `pid` so far, in order."""
        self.collect()
        return [f for _, p, m in self.log if p == pid for f in m.split("\n")]

    def wait_for(self, pid: int, field: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.fields(pid).count(field) < count:
            assert time.monotonic() < deadline, f"pid {pid} sent {field} fewer than {count} times: " \
                f"{self.fields(pid)[-10:]}"
            time.sleep(0.05)

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


# ---- the LAN's receiver thread: a loop blocked inside its work is not alive -------------------------

def test_lan_receiver_blocked_in_its_work_is_not_alive(monkeypatch):
    from tests.support.channel_messages import T0, reading
    from openseg.lan_server.state import channel_receiver
    from openseg.lan_server.state.channel_receiver import ChannelReceiver
    from openseg.shared_schema import messages

    monkeypatch.setattr(channel_receiver, "TURN_S", 0.05)
    monkeypatch.setattr(channel_receiver, "STALLED_AFTER_S", 0.5)
    release, entered = threading.Event(), threading.Event()

    class BlockingReadings:
        def apply(self, msg):          # a dead-lock in the shared state, as the receiver sees it
            entered.set()
            release.wait(30)

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        rx = ChannelReceiver(os.path.join(d, "r.sock"), os.getuid(), BlockingReadings(), lambda line: None)
        rx.start()
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            time.sleep(0.6)        # longer than STALLED_AFTER_S: an idle loop still turns
            assert rx.alive()
            sender.sendto(messages.encode(reading(0, 0, T0)), rx.socket_path)
            assert entered.wait(5)
            deadline = time.monotonic() + 5
            while rx.alive():
                assert time.monotonic() < deadline, "a blocked receiver loop still reads as alive"
                time.sleep(0.05)
            release.set()
            deadline = time.monotonic() + 5
            while not rx.alive():
                assert time.monotonic() < deadline, "the receiver did not come back"
                time.sleep(0.05)
        finally:
            release.set()
            sender.close()
            rx.stop()


# ---- the real processes under a fake manager -----------------------------------------------------

@pytest.fixture
def systemd_env(monkeypatch):
    """$NOTIFY_SOCKET and WatchdogSec=2 for every process the test starts (they inherit the env)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        manager = FakeManager(os.path.join(d, "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(d, "notify"))
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield manager
        manager.close()


def pings_between(manager: FakeManager, pid: int, start: float, end: float) -> int:
    manager.collect()
    return sum(1 for t, p, m in manager.log if p == pid and start <= t <= end and "WATCHDOG=1" in m)


def quiet_then_resume(manager: FakeManager, pid: int, stall, resume, window: float = 4.0) -> None:
    """While `stall` holds (WatchdogSec=2, so systemd would kill after 2 s), no ping for `window` s;
    after `resume`, pings again."""
    manager.wait_for(pid, "WATCHDOG=1", count=len([f for f in manager.fields(pid) if f == "WATCHDOG=1"]) + 2)
    held = stall()
    try:
        # a round already under way may still ping: the LAN's probe times out after WatchdogSec/4
        # (0.5 s here), the HAN is stopped at once
        time.sleep(1.0)
        start = time.monotonic()
        time.sleep(window)
        assert pings_between(manager, pid, start, time.monotonic()) == 0, "pinged while stalled"
    finally:
        resume(held)
    manager.wait_for(pid, "WATCHDOG=1", count=manager.fields(pid).count("WATCHDOG=1") + 2, timeout=20)


@pytest.mark.integration
def test_han_ready_only_once_the_radio_answers_and_pings_stop_when_stalled(systemd_env, tmp_path):
    from openseg_emulator.devstack import Stack

    manager = systemd_env
    stack = Stack(tmp_path, poll_interval_s=1.0)
    try:
        stack.workdir.mkdir(parents=True, exist_ok=True)
        stack.log_dir.mkdir(exist_ok=True)
        stack._init_gateway()
        stack.start_lan()
        stack.start_han()                                   # no radio yet: radio-down, retrying
        han = stack.han.pid
        manager.wait_for(han, "WATCHDOG=1", count=3)        # its loop turns while the radio is away ...
        assert "READY=1" not in manager.fields(han)         # ... but it is not ready
        stack.start_emulator()
        manager.wait_for(han, "READY=1")
        assert manager.fields(han).count("READY=1") == 1
        assert any(f.startswith("STATUS=") for f in manager.fields(han))
        quiet_then_resume(manager, han, lambda: os.kill(han, signal.SIGSTOP),
                          lambda _: os.kill(han, signal.SIGCONT))
        stack.stop_han()
        assert manager.fields(han)[-1] == "STOPPING=1"
    finally:
        stack.stop()


@pytest.mark.integration
def test_lan_ready_when_serving_and_pings_stop_when_the_request_path_is_held(systemd_env, tmp_path):
    from tests.support.lan_fixtures import LanServer
    from openseg.lan_server import main as lan_main

    manager = systemd_env
    with LanServer(tmp_path) as lan:                        # returns once HTTPS answers
        pid = lan.proc.pid
        manager.wait_for(pid, "READY=1")
        manager.wait_for(pid, "WATCHDOG=1", count=2)

        def hold_all_workers():
            # TCP connections that never send a ClientHello, three times as many as the pool has
            # workers; each holds a worker for up to HANDSHAKE_TIMEOUT_S, so a fresh batch is opened
            # (before the old one is closed) every 2 s and the probe is always queued behind one.
            batch = 3 * lan_main.THREAD_POOL
            state = {"socks": []}
            stop, first = threading.Event(), threading.Event()

            def keep_holding():
                while not stop.is_set():
                    fresh = [socket.create_connection(("127.0.0.1", lan.port), timeout=5)
                             for _ in range(batch)]
                    old, state["socks"] = state["socks"], fresh
                    for s in old:
                        s.close()
                    first.set()
                    stop.wait(2.0)

            t = threading.Thread(target=keep_holding, daemon=True)
            t.start()
            assert first.wait(10)
            return state, stop, t

        def release(held):
            state, stop, t = held
            stop.set()
            t.join(10)
            for s in state["socks"]:
                s.close()

        quiet_then_resume(manager, pid, hold_all_workers, release)
        quiet_then_resume(manager, pid, lambda: os.kill(pid, signal.SIGSTOP),
                          lambda _: os.kill(pid, signal.SIGCONT))
    assert manager.fields(pid)[-1] == "STOPPING=1"
