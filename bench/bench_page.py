"""What the LAN process costs a small board (issue 16); writes its section of bench/RESULTS.md.

    .venv/bin/python bench/bench_page.py            # the full run: ~35 min
    .venv/bin/python bench/bench_page.py --quick    # a smoke run: ~8 min
    .venv/bin/python bench/bench_page.py --only memory --no-write

Everything runs as the real console commands (emulator on a pty, openseg-han, openseg-lan on
127.0.0.1), with a history store filled beforehand through the real writer (bench_history.build_store):

1. memory  openseg-lan's RSS at rest (after start, before any request), after one login, after the
           request sequence below, and its peak (VmHWM); openseg-han's RSS. The reference, same run
           and same store: the same LAN process started with glibc's default malloc settings instead
           of the unit's (devstack.LAN_ENVIRONMENT). The sequence: 150 current-value requests, each on a
           new connection (cheroot hands each to its longest-waiting worker, so they reach every
           thread), the page's history answers, the status, the page, Download My Data and the 15-minute
           energy of all history, three times each.
2. page    the page open in Debian's Chromium (headless, via Playwright) against a stack polling every
           7 s, the production rate, for a while in each chart range: requests and bytes (response
           headers and bodies as transferred: Resource Timing's transferSize) per minute after the first
           load, and openseg-lan's CPU per minute beside the same LAN's idle CPU over as long a window.
           The reference: what re-fetching the whole range at the same rate would transfer (the size
           of the range's full answer, measured in the same run). "Slow requests" are answers that took
           more than 100 ms by the access log: a login that runs scrypt is one.
3. request  the CPU one request costs openseg-lan's application (openseg.lan_server.http.app.LanApp with the
           production logging set-up and its AccessLog writing to /dev/null), in this process, one
           thread, for the current-value IntervalBlock and /api/v1/current, beside bench/bare_server.py's
           hello WSGI callable measured the same way: the part of a request that is ours. The HTTP/TLS
           stack (cheroot), the same for both servers, is run_all.py's throughput figure (1).
Figures are reported, never asserted; RESULTS.md records the machine and the durations.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchStack, cpu_s, machine, rss_kb, write_section  # noqa: E402

from bench_history import build_store  # noqa: E402

from openseg.lan_server.state import history_store as hs  # noqa: E402
from openseg_emulator.devstack import LAN_ENVIRONMENT, command  # noqa: E402

HEADING = "## Memory, an open page, logins (issue 16)"


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


class PreloadedStack(BenchStack):
    """A BenchStack whose history store already holds `days` of 7-s readings ending now, and whose
    openseg-lan gets `lan_env` (None: glibc's defaults)."""

    def __init__(self, *, days: int, lan_env: dict | None, **kw):
        super().__init__(**kw)
        self.days, self.lan_env = days, lan_env

    def seed_history(self, path: str, retention_days: int) -> int:
        if not self.days:
            return 0
        _, store, info = build_store(Path(path), self.days, time.time())
        store.close()
        log(f"history store: {info['rows']} rows in {info['write_s']:.1f} s")
        return info["rows"]

    def start_lan(self) -> None:
        self.lan = self._spawn("lan", [command("openseg-lan"), "--config", str(self.config_path)],
                               env=self.lan_env)
        from openseg_emulator.devstack import wait_until
        wait_until(lambda: self._port_open() or self._died("lan"), 30, "openseg-lan to listen")
        self._died("lan", raise_=True)


# ---- 1. memory -------------------------------------------------------------------------------------
def sequence(s: BenchStack) -> int:
    """The request sequence; returns how many requests it made."""
    n = 0
    ib = s.interval_block_path()
    for _ in range(150):
        s.get(ib)
        n += 1
    sub = s.subscription
    paths = ["/api/v1/history?minutes=60", "/api/v1/history?minutes=1440",
             "/api/v1/history?minutes=1440&step=60", "/api/v1/status", "/",
             f"/espi/1_1/resource/Batch/Subscription/{sub}",
             f"/espi/1_1/resource/Subscription/{sub}/UsagePoint/1/MeterReading/3/IntervalBlock?published-min=2000-01-01T00:00:00Z"]
    for _ in range(3):
        for p in paths:
            status, _, _ = s.get(p, timeout=120)
            if status != 200:
                raise RuntimeError(f"{p}: HTTP {status}")
            n += 1
    return n


def bench_memory(days: int) -> dict:
    out = {}
    for label, env in (("unit's malloc settings", LAN_ENVIRONMENT), ("glibc defaults (reference)", None)):
        with PreloadedStack(days=days, lan_env=env, interval=1.0) as s:
            time.sleep(5.0)                     # a few readings in, nothing asked yet
            pid = s.lan.pid
            rest = rss_kb(pid)
            s.wait_reading()                    # the first login: one scrypt run
            login = rss_kb(pid)
            began = time.time()
            count = sequence(s)
            took = time.time() - began
            out[label] = {"rest_mb": rest / 1024, "login_mb": login / 1024, "after_mb": rss_kb(pid) / 1024,
                          "peak_mb": rss_kb(pid, "VmHWM") / 1024, "han_mb": rss_kb(s.han.pid) / 1024,
                          "requests": count, "seconds": took}
        log(f"memory, {label}: {out[label]}")
    return out


# ---- 2. an open page -------------------------------------------------------------------------------
RESOURCES_JS = "() => performance.getEntriesByType('resource').map(e => [e.name, e.transferSize, e.startTime])"
SLOW_MS = 100.0
ACCESS = re.compile(r"^(\S+ \S+) .*openseg\.lan\.access: \S+ \S+ \"GET ([^\"]*)\" (\d+) (\d+) ([\d.]+)ms")


def slow_requests(logfile: Path, since: dt.datetime) -> list[str]:
    out = []
    for line in logfile.read_text(errors="replace").splitlines():
        m = ACCESS.match(line)
        if not m:
            continue
        when = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        if when >= since and float(m.group(5)) > SLOW_MS:
            out.append(f"{m.group(2)} {m.group(5)} ms")
    return out


def bench_page(minutes: float) -> dict:
    from playwright.sync_api import sync_playwright
    from tests.system.test_page_browser import CHROMIUM, LAUNCH_ARGS, _spki_sha256
    out = {"minutes": minutes}
    with PreloadedStack(days=2, lan_env=LAN_ENVIRONMENT, interval=7.0) as s:
        s.wait_reading()
        full = {m: len(s.get(f"/api/v1/history?minutes={m}", timeout=60)[2]) for m in (60, 1440)}
        out["full_answer_bytes"] = full
        pid = s.lan.pid
        c0 = cpu_s(pid)
        time.sleep(minutes * 60)
        out["idle_cpu_s_per_min"] = (cpu_s(pid) - c0) / minutes
        log(f"idle LAN: {out['idle_cpu_s_per_min'] * 1000:.0f} ms CPU per minute")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=LAUNCH_ARGS + [f"--ignore-certificate-errors-spki-list={_spki_sha256(s.cafile)}"])
            try:
                for minutes_range in (60, 1440):
                    ctx = browser.new_context(http_credentials={"username": s.username, "password": s.password},
                                              service_workers="block")
                    page = ctx.new_page()
                    page.goto(s.url + "/", wait_until="load")
                    page.evaluate("() => performance.setResourceTimingBufferSize(100000)")
                    if minutes_range == 1440:
                        page.locator("#range-1440").click()
                    # The first load of the range is done once its chart has points.
                    page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) > 0",
                                           timeout=60_000)
                    page.wait_for_timeout(1000)
                    t0 = page.evaluate("() => performance.now()")
                    wall0 = dt.datetime.now()
                    c0 = cpu_s(pid)
                    page.wait_for_timeout(minutes * 60_000)
                    c1 = cpu_s(pid)
                    entries = [e for e in page.evaluate(RESOURCES_JS) if e[2] >= t0]
                    by_kind: dict[str, list[int]] = {}
                    for name, size, _ in entries:
                        kind = re.sub(r"\?.*", "", name[len(s.url):])
                        if "minutes=" in name:
                            kind += "?minutes=" + re.search(r"minutes=(\d+)", name).group(1)
                        by_kind.setdefault(kind, []).append(size)
                    out[minutes_range] = {
                        "requests_per_min": len(entries) / minutes,
                        "kb_per_min": sum(e[1] for e in entries) / 1024 / minutes,
                        "cpu_ms_per_min": (c1 - c0) * 1000 / minutes,
                        "by_kind": {k: (len(v), sum(v)) for k, v in sorted(by_kind.items())},
                        "slow": slow_requests(s.log_dir / "lan.log", wall0)}
                    log(f"page, {minutes_range} min range: {out[minutes_range]}")
                    ctx.close()
            finally:
                browser.close()
    return out


