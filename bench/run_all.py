"""Robustness and performance benchmarks (issue 6); writes its section of bench/RESULTS.md.

    .venv/bin/python bench/run_all.py            # the full run: ~90 min (10 + 10 min poll timing, 1 h memory)
    .venv/bin/python bench/run_all.py --quick    # a smoke run of every benchmark: ~8 min
    .venv/bin/python bench/run_all.py --only startup,throughput --no-write

Everything runs on this machine as the real console commands (emulator on a pty, openseg-han,
openseg-lan on 127.0.0.1), with Python load generators (http.client + ssl, one process per client).
Each figure is measured in one run beside its reference:

1. throughput  current-value IntervalBlock (ESPI, auth, HTTPS keep-alive), 4 and 8 clients, against a bare
               CherryPy HTTPS server with the same TLS and HTTP settings that replays the LAN's own answer
               (same headers and body, recorded in the run: bench/bare_server.py --reply) to the same
               requests, alternating rounds; also a new TLS connection per request. The LAN process's CPU
               per answer beside the bare server's is the LAN's own work (issue 16: at most +0.11 ms).
               A third server, keep-alive only: the bare one spending first, as pure Python, the CPU the
               LAN application takes for this answer in a loop (bench_page.bench_request, in this run;
               bare_server.py --busy-us), so the report shows what that much work costs in this server.
2. latency     the same request at a steady 20 per second (open loop: latency counts from when each
               request was due), keep-alive and new connection per request; the bare server alongside.
3. poll        |send time - due time| of every poll at a 1 s interval, idle and while (1)'s load and
               the abuse of tests/system/test_abuse_*.py run; missed slots. The HAN's send time is its own
               (time tag - round trip, from the messages it sends, recorded by bench/relay.py); the
               emulator's receive time of each query is the independent witness.
4. time tag    the time tag of each reading against the emulator's own record of when the answer's last
               byte left its UART, paced at 9600 baud like a real XBee; same runs as (3).
5. memory      RSS of each process sampled every 10 s for an hour at 1 s polling with load: the largest
               sample, and growth over the second half (medians of 10 minutes, so a transient sample
               neither hides nor invents it); the samples are kept in --json's output. The LAN's store
               starts with 6 hours of history (BenchStack.seed_history), as a gateway that has run a
               while has it: the answers the load asks for are at their steady size all hour.
6. startup     from launching openseg-han and openseg-lan (the radio already there) to the first
               reading served over HTTPS.

Benchmarks are reported, not asserted; RESULTS.md records the machine and the actual durations.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (HEADING, REPO, Abuse, BareServer, BenchStack, capture_reply, closed_loop, cpu_s, machine, ms,  # noqa: E402
                    open_loop, pct, rss_kb, write_section)

from bench_page import bench_request  # noqa: E402
from tests.system.test_faults_witness import poll_reads, read_frames  # noqa: E402

ALL = ("startup", "throughput", "latency", "poll", "memory")


class Durations:
    def __init__(self, quick: bool):
        self.quick = quick
        self.startup_runs = 3 if quick else 5
        self.idle_s = 60 if quick else 600
        self.loaded_s = 60 if quick else 600
        # Many short rounds, each server's in turn and the order reversed every other round: the
        # machine's own rate moves by a third and more from one round to the next (one run's rounds gave
        # the LAN 0.58 to 0.98 of the bare server beside it; bench/RESULTS.md, issue 16), and two
        # rounds in one order gave each server whatever the machine did while it ran.
        self.tp_round_s = 3 if quick else 4
        self.tp_rounds = 2 if quick else 6
        self.lat_s = 10 if quick else 60
        self.lat_new_s = 5 if quick else 30
        self.memory_s = 180 if quick else 3600


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- 6. start-up -----------------------------------------------------------------------------------
def bench_startup(runs: int) -> dict:
    times, listen, first_poll = [], [], []
    for _ in range(runs):
        with BenchStack(interval=1.0) as s:
            s.stop_han()
            s.stop_lan()
            time.sleep(2.0)             # no process of the previous start is still around
            launched = time.time()
            s.han = s._spawn("han", [s._han_command(), "--config", str(s.config_path)])
            from openseg_emulator.devstack import LAN_ENVIRONMENT, command
            s.lan = s._spawn("lan", [command("openseg-lan"), "--config", str(s.config_path)], env=LAN_ENVIRONMENT)
            served = listening = None
            while time.time() - launched < 30:
                if listening is None:
                    if s._port_open():
                        listening = time.time()
                    else:
                        time.sleep(0.01)
                        continue
                try:        # a client's first request: the password is verified once (scrypt)
                    status, body = s.get_json("/api/v1/current")
                    if status == 200 and body.get("status") == "ok" and _t(body["time"]) > launched:
                        served = time.time()
                        break
                except OSError:
                    pass
                time.sleep(0.02)
            polls = [r.t for r in poll_reads(read_frames(s.frame_log)) if r.t > launched]
            if served is None:
                raise RuntimeError("no reading served within 30 s of the launch")
            times.append(served - launched)
            listen.append(listening - launched)
            first_poll.append(polls[0] - launched if polls else float("nan"))
    return {"runs": runs, "median": statistics.median(times), "max": max(times), "all": times,
            "listen_median": statistics.median(listen), "first_poll_median": statistics.median(first_poll)}


def _t(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---- 1. throughput, 2. latency ---------------------------------------------------------------------
def bench_throughput(s: BenchStack, bare: BareServer, busy: BareServer, d: Durations) -> dict:
    """The LAN against the bare server, and (keep-alive) against the bare server that first spends
    the LAN application's own CPU for this answer, measured in a loop in this run, as pure Python
    (`busy`): what that much work costs a request in this server under load."""
    hdr = {"Authorization": s.auth_header()}
    ib = s.interval_block_path()
    out = {}
    for label, clients, new in (("keep-alive, 4 clients", 4, False), ("keep-alive, 8 clients", 8, False),
                                ("new connection per request, 4 clients", 4, True)):
        servers = {"bare": (bare.proc.pid, bare.port), "lan": (s.lan.pid, s.port)}
        if not new:
            servers["busy"] = (busy.proc.pid, busy.port)
        rounds: dict[str, list[dict]] = {k: [] for k in servers}
        cpu = {k: 0.0 for k in servers}
        for i in range(d.tp_rounds):
            for k, (pid, port) in (list(servers.items()) if i % 2 == 0 else list(servers.items())[::-1]):
                c0 = cpu_s(pid)
                rounds[k].append(closed_loop(port, s.cafile, ib, hdr, clients, d.tp_round_s, new))
                cpu[k] += cpu_s(pid) - c0
        out[label] = {k: _merge(v) for k, v in rounds.items()}
        # Each round's LAN against the bare server of the same round: the spread the figure comes from.
        out[label]["round_ratios"] = [lan["rate"] / bare["rate"] if bare["rate"] else float("nan")
                                      for lan, bare in zip(rounds["lan"], rounds["bare"])]
        for k in servers:
            # The server process's CPU per answer (its reading, 1 s of idle work aside, is the
            # figure least moved by other load on the machine).
            out[label][k]["cpu_ms"] = cpu[k] * 1000 / max(1, out[label][k]["requests"])
        log(f"throughput {label}: LAN {out[label]['lan']['rate']:.0f}/s, bare {out[label]['bare']['rate']:.0f}/s")
    return out


def _merge(rounds: list[dict]) -> dict:
    seconds = sum(r["seconds"] for r in rounds)
    requests = sum(r["requests"] for r in rounds)
    return {"rate": requests / seconds, "requests": requests, "errors": sum(r["errors"] for r in rounds),
            "seconds": seconds, "p50": statistics.median(r["p50"] for r in rounds),
            "p99": max(r["p99"] for r in rounds)}


def bench_latency(s: BenchStack, bare: BareServer, d: Durations) -> dict:
    hdr = {"Authorization": s.auth_header()}
    out = {}
    for label, seconds, new in (("keep-alive", d.lat_s, False), ("new connection per request", d.lat_new_s, True)):
        out[label] = {"lan": open_loop(s.port, s.cafile, s.interval_block_path(), hdr, 20, seconds, new),
                      "bare": open_loop(bare.port, s.cafile, s.interval_block_path(), hdr, 20, seconds, new)}
        log(f"latency {label}: LAN p50 {ms(out[label]['lan']['p50'])} p99 {ms(out[label]['lan']['p99'])}")
    return out


# ---- 3. poll timing, 4. time tags ------------------------------------------------------------------
def poll_window(s: BenchStack, since: float, until: float) -> dict:
    """Slots whose messages the relay received in [since, until], against the emulator's record."""
    msgs = [m for m in s.relay_messages() if m.get("kind") in ("reading", "gap") and since <= m["t_recv"] <= until]
    interval = s.poll_interval_s
    slots = [m["slot"] for m in msgs]
    missing = sorted(set(range(min(slots), max(slots) + 1)) - set(slots)) if slots else []
    gaps = {}
    for m in msgs:
        if m["kind"] == "gap":
            gaps[m["cause"]] = gaps.get(m["cause"], 0) + 1
    readings = [m for m in msgs if m["kind"] == "reading"]
    late = [(m["time"] - m["rtt_s"]) - m["due"] for m in readings]          # the HAN's own send time
    start = msgs[0]["due"] - msgs[0]["slot"] * interval if msgs else 0.0
    reads = [r for r in poll_reads(read_frames(s.frame_log)) if since - interval <= r.t <= until + interval]
    by_slot = {round((r.t - start) / interval): r for r in reads}
    witnessed = [by_slot[m["slot"]].t - m["due"] for m in msgs if m["slot"] in by_slot]
    not_witnessed = [m["slot"] for m in msgs if m["slot"] not in by_slot]
    tags, mismatched = [], 0
    for m in readings:
        r = by_slot.get(m["slot"])
        if r is None or r.answered is None:
            continue
        tags.append(m["time"] - r.answered)
        # the values must be the ones that answer carried, or the pairing would be wrong
        if (r.attrs or {}).get("0x0000") != m.get("summation") or (r.attrs or {}).get("0x0400") != m.get("demand"):
            mismatched += 1
    return {"seconds": until - since, "slots": len(msgs), "missing": missing, "gaps": gaps,
            "late_gaps": gaps.get("late", 0), "send_abs": [abs(x) for x in late], "send": late,
            "witnessed": witnessed, "not_witnessed": not_witnessed, "tag_abs": [abs(x) for x in tags],
            "tag": tags, "tag_mismatched": mismatched,
            "relay_not_forwarded": sum(1 for m in s.relay_messages() if since <= m["t_recv"] <= until
                                       and not m["forwarded"])}


