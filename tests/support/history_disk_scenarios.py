"""Disk faults for the history store, run by tests/system/test_history_disk.py inside a private mount
namespace (`unshare --mount --propagation private`), where this process may bind-mount the state
directory read-only or mount a small tmpfs on it without touching the machine's mounts. Root reads and
writes any file whatever its mode, so only a real read-only mount or a real full file system shows
what the LAN process does on a gateway's failing SD card.

    python -m tests.support.history_disk_scenarios SCENARIO DIR    (from the repository's root)
                                                   exit 0: every check held; else the failed one

Clocks are the tests' own: the retry is reached by advancing the monotonic clock, never by sleeping.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from tests.support.channel_messages import T0, Clock, reading
from openseg.lan_server.state import history_store as hs
from openseg.lan_server.state.history_keeper import HistoryKeeper, HistoryState
from openseg.lan_server.state.readings import Readings


class Rig:
    def __init__(self, state: str):
        self.state = state
        self.wall, self.mono = Clock(T0), Clock(1000.0)
        self.logs: list[str] = []
        self.seq = 0
        self.keeper: HistoryKeeper | None = None
        self.readings: Readings | None = None

    def open(self) -> HistoryKeeper:
        self.keeper = HistoryKeeper(self.state, 35, log=self.logs.append, clock=self.wall, monotonic=self.mono)
        self.readings = Readings(30.0, clock=self.wall, history=self.keeper)
        return self.keeper

    def feed(self, n: int) -> None:
        for _ in range(n):
            self.seq += 1
            self.readings.apply(reading(self.seq, self.seq, self.wall.advance(7)))
        self.keeper.flush()

    def retry(self) -> None:
        self.mono.advance(hs.RETRY_EVERY_S + 1)
        self.keeper.flush()

    def on_disk(self) -> int:
        """Rows in the file as SQLite reads it (a reader connection, not the writer's counter)."""
        store = self.keeper.store
        with store.reading() as r, r.snapshot() as rd:
            return sum(1 for _ in rd.rows())


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SystemExit(f"FAILED: {what}")


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def read_only(path: str) -> None:
    mount("--bind", path, path)
    mount("-o", "remount,bind,ro", path)


def writable(path: str) -> None:
    mount("-o", "remount,bind,rw", path)


def health(rig: Rig) -> tuple[HistoryState, str | None]:
    state, problem, _ = rig.keeper.health()
    return state, problem


def aside(state: str) -> list[str]:
    return [n for n in os.listdir(state) if ".damaged-" in n]


def readonly_at_start(d: str) -> None:
    state = os.path.join(d, "state")
    rig = Rig(state)
    rig.open()
    rig.feed(10)
    rig.keeper.close()
    path = hs.store_path(state)
    before = (os.stat(path).st_ino, open(path, "rb").read())
    read_only(state)
    rig.open()
    st, problem = health(rig)
    check(st is not HistoryState.OK, f"a read-only state directory is reported ({st}, {problem})")
    check(not aside(state) and (os.stat(path).st_ino, open(path, "rb").read()) == before,
          "the healthy database on a read-only disk is left as it was, not renamed as damaged")
    check(not any("integrity" in line for line in rig.logs), f"nothing calls it damaged: {rig.logs}")
    rig.feed(5)
    check(rig.readings.snapshot().latest.seq == 15, "current values are served from memory")
    rig.mono.advance(hs.RETRY_EVERY_S - 5)
    writable(state)
    rig.keeper.flush()
    check(health(rig)[0] is st, "no retry before RETRY_EVERY_S has passed")
    rig.retry()
    check(health(rig) == (HistoryState.OK, None), f"history taken up again: {health(rig)} {rig.logs}")
    check(rig.on_disk() == 15 and rig.keeper.store.stats().rows == 15,
          f"the readings held meanwhile are stored and counted ({rig.on_disk()} on disk)")
    rig.keeper.close()


def write_and_die(state: str) -> None:
    """Store 10 readings and end as a kill -9 would: no close, the -wal and -shm files left behind."""
    rig = Rig(state)
    rig.open()
    rig.feed(10)
    os._exit(0)


def readonly_after_a_kill(d: str) -> None:
    """A store left by a killed process (WAL and index still there) on a disk that came back read-only:
    SQLite could open it read-only, but a process that did could never write to it again (its WAL
    index would stay mapped read-only), so it is not opened until the disk is writable."""
    state = os.path.join(d, "state")
    subprocess.run([sys.executable, "-m", __spec__.name, "write-and-die", state], check=True)
    path = hs.store_path(state)
    check(os.path.exists(path + "-wal"), "the killed writer left its WAL")
    read_only(state)
    rig = Rig(state)
    rig.seq, rig.wall.t = 10, T0 + 70          # where the killed writer stopped
    rig.open()
    st, problem = health(rig)
    check(st is HistoryState.UNAVAILABLE and "read-only" in problem and not aside(state),
          f"reported, nothing renamed: {st} {problem}")
    rig.feed(5)
    writable(state)
    rig.retry()
    stats = rig.keeper.store.stats()
    check(health(rig)[0] is HistoryState.OK and stats.rows == 15 == rig.on_disk() and stats.queued == 0,
          f"back to writing, the held rows stored: {health(rig)} rows={stats.rows} disk={rig.on_disk()}")
    rig.keeper.close()


def full(d: str) -> None:
    state = os.path.join(d, "state")
    os.makedirs(state)
    mount("-t", "tmpfs", "-o", "size=1m,mode=0700", "openseg-full", state)
    filler = os.path.join(state, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * (256 * 1024))
    rig = Rig(state)
    rig.open()
    for _ in range(200):
        rig.feed(500)
        if health(rig)[0] is not HistoryState.OK:
            break
    st, problem = health(rig)
    check(st is HistoryState.FAILING and "full" in (problem or ""), f"a full file system is reported: {st} {problem}")
    check(not any("size bound" in line for line in rig.logs), f"not logged as the size bound: {rig.logs}")
    stats = rig.keeper.store.stats()
    check(stats.rows == rig.on_disk(), f"rows counts the file when it is full ({stats.rows} vs {rig.on_disk()})")
    check(stats.rows < rig.seq, "some readings wait in memory")
    os.unlink(filler)
    rig.retry()
    stats = rig.keeper.store.stats()
    check(health(rig)[0] is HistoryState.OK, f"room again: history taken up ({health(rig)})")
    check(stats.rows == rig.on_disk() == rig.seq and stats.queued == 0,
          f"every held reading stored ({stats.rows} counted, {rig.on_disk()} on disk, {rig.seq} fed)")
    rig.keeper.close()


def damaged_read_only(d: str) -> None:
    state = os.path.join(d, "state")
    os.makedirs(state)
    with open(hs.store_path(state), "wb") as f:
        f.write(b"SQLite format 3\x00" + bytes(range(256)) * 32)
    read_only(state)
    rig = Rig(state)
    rig.open()
    st, problem = health(rig)
    check(st is HistoryState.UNAVAILABLE and "cannot be moved aside" in (problem or ""),
          f"damaged and stuck on a read-only disk: {st} {problem}")
    rig.feed(3)
    writable(state)
    rig.retry()
    check(health(rig)[0] is HistoryState.OK and len(aside(state)) == 1,
          f"moved aside once writable, a new store started: {health(rig)} {os.listdir(state)}")
    check(rig.on_disk() == 3, "the readings held meanwhile are in the new store")
    rig.keeper.close()


if __name__ == "__main__":
    scenario, directory = sys.argv[1], sys.argv[2]
    try:
        {"write-and-die": write_and_die, "readonly-at-start": readonly_at_start,
         "readonly-after-a-kill": readonly_after_a_kill,
         "full": full, "damaged-read-only": damaged_read_only}[scenario](directory)
    except sqlite3.Error as exc:
        raise SystemExit(f"FAILED: {scenario}: an SQLite error escaped: {exc!r}")
    print(f"ok: {scenario}")