# ---- 3. the application's cost per request ---------------------------------------------------------
def bench_request(n: int) -> dict:
    import base64
    import logging
    import tempfile
    from bare_server import hello
    from tests.support.channel_messages import reading, status
    from openseg.lan_server import main as lan_main
    from openseg.lan_server.accounts import passwords, users_file
    from openseg.lan_server.http.access_log import AccessLog
    from openseg.lan_server.http.app import LanApp
    from openseg.lan_server.http.auth import Authenticator
    from openseg.lan_server.state.readings import Readings
    from openseg.lan_server.accounts.users_file import User, UsersStore

    d = Path(tempfile.mkdtemp(prefix="bp-", dir="/tmp"))
    users = d / "users.toml"
    users.write_text(users_file.render({"alice": User("alice", "sub1", passwords.hash_password("alice-pw-123"))}))
    lan_main.setup_logging()
    devnull = open(os.devnull, "w")
    for h in logging.getLogger("openseg").handlers:
        h.setStream(devnull)
    store = hs.HistoryStore(str(d / hs.FILE_NAME), 35, log=lambda _: None)
    r = Readings(30.0, history=store)
    now = time.time()
    r.apply(status(0, now, poll_interval_s=7.0))
    for i in range(50):
        r.apply(reading(i, i, now - 350 + 7 * i))
    store.flush()
    access_log = AccessLog(devnull.fileno())
    app = LanApp(authenticator=Authenticator(UsersStore(str(users))), readings=r, channel_counters=lambda: {},
                 lan_started=now, time_zone="Europe/Paris", default_base_url="https://gw:8443",
                 access_log=access_log)
    auth = "Basic " + base64.b64encode(b"alice:alice-pw-123").decode()

    def cost(wsgi, path: str) -> float:
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "REMOTE_ADDR": "10.0.0.1",
               "HTTP_HOST": "gw:8443", "HTTP_AUTHORIZATION": auth, "wsgi.url_scheme": "https"}
        wsgi(dict(env), lambda *a: None)            # the login (scrypt) and the memoised document
        t = time.process_time()
        for i in range(n):
            wsgi(dict(env), lambda *a: None)
            if i % 1000 == 999:
                # The access log's writer thread writes what the requests queued, within this
                # process's CPU count and before its queue's bound (far above a server's rate) is hit.
                access_log.flush()
        access_log.flush()
        return (time.process_time() - t) * 1000 / n

    out = {"n": n, "bare_ms": cost(hello, "/"),
           "intervalblock_ms": cost(app, "/espi/1_1/resource/Subscription/sub1/UsagePoint/1/MeterReading/1/IntervalBlock"),
           "current_ms": cost(app, "/api/v1/current")}
    store.close()
    access_log.close()
    if access_log.dropped:
        raise RuntimeError(f"the access log dropped {access_log.dropped} lines: the cost is not a request's")
    log(f"request: {out}")
    return out