def summarize_poll(w: dict) -> dict:
    return {k: w[k] for k in ("seconds", "slots", "missing", "gaps", "late_gaps", "not_witnessed",
                              "tag_mismatched", "relay_not_forwarded")} | {
        "send_p50": pct(w["send_abs"], 50), "send_p99": pct(w["send_abs"], 99), "send_max": max(w["send_abs"], default=0),
        "witness_p50": pct(w["witnessed"], 50), "witness_p99": pct(w["witnessed"], 99),
        "witness_max": max(w["witnessed"], default=0),
        "tag_p50": pct(w["tag_abs"], 50), "tag_p99": pct(w["tag_abs"], 99), "tag_max": max(w["tag_abs"], default=0),
        "tag_mean": statistics.fmean(w["tag"]) if w["tag"] else float("nan"), "tags": len(w["tag"])}


def loaded(s: BenchStack, seconds: float) -> dict:
    """(1)'s heaviest load (4 keep-alive clients back to back) plus the abuse, for `seconds`."""
    hdr = {"Authorization": s.auth_header()}
    result = {}
    with Abuse(s) as abuse:
        t = threading.Thread(target=lambda: result.update(
            closed_loop(s.port, s.cafile, s.interval_block_path(), hdr, 4, seconds)))
        t.start()
        legit = []
        end = time.time() + seconds
        while time.time() < end:          # a legitimate new-connection client, once every 2 s
            began = time.perf_counter()
            try:
                status = s.get("/api/v1/current", timeout=30)[0]
            except OSError as exc:
                status = type(exc).__name__
            legit.append((time.perf_counter() - began, status))
            time.sleep(2.0)
        t.join()
        counts = dict(abuse.counts)
    return {"load": result, "abuse": counts, "legit_p50": pct([x for x, _ in legit], 50),
            "legit_max": max(x for x, _ in legit), "legit_statuses": sorted({str(st) for _, st in legit})}


