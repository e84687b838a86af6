"""The real `openseg-lan` keeps its history across a restart and across kill -9 in the middle of receiving.

The test stands in for the HAN side: it sends channel datagrams itself (the LAN accepts its own uid by
default). Evidence of what the LAN had received, and when, comes from the LAN itself: /api/v1/status
reports the last sequence number the receiver thread handled, and a status answer that completed at
monotonic time E proves that number was handed to the store by E. After SIGKILL at time K, every reading
proven received by K - 1 s must be in the file, and the file must pass PRAGMA integrity_check.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest

from tests.support.channel_messages import reading, status
from tests.support.lan_fixtures import LanServer, wait_until
from openseg.lan_server.state import history_store as hs
from openseg.shared_schema import messages

pytestmark = pytest.mark.integration


class Gateway:
    def __init__(self):
        # AF_UNIX paths are limited to 107 bytes: a short folder.
        self.dir = Path(tempfile.mkdtemp(prefix="oh-", dir="/tmp"))
        self.lan = LanServer(self.dir)
        cfg = tomllib.loads(Path(self.lan.config).read_text())
        base = Path(self.lan.config).parent
        self.socket_path = str(base / cfg["channel"]["socket_path"])
        self.store = base / cfg.get("lan", {}).get("state_dir", "state") / hs.FILE_NAME
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, msg: dict) -> None:
        self.sock.sendto(messages.encode(msg), self.socket_path)   # blocking: never dropped here

    def status(self) -> dict:
        code, _, body = self.lan.request("/api/v1/status")
        assert code == 200
        return json.loads(body)

    def received(self) -> int:
        return self.status()["channel"]["received"]

    def get(self, path: str) -> bytes:
        code, _, body = self.lan.request(path)
        assert code == 200, (path, code, body[:200])
        return body

    def close(self) -> None:
        self.sock.close()
        self.lan.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def gw():
    g = Gateway()
    g.lan.start()
    yield g
    g.close()


def test_history_survives_a_restart(gw):
    now = time.time()
    gw.send(status(0, now, poll_interval_s=7.0))
    for i in range(1, 301):                      # 35 minutes of 7-s readings, ending now
        gw.send(reading(i, i, now - (301 - i) * 7, summation=10**6 + 40 * i, demand=1000 + i))
    wait_until(lambda: gw.received() == 301, 20, "the LAN to receive 301 datagrams")
    # The raw samples (MeterReadings 1 and 2) and the quarter hours of Download My Data (3).
    window = "?published-min=2000-01-01T00:00:00Z"
    up = f"/espi/1_1/resource/Subscription/{gw.lan.subscription}/UsagePoint/1/MeterReading"
    raw = [f"{up}/{mr}/IntervalBlock{window}" for mr in "12"]
    batch = f"/espi/1_1/resource/Batch/Subscription/{gw.lan.subscription}"
    before = gw.get(batch + window)
    raw_before = [gw.get(path) for path in raw]
    chart = json.loads(gw.get("/api/v1/history?minutes=60"))
    assert len(chart["points"]) == 300
    assert gw.lan.stop() == 0                    # SIGTERM: a clean stop
    gw.lan.start()
    assert gw.received() == 0                    # a new process: nothing in memory
    after = gw.get(batch + window)
    assert [gw.get(path) for path in raw] == raw_before
    assert sum(body.count(b"<IntervalReading") for body in raw_before) == 600
    quarters = [b for b in before.split(b"<entry") if b"/MeterReading/3/IntervalBlock/1" in b]
    assert quarters and quarters == [b for b in after.split(b"<entry") if b"/MeterReading/3/IntervalBlock/1" in b]
    assert json.loads(gw.get("/api/v1/history?minutes=60"))["points"] == chart["points"]
    # MeterReading 3 still finds its quarter hours in the store.
    assert b"/MeterReading/3/IntervalBlock/" in after
    assert json.loads(gw.get("/api/v1/status"))["history"]["rows"] == 300


def test_kill_9_while_receiving_keeps_everything_older_than_a_second(gw):
    start = time.time() - 3600
    gw.send(status(0, start, poll_interval_s=0.05))
    stop = threading.Event()
    sent = [0]

    def sender():
        seq = 1
        while not stop.is_set():
            try:
                gw.send(reading(seq, seq, start + seq * 0.05, summation=10**6 + seq, demand=seq % 3000))
            except OSError:              # the LAN died: its socket is gone
                return
            sent[0] = seq
            seq += 1
            time.sleep(0.004)            # ~200 readings a second

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    evidence: list[tuple[float, int]] = []
    try:
        t_start = time.monotonic()
        while time.monotonic() - t_start < 3.0 or not evidence:
            last = gw.status()["channel"]["last_seq"]
            evidence.append((time.monotonic(), last))
        killed = time.monotonic()
        gw.lan.proc.send_signal(signal.SIGKILL)
        gw.lan.proc.wait(10)
    finally:
        stop.set()
        thread.join(10)
    conn = sqlite3.connect(f"file:{gw.store}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        seqs = [s for (s,) in conn.execute("SELECT seq FROM sample ORDER BY seq")]
    finally:
        conn.close()
    assert seqs == list(range(1, len(seqs) + 1))                 # a prefix: nothing torn, nothing skipped
    proven = max(seq for t, seq in evidence if t <= killed - 1.0)
    assert proven > 100 and seqs[-1] >= proven, (proven, seqs[-1])
    print(f"kill -9: {sent[0]} sent, {seqs[-1]} stored, {proven} proven received 1 s before the kill")
    # The next start opens the same store and serves what it holds.
    gw.lan.start()
    body = gw.get(f"/espi/1_1/resource/Subscription/{gw.lan.subscription}/UsagePoint/1/MeterReading/2/"
                  "IntervalBlock?published-min=2000-01-01T00:00:00Z")
    assert body.count(b"<IntervalReading") == len(seqs)
    assert not any(name.endswith(".damaged") or ".damaged-" in name for name in os.listdir(gw.store.parent))
