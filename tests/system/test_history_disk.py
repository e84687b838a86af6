"""Issue 12: a LAN that starts whatever its disk does. The history store cannot be opened or written
(read-only, full, damaged, missing directory): the LAN still serves current values, the page and ESPI
without history, says so in /api/v1/status and on the page, never renames a healthy database, and
takes history up again when the disk allows; `rows` is what the file holds.

Read-only and full file systems are real ones, in a private mount namespace (history_disk_scenarios.py
under `unshare --mount`): root ignores file modes, so chmod would prove nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.channel_messages import T0, Clock, reading, status
from tests.support.lan_fixtures import LAN_ENVIRONMENT, LanServer, command, wait_until
from openseg.lan_server.state import history_store as hs
from openseg.lan_server.state.history_keeper import HistoryKeeper, HistoryState
from openseg.lan_server.state.readings import Readings
from openseg.shared_schema import messages

ROOT = Path(__file__).resolve().parents[2]
UNSHARE = shutil.which("unshare")


def _namespace_works() -> str | None:
    if UNSHARE is None:
        return "unshare (util-linux) is not installed"
    out = subprocess.run([UNSHARE, "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    return None if out.returncode == 0 else f"cannot make a mount namespace here: {out.stderr.strip()}"


def run_scenario(name: str, tmp_path: Path) -> None:
    problem = _namespace_works()
    assert problem is None, problem         # fails with the reason rather than skipping silently
    out = subprocess.run([UNSHARE, "--mount", "--propagation", "private", sys.executable,
                          "-m", "tests.support.history_disk_scenarios", name, str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"ok: {name}" in out.stdout


@pytest.mark.parametrize("name", ["readonly-at-start", "readonly-after-a-kill", "full", "damaged-read-only"])
def test_disk_fault(name, tmp_path):
    run_scenario(name, tmp_path)


def test_a_missing_state_directory_is_retried_until_it_can_be_made(tmp_path):
    blocker = tmp_path / "mnt"
    blocker.write_text("not a directory: the state dir's parent is missing")
    state = blocker / "openseg"
    wall, mono, logs = Clock(T0), Clock(50.0), []
    keeper = HistoryKeeper(str(state), 35, log=logs.append, clock=wall, monotonic=mono)
    st, problem, since = keeper.health()
    assert st is HistoryState.UNAVAILABLE and str(state) in problem and since == T0
    r = Readings(30.0, clock=wall, history=keeper)
    for seq in range(1, 4):
        r.apply(reading(seq, seq, wall.advance(7)))
        keeper.flush()
    assert keeper.queued == 3 and r.snapshot().latest.seq == 3
    blocker.unlink()
    mono.advance(hs.RETRY_EVERY_S - 1)
    keeper.flush()
    assert keeper.store is None                         # not before the retry is due
    mono.advance(2)
    keeper.flush()
    assert keeper.health() == (HistoryState.OK, None, None) and keeper.queued == 0
    assert keeper.store.stats().rows == 3 and (os.stat(state).st_mode & 0o777) == 0o700
    assert sum(1 for line in logs if "trying again" in line) == 1     # logged once, not per try
    keeper.close()


def test_a_clock_step_while_the_store_is_unavailable_moves_what_came_before_it_only(tmp_path):
    """Issue 14's clock message meets issue 12's keeper: queued in order with the entries, so the
    replay moves the readings tagged on the old clock and none of those tagged after the step."""
    blocker = tmp_path / "mnt"
    blocker.write_text("not a directory")
    state = blocker / "openseg"
    wall, mono = Clock(T0), Clock(50.0)
    keeper = HistoryKeeper(str(state), 35, log=lambda line: None, clock=wall, monotonic=mono)
    r = Readings(30.0, clock=wall, history=keeper)
    old = [wall.advance(7) for _ in range(2)]
    for seq, t in enumerate(old, 1):
        r.apply(reading(seq, seq, t))
    r.apply({"v": 1, "seq": 3, "kind": "clock", "sent": wall(), "shift_s": 3600.0, "from": old[0], "to": old[1]})
    new = wall.advance(3600 + 7)
    r.apply(reading(4, 3, new))
    assert keeper.store is None and keeper.queued == 4
    blocker.unlink()
    mono.advance(hs.RETRY_EVERY_S + 1)
    keeper.flush()
    assert keeper.health()[0] is HistoryState.OK
    with keeper.store.reading() as reader, reader.snapshot():
        stored = sorted(t for (t,) in reader.conn.execute("SELECT t_ms FROM sample"))
    assert stored == [round((old[0] + 3600) * 1000), round((old[1] + 3600) * 1000), round(new * 1000)]
    keeper.close()


def test_a_damaged_file_is_moved_aside_a_healthy_one_never(tmp_path):
    wall, mono = Clock(T0), Clock(0.0)
    keeper = HistoryKeeper(str(tmp_path), 35, log=lambda _: None, clock=wall, monotonic=mono)
    r = Readings(30.0, clock=wall, history=keeper)
    r.apply(reading(1, 1, wall.advance(7)))
    keeper.close()
    # A healthy file that SQLite cannot open (its -shm index is a directory): not damage.
    shm = tmp_path / (hs.FILE_NAME + "-shm")
    shm.mkdir()
    keeper = HistoryKeeper(str(tmp_path), 35, log=lambda _: None, clock=wall, monotonic=mono)
    st, problem, _ = keeper.health()
    assert st is HistoryState.UNAVAILABLE and " is damaged" not in problem
    assert not [n for n in os.listdir(tmp_path) if ".damaged-" in n]
    shm.rmdir()
    mono.advance(hs.RETRY_EVERY_S + 1)
    keeper.flush()
    assert keeper.health()[0] is HistoryState.OK and keeper.store.stats().rows == 1
    keeper.close()
    # Real damage is moved aside and a new store started.
    (tmp_path / hs.FILE_NAME).write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)
    keeper = HistoryKeeper(str(tmp_path), 35, log=lambda _: None, clock=wall, monotonic=mono)
    assert keeper.health()[0] is HistoryState.OK and keeper.store.stats().rows == 0
    assert len([n for n in os.listdir(tmp_path) if ".damaged-" in n]) == 1
    keeper.close()


def test_rows_count_what_the_file_holds_after_a_failed_commit(tmp_path):
    """A transaction that fails at COMMIT must not move `rows` (it used to count before committing)."""
    wall, mono = Clock(T0), Clock(0.0)
    store = hs.HistoryStore(str(tmp_path / hs.FILE_NAME), 35, clock=wall, monotonic=mono, log=lambda _: None)
    r = Readings(30.0, clock=wall, history=store)
    for seq in range(1, 6):
        r.apply(reading(seq, seq, wall.advance(7)))
    store.flush()
    # A second connection holds the write lock: the writer's BEGIN IMMEDIATE fails (busy).
    other = sqlite3.connect(store.path, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    store.writer.conn.execute("PRAGMA busy_timeout = 0")
    for seq in range(6, 9):
        r.apply(reading(seq, seq, wall.advance(7)))
    store.flush()
    assert store.stats().problem and store.stats().rows == 5 and store.stats().queued == 3
    other.execute("ROLLBACK")
    other.close()
    mono.advance(hs.RETRY_EVERY_S + 1)
    store.flush()
    with store.reading() as r, r.snapshot() as rd:
        on_disk = sum(1 for _ in rd.rows())
    assert store.stats().problem is None and store.stats().rows == on_disk == 8
    store.close()


def test_the_lan_serves_with_a_read_only_state_directory(tmp_path):
    """The real openseg-lan in a mount namespace where its state directory is read-only and holds no
    store yet: it starts, serves current values, the page and ESPI, and /api/v1/status says why history
    is off."""
    problem = _namespace_works()
    assert problem is None, problem
    server = LanServer(tmp_path)
    state = server.dir / "state"
    state.mkdir(mode=0o700)
    script = (f'mount --bind "{state}" "{state}" && mount -o remount,bind,ro "{state}" && '
              f'exec "{command("openseg-lan")}" --config "{server.config}"')
    log = open(server.log_path, "ab")
    proc = subprocess.Popen([UNSHARE, "--mount", "--propagation", "private", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                            env={**os.environ, **LAN_ENVIRONMENT})
    log.close()
    server.proc = proc
    try:
        wait_until(lambda: server._answers() or proc.poll() is not None, 30, "openseg-lan to answer")
        assert proc.poll() is None, server.log_text()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = str(server.dir / "run" / "readings.sock")
        now = time.time()
        sock.sendto(messages.encode(status(1, now)), path)
        sock.sendto(messages.encode(reading(2, 1, now)), path)
        sock.close()
        wait_until(lambda: json.loads(server.request("/api/v1/current")[2])["demand_w"] is not None, 10,
                   "the reading to be served")
        st = json.loads(server.request("/api/v1/status")[2])["history"]
        assert st["enabled"] and st["health"] == "unavailable" and "read-only file system" in st["problem"], st
        assert st["rows"] is None and st["queued"] == 1
        assert server.request("/")[0] == 200
        code, _, body = server.request(f"/espi/1_1/resource/Batch/Subscription/{server.subscription}")
        assert code == 200 and b"IntervalReading" in body
        assert "Traceback" not in server.log_text() and "history: off" in server.log_text()
        assert os.listdir(state) == []
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.log_text()