# ---- 5. memory -------------------------------------------------------------------------------------
SEEDED_HISTORY_H = 6.0         # 21600 rows at 1 s: the last hour's answer whole from the start


def bench_memory(seconds: float) -> dict:
    samples = []
    with BenchStack(interval=1.0, emulator_args=["--pace-baud", "9600"], history_h=SEEDED_HISTORY_H) as s:
        s.wait_reading()
        hdr = {"Authorization": s.auth_header()}
        began = time.time()
        stop = threading.Event()

        def steady():
            while not stop.is_set():
                open_loop(s.port, s.cafile, s.interval_block_path(), hdr, 20, 30)

        def bursts():
            while not stop.wait(55):
                closed_loop(s.port, s.cafile, s.interval_block_path(), hdr, 4, 5)
                for path in ("/api/v1/history?minutes=60", "/api/v1/status", "/",
                             f"/espi/1_1/resource/Batch/Subscription/{s.subscription}"):
                    s.get(path, timeout=60)

        workers = [threading.Thread(target=f, daemon=True) for f in (steady, bursts)]
        with Abuse(s, channel_rate=200):
            for w in workers:
                w.start()
            while time.time() - began < seconds:
                samples.append((time.time() - began, rss_kb(s.han.pid), rss_kb(s.lan.pid), rss_kb(s.emulator.pid)))
                time.sleep(10)
            stop.set()
            for w in workers:
                w.join(120)
        status = s.get_json("/api/v1/status")[1]
    half = [x for x in samples if x[0] >= seconds / 2]
    def at(t):
        return min(samples, key=lambda x: abs(x[0] - t))
    # Growth is judged on medians over a window (a sixth of the run, 10 min in the hour) at half time
    # and at the end: a single 10-s sample can fall on a transient (a wrong password's 16 MiB hash, a
    # Download My Data answer) and would hide growth or invent it.
    window = seconds / 6
    mid, end = at(seconds / 2), samples[-1]
    out = {"seconds": seconds, "seeded_h": SEEDED_HISTORY_H, "samples": len(samples),
           "queries_total": status.get("queries_total"),
           "queries_lost": status.get("queries_lost"), "window_s": window,
           "rss_kb": [[round(x[0], 1), x[1], x[2], x[3]] for x in samples]}
    for i, name in ((1, "han"), (2, "lan"), (3, "emulator")):
        settled_mid = statistics.median(x[i] for x in samples if seconds / 2 - window <= x[0] < seconds / 2)
        settled_end = statistics.median(x[i] for x in samples if x[0] >= samples[-1][0] - window)
        out[name] = {"mid_mb": mid[i] / 1024, "end_mb": end[i] / 1024, "max_mb": max(x[i] for x in samples) / 1024,
                     "settled_mid_mb": settled_mid / 1024, "settled_end_mb": settled_end / 1024,
                     "growth_second_half_mb": (settled_end - settled_mid) / 1024,
                     "slope_mb_per_h": _slope(_minute_medians([(x[0], x[i]) for x in half])) * 3600 / 1024}
    return out


