"""kill -9 of a process in the middle of writing history: the store stays intact and loses at most the
last second.

A child process runs the real store code (Readings -> HistoryStore, the same calls the channel receiver
thread makes) as fast as it can and reports on stdout, every few hundred readings, the sequence number
it has just handed over and the CLOCK_MONOTONIC time at which it did (the same clock in every process).
The test SIGKILLs it at an arbitrary moment, then opens the file itself: PRAGMA integrity_check must say
ok, the readings stored must be exactly a prefix of those handed over (a transaction is all or nothing),
and every reading handed over one second or more before the kill must be there. Four rounds on the same
file: each child reopens what the previous one left, as the LAN process does after a crash.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import sys, time
from openseg.lan_server.state.history_store import HistoryStore
from openseg.lan_server.state.readings import Readings

path, seq0, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = HistoryStore(path, 35, log=lambda line: print("log", line, file=sys.stderr))
readings = Readings(30.0, history=store)
scaling = {"multiplier": 3, "divisor": 10000, "unit": 0, "summation_formatting": 0, "demand_formatting": 0}
now = time.time()
seq = seq0
print("ready", seq0, time.monotonic(), flush=True)
while True:
    # "bursts": the receiver's pattern (a burst of datagrams, then the socket is drained and the batch
    # committed); "flood": datagrams never stop, so only the batch-size rule commits; "trickle": a
    # reading every 10 ms and never a drained socket, so only the half-second rule commits.
    burst = {"bursts": 1 + seq % 97, "flood": 500, "trickle": 1}[mode]
    for _ in range(burst):
        t = now - 86400 + seq * 0.001
        readings.apply({"v": 1, "seq": seq, "kind": "reading", "sent": t, "slot": seq, "due": t - 0.2,
                        "time": t, "rtt_s": 0.2, "summation": 10**9 + seq, "demand": seq % 5000,
                        "scaling": scaling})
        seq += 1
    if mode == "bursts":
        store.flush()
    if mode == "trickle":
        time.sleep(0.01)
    print("sent", seq - 1, time.monotonic(), flush=True)
"""

LOSS_BOUND_S = 1.0


def run_round(path: Path, seq0: int, mode: str, run_for_s: float) -> tuple[float, list[tuple[int, float]]]:
    """Start a writer, let it write for at least run_for_s (by its own reports), SIGKILL it.
    Returns (kill time, [(seq handed over, monotonic time)])."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(seq0), mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress: list[tuple[int, float]] = []
    try:
        first = proc.stdout.readline().split()
        assert first and first[0] == "ready", proc.stderr.read()
        started = float(first[2])
        for line in proc.stdout:
            _, seq, t = line.split()
            progress.append((int(seq), float(t)))
            if float(t) - started >= run_for_s:
                break
        else:
            pytest.fail(f"writer exited early: {proc.stderr.read()}")
        killed = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines():          # reports written before the kill that we had not read yet
        _, seq, t = line.split()
        progress.append((int(seq), float(t)))
    return killed, progress


@pytest.mark.parametrize("mode", ["bursts", "flood", "trickle"])
def test_kill_9_mid_writes_never_corrupts_and_loses_at_most_a_second(tmp_path, mode):
    path = tmp_path / "history.sqlite3"
    seq0 = 0
    losses = []
    for round_ in range(4):
        killed, progress = run_round(path, seq0, mode, run_for_s=1.5 + 0.37 * round_)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            seqs = [s for (s,) in conn.execute("SELECT seq FROM sample WHERE seq >= ? ORDER BY seq", (seq0,))]
        finally:
            conn.close()
        # All or nothing per transaction, in order: what is stored is a prefix of what was handed over.
        assert seqs == list(range(seq0, seq0 + len(seqs)))
        last_stored = seq0 + len(seqs) - 1
        due = [s for s, t in progress if t <= killed - LOSS_BOUND_S]
        assert due, "the writer reported nothing a second before the kill"
        assert last_stored >= max(due), (
            f"round {round_}: reading {max(due)} was handed over >= {LOSS_BOUND_S} s before the kill "
            f"but only {last_stored} is stored")
        # The first lost reading was handed over after the last report of a stored one: an upper
        # bound on how much time the lost readings cover.
        if any(s > last_stored for s, _ in progress):
            losses.append(killed - max([t for s, t in progress if s <= last_stored], default=killed))
        else:
            losses.append(0.0)
        # A batch committed just before the kill may not have been reported yet: go on after both.
        seq0 = max(max(s for s, _ in progress), last_stored) + 1
    # What was actually lost, for the record (pytest -rA shows it).
    print(f"{mode}: seconds of readings lost per kill: {', '.join(f'{x:.3f}' for x in losses)}")
    assert max(losses) <= LOSS_BOUND_S
