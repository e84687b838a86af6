"""ESPI time and paging on a long history (issues 13 and 16); writes its section of bench/RESULTS.md.

    .venv/bin/python bench/bench_espi_paging.py [--days 35] [--no-write]

The store is bench_history's (`--days` of 7-s readings through the real writer). Then, in this
process (one thread, so CPU time is the request's own):
1. Worst parameters: CPU seconds of one answer for each parameter set that once made the LAN walk
   empty years (published-min=0001 .. published-max=9999, updated-min=0001, a deep start-index ...),
   on the Batch and on every IntervalBlock collection, beside the reference of the same run: the
   Batch without parameters (Download My Data).
2. The full paged export: following `rel="next"` from the first page of each collection over all
   history (raw demand, raw register: espi_feed.MAX_READINGS readings a page; the quarter hours;
   the Batch with a max-results), every page's time beside the first page's.

Reported, never asserted. Figures depend on the machine: RESULTS.md records which.
"""
from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from bench_history import SUB, build_store, espi, write_section  # noqa: E402
from common import machine  # noqa: E402
from openseg.lan_server.espi import feed as espi_feed  # noqa: E402
from openseg.lan_server.state import history_store as hs  # noqa: E402

MR = f"Subscription/{SUB}/UsagePoint/1/MeterReading"
WIDE = {"published-min": "0001-01-01T00:00:00Z", "published-max": "9999-12-31T23:59:59Z"}
HEAD = "## ESPI time and paging (issues 13, 16)"


def cpu(fn) -> tuple[float, bytes]:
    start = time.process_time()
    body = fn()
    return time.process_time() - start, body


def worst_parameters(r) -> list[tuple[str, str, float, int]]:
    cases = [("Batch", f"Batch/Subscription/{SUB}")] + [
        (f"MeterReading {mr} IntervalBlocks", f"{MR}/{mr}/IntervalBlock") for mr in "123"]
    params = [("published-min=0001 .. published-max=9999", WIDE),
              ("updated-min=0001", {"updated-min": "0001-01-01T00:00:00Z"}),
              ("updated-min=0001, updated-max=9999, max-results=1",
               {"updated-min": "0001-01-01T00:00:00Z", "updated-max": "9999-12-31T23:59:59Z", "max-results": "1"}),
              ("published-min=9999 (nothing held)", {"published-min": "9999-01-01T00:00:00Z"}),
              ("start-index=1000000", {"start-index": "1000000"})]
    rows = []
    for name, path in cases:
        for label, p in params:
            seconds, body = cpu(lambda: espi(r, path, p))
            rows.append((name, label, seconds, body.count(b"<IntervalReading")))
    return rows


def export(r, path: str, params: dict) -> tuple[list[float], list[float], int, int]:
    """Follows rel="next" from the first page: (CPU seconds per page, wall seconds per page, readings,
    bytes). CPU is the figure to compare: the machine is shared, and wall time carries other load."""
    times, walls, readings, size = [], [], 0, 0
    while True:
        start, wall = time.process_time(), time.perf_counter()
        body = espi(r, path, params)
        times.append(time.process_time() - start)
        walls.append(time.perf_counter() - wall)
        readings += body.count(b"<IntervalReading>")
        size += len(body)
        marker = body.find(b'rel="next"')
        if marker < 0:
            return times, walls, readings, size
        href = body[body.find(b'href="', marker) + 6:]
        url = urlsplit(href[:href.find(b'"')].decode().replace("&amp;", "&"))
        params = dict(parse_qsl(url.query))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--no-write", action="store_true", help="print, do not update bench/RESULTS.md")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-espi-"))
    try:
        now = time.time()
        r, store, built = build_store(tmp / hs.FILE_NAME, args.days, now)
        espi(r, f"Batch/Subscription/{SUB}")                        # the reader's first connection
        reference, _ = cpu(lambda: espi(r, f"Batch/Subscription/{SUB}"))
        worst = worst_parameters(r)
        exports = [(f"MeterReading {mr} (raw, {espi_feed.MAX_READINGS} readings a page)",
                    *export(r, f"{MR}/{mr}/IntervalBlock", dict(WIDE))) for mr in "12"]
        exports.append(("MeterReading 3 (quarter hours, max-results=7)",
                        *export(r, f"{MR}/3/IntervalBlock", {**WIDE, "max-results": "7"})))
        exports.append(("Batch (max-results=16)", *export(r, f"Batch/Subscription/{SUB}", {**WIDE, "max-results": "16"})))
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [HEAD, "",
             f"`bench/bench_espi_paging.py --days {args.days}` on {time.strftime('%Y-%m-%d')}: {machine()}, "
             f"SQLite {sqlite3.sqlite_version}; {built['rows']} rows ({args.days} days of 7-s readings).", "",
             f"Reference, same run: Download My Data (the Batch without parameters) {reference * 1000:.0f} ms of CPU.",
             "", "Worst parameters (CPU of one answer; the issue measured 22-51 s for the first row before windows "
             "were clamped to the data held):", "",
             "| resource | parameters | CPU | readings |", "|---|---|---|---|"]
    for name, label, seconds, n in worst:
        lines.append(f"| {name} | {label} | {seconds * 1000:.0f} ms | {n} |")
    top = max(worst, key=lambda row: row[2])
    lines += ["", f"Worst: {top[2] * 1000:.0f} ms ({top[0]}, {top[1]}), "
              f"{top[2] / reference:.1f} x the reference.", "",
              "Full paged export (following rel=\"next\", a position in time): CPU of every page against the "
              "first (goal: whole export of 35 days <= 10 s, every page <= 2 x the first); wall time beside it "
              "(the machine is shared with other work):", "",
              "| collection | pages | total CPU | first page | slowest page | slowest / first | total wall | readings | MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, times, walls, n, size in exports:
        lines.append(f"| {label} | {len(times)} | {sum(times):.2f} s | {times[0] * 1000:.0f} ms | "
                     f"{max(times) * 1000:.0f} ms | {max(times) / times[0]:.2f} | {sum(walls):.1f} s | {n} | "
                     f"{size / 1e6:.1f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text, HEAD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