def _minute_medians(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """One point a minute, its samples' median: the trend of what stays, not of transients."""
    minutes: dict[int, list[tuple[float, float]]] = {}
    for t, v in points:
        minutes.setdefault(int(t // 60), []).append((t, v))
    return [(statistics.median(t for t, _ in m), statistics.median(v for _, v in m)) for m in minutes.values()]


def _slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


# ---- the report ------------------------------------------------------------------------------------
def fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def report(r: dict, d: Durations, started: str, took: float) -> str:
    lines = [HEADING, "",
             f"`bench/run_all.py{' --quick' if d.quick else ''}` on {started} (took {took / 60:.0f} min): {machine()}.",
             "Load generators are Python processes on the same 2 CPUs (http.client + ssl), so every "
             "reference figure was taken with the same clients in the same run.", "",
             "| # | figure | measured | reference, same run | ratio | goal | met | measured over |",
             "|---|---|---|---|---|---|---|---|"]
    rows = []
    if "throughput" in r:
        for label, x in r["throughput"].items():
            lan, bare = x["lan"], x["bare"]
            ratio = lan["rate"] / bare["rate"]
            goal = "≥ 0.7 of bare" if "keep-alive" in label else "—"
            met = ("yes" if ratio >= 0.7 else "**no**") if "keep-alive" in label else "—"
            rows.append(f"| 1 | LAN throughput, IntervalBlock, auth, {label} | {lan['rate']:.0f} req/s "
                        f"({lan['errors']} errors) | bare, same answer {bare['rate']:.0f} req/s | {ratio:.2f} | {goal} | "
                        f"{met} | {fmt_s(lan['seconds'])} each |")
            rows.append(f"| 1 | LAN CPU per request, {label} | {lan['cpu_ms']:.3f} ms | bare, same answer "
                        f"{bare['cpu_ms']:.3f} ms | +{lan['cpu_ms'] - bare['cpu_ms']:.3f} ms | "
                        f"{'≤ +0.11 ms' if 'keep-alive' in label else '—'} | "
                        f"{('yes' if lan['cpu_ms'] - bare['cpu_ms'] <= 0.11 else '**no**') if 'keep-alive' in label else '—'} "
                        f"| {fmt_s(lan['seconds'])} each |")
            if "busy" in x:
                busy, us = x["busy"], r["throughput_app_us"]
                rows.append(f"| 1 | bare server + {us:.1f} µs of Python a request (the LAN application's CPU for "
                            f"this answer in a loop, this run), {label} | {busy['rate']:.0f} req/s, "
                            f"{busy['cpu_ms']:.3f} ms CPU a request | bare, same answer {bare['rate']:.0f} req/s, "
                            f"{bare['cpu_ms']:.3f} ms | {busy['rate'] / bare['rate']:.2f} | — | — | "
                            f"{fmt_s(busy['seconds'])} each |")
    if "latency" in r:
        for label, x in r["latency"].items():
            lan, bare = x["lan"], x["bare"]
            goal = "p99 ≤ 20 ms" if label == "keep-alive" else "—"
            met = ("yes" if lan["p99"] <= 0.020 else "**no**") if label == "keep-alive" else "—"
            rows.append(f"| 2 | LAN latency at 20 req/s, {label} | p50 {ms(lan['p50'])}, p99 {ms(lan['p99'])}, "
                        f"max {ms(lan['max'])} ({lan['errors']} errors) | bare p50 {ms(bare['p50'])}, "
                        f"p99 {ms(bare['p99'])} | {lan['p99'] / bare['p99']:.2f} (p99) | {goal} | {met} | "
                        f"{fmt_s(lan['seconds'])}, {lan['requests']} requests |")
    if "poll" in r:
        idle, load = r["poll"]["idle"], r["poll"]["loaded"]
        missed = idle["late_gaps"] + len(idle["missing"]) + load["late_gaps"] + len(load["missing"])
        rows.append(f"| 3 | poll send time − due, idle | p50 {ms(idle['send_p50'])}, p99 {ms(idle['send_p99'])}, max "
                    f"{ms(idle['send_max'])}; witnessed by the emulator p99 {ms(idle['witness_p99'])} | — | — | "
                    f"p99 ≤ 20 ms | {'yes' if idle['send_p99'] <= 0.020 else '**no**'} | {fmt_s(idle['seconds'])}, "
                    f"{idle['slots']} slots |")
        ratio = load["send_p99"] / idle["send_p99"] if idle["send_p99"] else float("nan")
        wratio = load["witness_p99"] / idle["witness_p99"] if idle["witness_p99"] else float("nan")
        rows.append(f"| 3 | poll send time − due, loaded (1) + abuse | p50 {ms(load['send_p50'])}, p99 "
                    f"{ms(load['send_p99'])}, max {ms(load['send_max'])}; witnessed p99 {ms(load['witness_p99'])} | "
                    f"idle p99 {ms(idle['send_p99'])} | {ratio:.2f} (witnessed {wratio:.2f}) | ≤ 1.5, 0 missed | "
                    f"{'yes' if ratio <= 1.5 and missed == 0 else '**no**'} ({missed} missed) | "
                    f"{fmt_s(load['seconds'])}, {load['slots']} slots |")
        for name, w in (("idle", idle), ("loaded", load)):
            rows.append(f"| 4 | time tag − emulator's answer (9600 baud UART), {name} | p50 {ms(w['tag_p50'])}, p99 "
                        f"{ms(w['tag_p99'])}, max {ms(w['tag_max'])} | seed allows 1 s | — | p99 ≤ 50 ms | "
                        f"{'yes' if w['tag_p99'] <= 0.050 else '**no**'} | {w['tags']} readings |")
    if "memory" in r:
        m = r["memory"]
        grow = max(m["han"]["growth_second_half_mb"], m["lan"]["growth_second_half_mb"])
        # Issue 16's goals: the peak (the largest 10-s sample), not only the end, and a HAN for a small board.
        ok = m["han"]["max_mb"] <= 20 and m["lan"]["max_mb"] <= 80
        rows.append(f"| 5 | RSS over {fmt_s(m['seconds'])} at 1 s polling with load | end: HAN {m['han']['end_mb']:.1f} MB, "
                    f"LAN {m['lan']['end_mb']:.1f} MB; peak: HAN {m['han']['max_mb']:.1f} MB, LAN {m['lan']['max_mb']:.1f} MB; "
                    f"second half (medians of {fmt_s(m['window_s'])}): HAN {m['han']['growth_second_half_mb']:+.1f} MB, LAN "
                    f"{m['lan']['growth_second_half_mb']:+.1f} MB | — | — | peak HAN ≤ 20 MB, LAN ≤ 80 MB, no growth | "
                    f"{'yes' if ok and grow <= 1.0 else '**no**'} | {fmt_s(m['seconds'])} |")
    if "startup" in r:
        st = r["startup"]
        rows.append(f"| 6 | launch → first reading served over HTTPS | median {st['median']:.2f} s, max {st['max']:.2f} s "
                    f"| — | — | ≤ 3 s | {'yes' if st['max'] <= 3 else '**no**'} | {st['runs']} launches |")
    lines += rows + [""]
    lines += details(r)
    return "\n".join(lines) + "\n"


def details(r: dict) -> list[str]:
    out = ["Details:", ""]
    if "throughput" in r:
        for label, x in r["throughput"].items():
            ratios = x["round_ratios"]
            out.append(f"- (1) {label}: LAN p50 {ms(x['lan']['p50'])}, p99 {ms(x['lan']['p99'])}; bare p50 "
                       f"{ms(x['bare']['p50'])}, p99 {ms(x['bare']['p99'])}; {x['lan']['requests']} and "
                       f"{x['bare']['requests']} requests; LAN / bare by round {', '.join(f'{q:.2f}' for q in ratios)} "
                       f"(median {statistics.median(ratios):.2f}).")
    if "poll" in r:
        for name in ("idle", "loaded"):
            w = r["poll"][name]
            out.append(f"- (3, 4) {name}: {w['slots']} slots, gaps by cause {w['gaps'] or 'none'}, slots missing from "
                       f"the sequence {w['missing'] or 'none'}, slots without a query in the emulator's log "
                       f"{w['not_witnessed'] or 'none'}; time tag minus answer: mean {ms(w['tag_mean'])}, "
                       f"{w['tag_mismatched']} value mismatches; messages the relay could not forward "
                       f"{w['relay_not_forwarded']}.")
        ld = r["poll"].get("load")
        if ld:
            out.append(f"- (3) the load: {ld['load'].get('rate', 0):.0f} req/s from 4 keep-alive clients "
                       f"({ld['load'].get('errors')} errors); abuse {ld['abuse']}; a legitimate client on a new "
                       f"connection every 2 s: median {ms(ld['legit_p50'])}, slowest {ms(ld['legit_max'])}, "
                       f"statuses {ld['legit_statuses']}.")
    if "memory" in r:
        m = r["memory"]
        for name in ("han", "lan", "emulator"):
            x = m[name]
            out.append(f"- (5) {name}: {x['mid_mb']:.1f} MB at half time, {x['end_mb']:.1f} MB at the end, max "
                       f"{x['max_mb']:.1f} MB; medians of {fmt_s(m['window_s'])} before half time and at the end "
                       f"{x['settled_mid_mb']:.1f} and {x['settled_end_mb']:.1f} MB; trend of the minute medians "
                       f"over the second half {x['slope_mb_per_h']:+.2f} MB/h.")
        out.append(f"- (5) load: 20 req/s IntervalBlock, every minute 5 s of 4 clients back to back plus the "
                   f"history, status, page and Download-My-Data answers, the abuse of (3) throughout; "
                   f"{m['queries_total']} polls, {m['queries_lost']} lost; the store started with "
                   f"{m.get('seeded_h', 0):g} h of history.")
    if "startup" in r:
        st = r["startup"]
        out.append(f"- (6) launches: {', '.join(f'{x:.2f} s' for x in st['all'])}; HTTPS listening after "
                   f"{st['listen_median']:.2f} s and the first poll after {st['first_poll_median']:.2f} s (medians).")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short durations: a smoke run (~8 min)")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--no-write", action="store_true", help="print, do not update bench/RESULTS.md")
    ap.add_argument("--json", help="also write the raw results to this file")
    args = ap.parse_args()
    only = set(args.only.split(","))
    unknown = only - set(ALL)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    d = Durations(args.quick)
    started_at = time.time()
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    r: dict = {}
    if "startup" in only:
        log("start-up")
        r["startup"] = bench_startup(d.startup_runs)
    if only & {"throughput", "latency", "poll"}:
        with BenchStack(interval=1.0, relay=True, emulator_args=["--pace-baud", "9600"]) as s:
            s.wait_reading()
            reply = capture_reply(s.port, s.cafile, s.interval_block_path(), {"Authorization": s.auth_header()})
            bare = BareServer(s, reply=reply)
            try:
                if "poll" in only:
                    log(f"poll timing, idle, {fmt_s(d.idle_s)}")
                    a = time.time()
                    time.sleep(d.idle_s)
                    idle = poll_window(s, a, time.time())
                if "throughput" in only:
                    # The application's own CPU for this answer in a loop: its cost minus the cost of
                    # calling an empty application the same way (which the bare server pays already).
                    cost = bench_request(20000 if not d.quick else 2000)
                    app_us = (cost["intervalblock_ms"] - cost["bare_ms"]) * 1000
                    busy_server = BareServer(s, reply=reply, busy_us=app_us)
                    try:
                        r["throughput"] = bench_throughput(s, bare, busy_server, d)
                    finally:
                        busy_server.stop()
                    r["throughput_app_us"] = app_us
                if "latency" in only:
                    r["latency"] = bench_latency(s, bare, d)
                if "poll" in only:
                    log(f"poll timing, loaded, {fmt_s(d.loaded_s)}")
                    a = time.time()
                    load = loaded(s, d.loaded_s)
                    busy = poll_window(s, a, time.time())
                    r["poll"] = {"idle": summarize_poll(idle), "loaded": summarize_poll(busy), "load": load}
            finally:
                bare.stop()
    if "memory" in only:
        log(f"memory, {fmt_s(d.memory_s)}")
        r["memory"] = bench_memory(d.memory_s)
    text = report(r, d, started, time.time() - started_at)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1, default=str))
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
