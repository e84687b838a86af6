"""Benchmarks of the persistent history (issue 7); writes its section of bench/RESULTS.md.

    .venv/bin/python bench/bench_history.py [--days 35] [--rounds 5] [--no-write]

1. A store holding `--days` of 7-s readings (the production poll; ~12 343 rows a day), written through
   the real writer (Readings -> HistoryStore, batches as the receiver thread makes them).
2. One day's ESPI range query out of that history: demand (MeterReading 1, ~12 343 readings), the
   15-minute energy (MeterReading 3), and the page's 24-hour JSON; median and worst of `--rounds`.
3. Download My Data (the Batch without parameters: every 15-minute interval held, plus the last 24 h of
   readings), every 15-minute interval held, and a Batch of everything (the first answer, capped at
   espi_feed.MAX_READINGS readings); time, and peak Python memory (tracemalloc) against the size of
   the document: what is held beyond the document is one block and the query cursor.
4. LAN latency with and without history writes: a real openseg-lan (history on, then history off with
   retention 0), 4 TLS keep-alive clients on 127.0.0.1 asking /api/v1/current while a sender feeds
   20 readings a second through the channel; p50 / p99 over all requests, alternating on/off rounds.

Benchmarks are reported, not asserted. Figures depend on the machine: RESULTS.md records which.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import tomllib
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from tests.support.channel_messages import reading, status  # noqa: E402
from common import FixedClock, machine, write_history  # noqa: E402
from openseg.lan_server.espi import feed as espi_feed  # noqa: E402
from openseg.lan_server.state import history_store as hs  # noqa: E402
from openseg.lan_server.http import web_resources  # noqa: E402
from openseg.lan_server.state.readings import Readings  # noqa: E402
from openseg.shared_schema import messages  # noqa: E402

SUB = "bench"
SCALING = {"multiplier": 1, "divisor": 1000, "unit": 0, "summation_formatting": 0x33, "demand_formatting": 0x24}
POLL_S = 7.0


def build_store(path: Path, days: int, now: float) -> tuple[Readings, hs.HistoryStore, dict]:
    clock = FixedClock(now - days * 86400)
    store = hs.HistoryStore(str(path), 35 if days <= 35 else days + 1, clock=lambda: now, log=lambda _: None)
    n = int(days * 86400 / POLL_S)

    def samples():
        raw = 12_345_678
        for k in range(n):
            w = 150 + (k * 7919) % 2800
            raw += int(w * POLL_S / 3600)
            yield now - days * 86400 + k * POLL_S + 0.3, w, raw, None
    start = time.perf_counter()
    _, r = write_history(store, clock, samples(), step=POLL_S, scaling=SCALING)
    took = time.perf_counter() - start
    clock.t = now
    store.writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return r, store, {"rows": n, "write_s": took, "db_bytes": os.path.getsize(path),
                      "bytes_per_row": os.path.getsize(path) / n}


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def timed(fn, rounds: int) -> tuple[float, float, object]:
    out, times = None, []
    for _ in range(rounds):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times), out


def espi(r, path, params=None):
    resp = web_resources.espi(r, path=path, params=params or {}, subscription=SUB,
                              base_url="https://gw.example:8443", time_zone="Europe/Paris")
    assert resp.status == 200, (path, resp.status, resp.body[:200])
    return resp.body


def in_a_fresh_thread(fn):
    """Request threads open their own read connection the first time: measure that too, once."""
    box = {}
    t = threading.Thread(target=lambda: box.update(out=fn()))
    t.start()
    t.join()
    return box["out"]


def bench_queries(r, now: float, days: int, rounds: int) -> list[tuple[str, float, float, str]]:
    mr = f"Subscription/{SUB}/UsagePoint/1/MeterReading"
    day_lo = now - (days // 2 + 1) * 86400
    window = {"published-min": stamp(day_lo), "published-max": stamp(day_lo + 86400)}
    rows = []
    for label, fn in [
        ("one day of demand readings (MeterReading 1)", lambda: espi(r, f"{mr}/1/IntervalBlock", window)),
        ("one day of 15-minute energy (MeterReading 3)", lambda: espi(r, f"{mr}/3/IntervalBlock", window)),
        ("24-hour JSON for the page (/api/v1/history?minutes=1440)",
         lambda: web_resources.history_json(r, {"minutes": "1440"}).body),
    ]:
        first = time.perf_counter()
        in_a_fresh_thread(fn)
        first = time.perf_counter() - first
        med, worst, body = timed(fn, rounds)
        rows.append((label, med, worst, f"{len(body) / 1e6:.2f} MB, {body.count(b'<IntervalReading')} readings"
                     if body.startswith(b"<?xml") else f"{len(body) / 1e6:.2f} MB, "
                     f"{len(json.loads(body)['points'])} points; first call on a new thread {first * 1000:.0f} ms"))
    return rows


def peak_memory(fn) -> tuple[int, int]:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    body = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, len(body)


def bench_batch(r, now: float, days: int, rounds: int):
    """(label, median, worst, document bytes, peak traced memory, readings) for the big documents."""
    everything = {"published-min": stamp(now - days * 86400 - 3600)}
    cases = [
        ("Download My Data (Batch, no parameters: every quarter hour + 24 h of readings)",
         f"Batch/Subscription/{SUB}", {}),
        (f"{days} days of 15-minute energy (MeterReading 3 IntervalBlocks, all held)",
         f"Subscription/{SUB}/UsagePoint/1/MeterReading/3/IntervalBlock", everything),
        (f"Batch of all {days} days with parameters (first answer: {espi_feed.MAX_READINGS} readings, "
         "then rel=next)", f"Batch/Subscription/{SUB}", everything),
    ]
    rows = []
    for label, path, params in cases:
        fn = (lambda path=path, params=params: espi(r, path, params))
        med, worst, body = timed(fn, rounds)
        peak, size = peak_memory(fn)
        rows.append((label, med, worst, size, peak, body.count(b"<IntervalReading")))
    return rows


def bench_latency(rounds: int, per_client: int = 300, clients: int = 4):
    from tests.support.lan_fixtures import LanServer, basic_auth, wait_until
    results = {"on": [], "off": []}
    for rnd in range(rounds):
        for mode in ("on", "off") if rnd % 2 == 0 else ("off", "on"):
            workdir = Path(tempfile.mkdtemp(prefix="bh-", dir="/tmp"))
            lan = LanServer(workdir)
            if mode == "off":
                cfg = Path(lan.config)
                cfg.write_text(cfg.read_text().replace("[lan]\n", "[lan]\nhistory_retention_days = 0\n", 1))
            lan.start()
            try:
                cfg = tomllib.loads(Path(lan.config).read_text())
                sock_path = str(Path(lan.config).parent / cfg["channel"]["socket_path"])
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                stop = threading.Event()
                t_start = time.time()
                sock.sendto(messages.encode(status(0, t_start, poll_interval_s=0.05)), sock_path)

                def feed():
                    seq = 1
                    while not stop.is_set():
                        sock.sendto(messages.encode(reading(seq, seq, time.time(), summation=10**6 + seq)),
                                    sock_path)
                        seq += 1
                        time.sleep(0.05)

                feeder = threading.Thread(target=feed, daemon=True)
                feeder.start()
                wait_until(lambda: lan.request("/api/v1/current")[0] == 200, 10, "a current value")
                lat: list[float] = []
                lock = threading.Lock()

                def client():
                    conn = lan.connection()
                    hdr = {"Authorization": basic_auth(lan.username, lan.password)}
                    mine = []
                    for _ in range(per_client):
                        t = time.perf_counter()
                        conn.request("GET", "/api/v1/current", headers=hdr)
                        resp = conn.getresponse()
                        resp.read()
                        mine.append(time.perf_counter() - t)
                        assert resp.status == 200
                    conn.close()
                    with lock:
                        lat.extend(mine)

                threads = [threading.Thread(target=client) for _ in range(clients)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                stop.set()
                feeder.join()
                sock.close()
                if mode == "on":
                    st = json.loads(lan.request("/api/v1/status")[2])["history"]
                    assert st["enabled"] and st["rows"] > 0
                results[mode].extend(lat)
            finally:
                lan.stop()
                shutil.rmtree(workdir, ignore_errors=True)
    out = {}
    for mode, lat in results.items():
        lat.sort()
        out[mode] = (statistics.median(lat), lat[int(0.99 * (len(lat) - 1))], len(lat))
    return out


def write_section(text: str, head: str = "## History store (issue 7)") -> None:
    path = REPO / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n"
    if head in old:
        before, rest = old.split(head, 1)
        nxt = rest.find("\n## ")
        old = before.rstrip("\n") + "\n\n" + (rest[nxt + 1:] if nxt >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency-rounds", type=int, default=4, help="at least 1")
    ap.add_argument("--no-write", action="store_true", help="print, do not update bench/RESULTS.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-"))
    try:
        now = time.time()
        r, store, built = build_store(tmp / hs.FILE_NAME, args.days, now)
        queries = bench_queries(r, now, args.days, args.rounds)
        batch = bench_batch(r, now, args.days, args.rounds)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    latency = bench_latency(args.latency_rounds)

    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    lines = [
        "## History store (issue 7)",
        "",
        f"`bench/bench_history.py --days {args.days} --rounds {args.rounds}` on {time.strftime('%Y-%m-%d')}: "
        f"{machine()}, SQLite {sqlite3.sqlite_version}.",
        "",
        f"Store: {built['rows']} rows ({args.days} days of 7-s readings), written through the real writer in "
        f"{built['write_s']:.1f} s; file {built['db_bytes'] / 1e6:.1f} MB = "
        f"{built['bytes_per_row']:.1f} bytes per reading (bound: {hs.BYTES_PER_ROW_BOUND} per row of "
        f"retention x {hs.MAX_ROWS_PER_DAY} rows a day).",
        "",
        "| answer | median | worst | size |",
        "|---|---|---|---|",
    ]
    for label, med, worst, note in queries:
        lines.append(f"| {label} | {ms(med)} | {ms(worst)} | {note} |")
    lines += ["", "Large documents, and the Python memory they peak at while being written (tracemalloc), "
              "against the size of the document returned:", "",
              "| answer | median | worst | document | readings | peak memory | peak minus document |",
              "|---|---|---|---|---|---|---|"]
    for label, med, worst, size, peak, n in batch:
        lines.append(f"| {label} | {ms(med)} | {ms(worst)} | {size / 1e6:.2f} MB | {n} | {peak / 1e6:.2f} MB | "
                     f"{(peak - size) / 1e6:.2f} MB |")
    on, off = latency["on"], latency["off"]
    lines += ["", "LAN latency, `/api/v1/current` over TLS keep-alive, 4 clients x 300 requests, 20 readings a "
              "second through the channel, a real openseg-lan with history on and with retention 0 "
              f"(alternating, {args.latency_rounds} rounds each):", "",
              "| history | requests | p50 | p99 |", "|---|---|---|---|",
              f"| on (35 days) | {on[2]} | {on[0] * 1000:.2f} ms | {on[1] * 1000:.2f} ms |",
              f"| off (0) | {off[2]} | {off[0] * 1000:.2f} ms | {off[1] * 1000:.2f} ms |",
              "", f"p99 with history / without: {on[1] / off[1]:.2f}.",
              "", "Notes: the writes are one transaction per drained burst of datagrams, fsync'ed (WAL, "
              "synchronous=FULL), on the receiver thread; request threads read through their own "
              "connections, and /api/v1/current never touches the store. The robustness benchmark "
              "(bench/run_all.py, its own section) runs with history on; the on/off comparison issue 7 "
              "asks for is this script's: the same LAN process with and without history, alternating, "
              "with 20 readings a second arriving (so writes happen during the requests)."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