# ---- the report ------------------------------------------------------------------------------------
def report(r: dict, args, started: str, took: float) -> str:
    lines = [HEADING, "",
             f"`bench/bench_page.py{' --quick' if args.quick else ''}` on {started} UTC (took {took / 60:.0f} min): "
             f"{machine()}. Other processes shared the 2 CPUs during the run.", ""]
    if "memory" in r:
        m, ref = r["memory"]["unit's malloc settings"], r["memory"]["glibc defaults (reference)"]
        lines += ["| figure | measured (the unit's malloc settings) | reference, same run: glibc defaults | goal | met |",
                  "|---|---|---|---|---|"]
        for key, name, goal in (("rest_mb", "LAN RSS at rest (started, readings arriving, no request yet)", 60),
                                ("login_mb", "LAN RSS after the first login (one scrypt run)", None),
                                ("after_mb", f"LAN RSS after the request sequence ({m['requests']} requests, {m['seconds']:.0f} s)", None),
                                ("peak_mb", "LAN peak RSS (VmHWM) through start, login and the sequence", 80),
                                ("han_mb", "HAN RSS", 20)):
            met = "—" if goal is None else ("yes" if m[key] <= goal else "**no**")
            lines.append(f"| {name} | {m[key]:.1f} MB | {ref[key]:.1f} MB | "
                         f"{'—' if goal is None else f'≤ {goal} MB'} | {met} |")
        lines += ["", f"Store: {r['days']} days of 7-s readings. The sequence: 150 current-value IntervalBlocks "
                  "on new connections, then three times the page's history (60 min, 24 h, 24 h per minute), "
                  "the status, the page, Download My Data and all history's 15-minute energy.", ""]
    if "request" in r:
        q = r["request"]
        lines += ["| CPU per request, in this process, one thread | measured | reference, same run: bare hello "
                  "WSGI callable | ours | goal | met |", "|---|---|---|---|---|---|"]
        for key, name, goal in (("intervalblock_ms", "current-value IntervalBlock, auth + access log", 0.11),
                                ("current_ms", "/api/v1/current, auth + access log", None)):
            ours = q[key] - q["bare_ms"]
            met = "—" if goal is None else ("yes" if ours <= goal else "**no**")
            lines.append(f"| {name} | {q[key]:.3f} ms | {q['bare_ms']:.4f} ms | {ours:.3f} ms | "
                         f"{'—' if goal is None else f'≤ {goal} ms'} | {met} |")
        lines += ["", f"{q['n']} requests each, CPU time of this process (time.process_time). The HTTP/TLS stack "
                  "around it is the same in both servers: see run_all.py's (1) for the throughput it leaves.", ""]
    if "page" in r:
        p = r["page"]
        lines += ["| open page, after the first load | requests / min | KB / min | reference: the whole range "
                  "re-fetched as often | LAN CPU / min (idle LAN: "
                  f"{p['idle_cpu_s_per_min'] * 1000:.0f} ms) | slow requests (> 100 ms) | goal | met |",
                  "|---|---|---|---|---|---|---|---|"]
        for rng, goal in ((60, 20), (1440, 60)):
            x = p[rng]
            hist = x["by_kind"].get(f"/api/v1/history?minutes={rng}", (0, 0))[0] / p["minutes"]
            ref = p["full_answer_bytes"][rng] / 1024 * hist
            extra = x["cpu_ms_per_min"] - p["idle_cpu_s_per_min"] * 1000
            lines.append(f"| {'60 minutes' if rng == 60 else '24 hours'} | {x['requests_per_min']:.1f} | "
                         f"{x['kb_per_min']:.1f} | {ref:.0f} KB/min ({hist:.1f} fetches/min of "
                         f"{p['full_answer_bytes'][rng] / 1024:.0f} KB) | {x['cpu_ms_per_min']:.0f} ms "
                         f"(+{extra:.0f} ms for the page) | {len(x['slow'])} | ≤ {goal} KB/min, no scrypt | "
                         f"{'yes' if x['kb_per_min'] <= goal and not x['slow'] else '**no**'} |")
        lines += ["", f"Each range measured for {p['minutes']:g} min after its first load, the idle LAN for "
                  f"as long before. Bytes are response headers and bodies as transferred (gzip where the page's "
                  "JSON is large enough); the requests' own headers (~0.4 KB each) are not counted.", ""]
        for rng in (60, 1440):
            parts = ", ".join(f"{k} {n}× {b / 1024:.1f} KB" for k, (n, b) in p[rng]["by_kind"].items())
            lines.append(f"- {rng}-minute range: {parts}; slow: {p[rng]['slow'] or 'none'}.")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short windows and a 3-day store")
    ap.add_argument("--only", default="request,memory,page")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(","))
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.time()
    days = 3 if args.quick else 35
    r: dict = {"days": days}
    if "request" in only:
        r["request"] = bench_request(5000 if args.quick else 50000)
    if "memory" in only:
        r["memory"] = bench_memory(days)
    if "page" in only:
        r["page"] = bench_page(2.0 if args.quick else 6.0)
    text = report(r, args, started, time.time() - t0)
    print(text)
    if not args.no_write:
        write_section(text, heading=HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
