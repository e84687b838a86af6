"""What the robustness/performance benchmarks share: a stack with a channel observer, load generators,
percentiles, RSS, and the RESULTS.md section writer. Used by bench/run_all.py.

The observer (bench/relay.py) is the only change to the production topology, and only in the runs that
need it: the HAN process sends to the relay's socket, the relay records every message (slot, due time,
time tag, round trip) and forwards the bytes unchanged to the LAN process's socket. The HAN's sends stay
non-blocking and never wait for anyone, so its timing is what it would be without the relay; the LAN
process still receives every message from a process of the same uid, as it checks.
"""
from __future__ import annotations

import base64
import http.client
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))

from openseg_emulator.devstack import Stack, dump_toml, wait_until  # noqa: E402

import tomllib  # noqa: E402

PYTHON = sys.executable


# ---- statistics ------------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100): a value that was actually measured."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def ms(x: float) -> str:
    return "n/a" if x != x else (f"{x * 1000:.1f} ms" if x < 10 else f"{x:.1f} s")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cherrypy
    import cheroot
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), Python "
            f"{platform.python_version()}, CherryPy {cherrypy.__version__}, cheroot {cheroot.__version__}, "
            f"{ssl.OPENSSL_VERSION}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int, field: str = "VmRSS") -> int | None:
    """A process's memory figure from /proc/PID/status: VmRSS now, or VmHWM, its peak so far."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---- history for a store ---------------------------------------------------------------------------
class FixedClock:
    """A clock the code under test reads and the bench sets."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def write_history(store, clock: FixedClock, samples, *, step: float, scaling: dict):
    """Write `samples` ((time, demand W, summation, received or None) each, in time order) into `store`
    through the LAN's own Readings, as its channel receiver would, with `clock` set to each sample's
    time: the one way the benches fill a history store. Returns (rows written, the Readings, which
    callers that answer from the store go on using)."""
    from openseg.lan_server.state.readings import Readings
    from tests.support.channel_messages import reading, status

    readings = Readings(30.0, clock=clock, history=store)
    readings.apply(status(0, clock(), poll_interval_s=step))
    rows = 0
    for k, (t, w, summation, received) in enumerate(samples):
        clock.t = t
        readings.apply(reading(k + 1, k, t, summation=summation, demand=w, received=received, scaling=scaling))
        rows += 1
        if k % 50 == 49:
            store.flush()
    store.flush()
    return rows, readings


# ---- the stack -------------------------------------------------------------------------------------
class BenchStack(Stack):
    """devstack.Stack in a short /tmp folder; with relay=True the HAN sends through bench/relay.py."""

    def __init__(self, *, interval: float = 1.0, relay: bool = False, emulator_args=(), lan: dict | None = None,
                 han: dict | None = None, history_h: float = 0.0):
        self.tmp = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
        self.history_h = history_h
        super().__init__(self.tmp, poll_interval_s=interval, emulator_args=["--seed", "1", *emulator_args],
                         han_overrides={"status_every_s": 5.0, **(han or {})}, lan_overrides=lan or {})
        self.use_relay = relay
        self.relay: subprocess.Popen | None = None
        self.relay_sock = self.tmp / "relay.sock"
        self.relay_log = self.tmp / "relay.jsonl"

    def _init_gateway(self) -> None:
        super()._init_gateway()
        from openseg.lan_server.state import history_store as hs
        from openseg.shared_schema import config

        lan = config.load(str(self.config_path)).lan
        path = hs.store_path(lan["state_dir"])
        if not os.path.exists(path):            # once per stack: a store already there is kept
            os.makedirs(lan["state_dir"], mode=0o700, exist_ok=True)
            self.seed_history(path, lan["history_retention_days"])

    # The emulator's meter as seed_history writes it: its defaults (divisor 1000, multiplier 1, kWh, so
    # one count a Wh; --start-kwh 12345.678; received register 0). A stack that changes any of these
    # is refused a seed rather than given a store that disagrees with its meter.
    SEED_METER_FLAGS = ("--divisor", "--multiplier", "--unit", "--start-kwh", "--start-received-kwh", "--state-file")
    SEED_SCALING = {"multiplier": 1, "divisor": 1000, "unit": 0, "summation_formatting": 0x33,
                    "demand_formatting": 0x23}
    SEED_END_WH = 12_345_678 - 10       # just below the emulator's first answer: no register drop

    def seed_history(self, path: str, retention_days: int) -> int:
        """Fill the LAN's new history store at `path` before it starts (a subclass may fill it its own
        way). This one: as a gateway that has polled every `poll_interval_s` for `history_h` hours has
        it, ending now, at the emulator's scaling and just below its register, so the first live
        reading continues it. The last hour's answer, which the memory bench asks for every minute, is
        then at its steady size from the first minute (from an empty store it grows all hour, and with
        it the high-water mark it leaves in the allocators, which is not growth of the gateway;
        bench/RESULTS.md, issue 16); Download My Data holds its quarter hours. Rows made."""
        if not self.history_h:
            return 0
        from openseg.lan_server.state import history_store as hs

        changed = [a for a in self.emulator_args if a.split("=")[0] in self.SEED_METER_FLAGS]
        if changed:
            raise ValueError(f"seed_history writes the emulator's default meter; this stack sets {changed}")
        step = self.poll_interval_s
        rows = int(self.history_h * 3600 / step)
        watts = [150 + (k * 7919) % 2800 for k in range(rows)]       # 150 to 2950 W, a household's range
        energy = sum(watts) * step / 3600                            # Wh over the seeded time
        now = time.time()
        clock = FixedClock(now - rows * step)
        store = hs.HistoryStore(path, retention_days, clock=clock, log=lambda _: None)

        def samples():
            so_far = 0.0
            for k, w in enumerate(watts):
                so_far += w * step / 3600                  # exact running total, rounded once a reading
                yield now - (rows - k) * step, w, math.floor(self.SEED_END_WH - energy + so_far), 0
        try:
            return write_history(store, clock, samples(), step=step, scaling=self.SEED_SCALING)[0]
        finally:
            store.close()

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def stop(self) -> None:
        super().stop()
        if self.relay is not None:
            self.relay.send_signal(signal.SIGTERM)
            try:
                self.relay.wait(10)
            except subprocess.TimeoutExpired:
                self.relay.kill()
            self.relay = None

    @property
    def lan_socket(self) -> Path:
        with open(self.config_path, "rb") as f:
            cfg = tomllib.load(f)
        return (self.config_path.parent / cfg["channel"]["socket_path"]).resolve()

    def start_han(self) -> None:
        if not self.use_relay:
            return super().start_han()
        if self.relay is None:
            self.relay = self._spawn("relay", [PYTHON, str(BENCH / "relay.py"), "--listen", str(self.relay_sock),
                                               "--forward", str(self.lan_socket), "--out", str(self.relay_log)])
            wait_until(lambda: self.relay_sock.exists() or self._died("relay"), 15, "the relay")
            self._died("relay", raise_=True)
        with open(self.config_path, "rb") as f:
            cfg = tomllib.load(f)
        cfg["channel"]["socket_path"] = str(self.relay_sock)
        han_config = self.gateway_dir / "han.toml"
        han_config.write_text(dump_toml(cfg))
        self.han = self._spawn("han", [self._han_command(), "--config", str(han_config)])

    @staticmethod
    def _han_command() -> str:
        from openseg_emulator.devstack import command
        return command("openseg-han")

    def relay_messages(self) -> list[dict]:
        if not self.relay_log.exists():
            return []
        out = []
        for line in self.relay_log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_reading(self, timeout: float = 60) -> None:
        wait_until(lambda: self.get_json("/api/v1/current")[1].get("status") == "ok", timeout,
                   "a reading served over HTTPS")

    def interval_block_path(self) -> str:
        return f"/espi/1_1/resource/Subscription/{self.subscription}/UsagePoint/1/MeterReading/1/IntervalBlock"

    def auth_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def capture_reply(port: int, cafile: str, path: str, headers: dict) -> dict:
    """One answer of the server on `port` as the bare server replays it: status line, headers (without
    the ones cheroot writes itself: Date, Connection, Transfer-Encoding) and body (hex)."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_context(cafile), timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"capture_reply: {path} answered {resp.status}")
    own = {"date", "connection", "transfer-encoding"}
    return {"status": f"{resp.status} {resp.reason}", "body": body.hex(),
            "headers": [(k, v) for k, v in resp.getheaders() if k.lower() not in own]}


class BareServer:
    """bench/bare_server.py: a CherryPy HTTPS server with the LAN server's TLS and HTTP settings,
    replaying `reply` (capture_reply) to every request, or "hello" without one; with `busy_us`, after
    that many microseconds of Python CPU a request."""

    def __init__(self, stack: BenchStack, reply: dict | None = None, busy_us: float = 0.0):
        from openseg_emulator.devstack import free_port
        self.port = free_port()
        tls = stack.gateway_dir / "tls"
        args = ["--busy-us", str(busy_us)] if busy_us > 0 else []
        if reply is not None:
            reply_file = stack.log_dir / "bare-reply.json"
            reply_file.write_text(json.dumps(reply))
            args += ["--reply", str(reply_file)]
        self.proc = subprocess.Popen([PYTHON, str(BENCH / "bare_server.py"), "--port", str(self.port),
                                      "--certificate", str(tls / "cert.pem"), "--private-key", str(tls / "key.pem"),
                                      *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(stack.log_dir / "bare.log", "ab"), start_new_session=True)
        wait_until(lambda: _port_open(self.port) or self.proc.poll() is not None, 30, "the bare server")
        if self.proc.poll() is not None:
            raise RuntimeError(f"bare server exited: {(stack.log_dir / 'bare.log').read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---- load generators -------------------------------------------------------------------------------
def client_context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False       # the certificate names localhost; we connect by address
    return ctx


def _closed_loop(port, cafile, path, headers, start_at, end_at, new_connection, source, out):
    """One client process: requests back to back from start_at to end_at; (count, errors, latencies)."""
    ctx = client_context(cafile)
    count = errors = 0
    lat: list[float] = []
    conn = None
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < end_at:
        if conn is None:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30,
                                               source_address=(source, 0) if source else None)
        began = time.perf_counter()
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors += 1
            if new_connection or resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = None
        lat.append(time.perf_counter() - began)
        count += 1
    if conn is not None:
        conn.close()
    out.put((count, errors, lat))


def closed_loop(port: int, cafile: str, path: str, headers: dict, clients: int, seconds: float,
                new_connection: bool = False, source: str | None = None) -> dict:
    """`clients` processes, each one connection, requests back to back for `seconds`."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 1.0                    # every process connected and waiting
    end_at = start_at + seconds
    procs = [ctx.Process(target=_closed_loop, args=(port, cafile, path, headers, start_at, end_at,
                                                    new_connection, source, out), daemon=True)
             for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(10)
    count = sum(r[0] for r in results)
    lat = [x for r in results for x in r[2]]
    return {"requests": count, "errors": sum(r[1] for r in results), "rate": count / seconds,
            "p50": pct(lat, 50), "p99": pct(lat, 99), "seconds": seconds, "clients": clients}


def open_loop(port: int, cafile: str, path: str, headers: dict, rate: float, seconds: float,
              new_connection: bool = False) -> dict:
    """Requests at fixed times (rate per second), on one connection unless new_connection. Latency is
    counted from when each request was due, so a slow answer also delays the ones after it (no
    coordinated omission)."""
    ctx = client_context(cafile)
    conn = None
    lat, service, errors = [], [], 0
    t0 = time.perf_counter() + 0.5
    n = int(rate * seconds)
    for i in range(n):
        due = t0 + i / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.01))
        began = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors += 1
            if new_connection or resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            errors += 1
            if conn is not None:
                conn.close()
            conn = None
        end = time.perf_counter()
        lat.append(end - due)
        service.append(end - began)
    if conn is not None:
        conn.close()
    return {"requests": n, "errors": errors, "p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat),
            "service_p50": pct(service, 50), "service_p99": pct(service, 99), "seconds": seconds, "rate": rate}


class Abuse:
    """The LAN and channel abuse of tests/system/test_abuse_*.py, held as long as the benchmark wants: 50
    slow-header clients and 20 idle TCP connections (reopened as the server drops them) from 127.0.0.3,
    wrong passwords from 127.0.0.2 back to back (answered 429 after the first ten), and undecodable
    datagrams to the LAN's channel socket at `channel_rate` a second."""

    def __init__(self, stack: BenchStack, slow: int = 50, idle: int = 20, channel_rate: float = 1000.0):
        self.s, self.n_slow, self.n_idle, self.channel_rate = stack, slow, idle, channel_rate
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._held, self._guess, self._channel)]
        self.counts = {"slow_bytes": 0, "idle_opened": 0, "guesses": 0, "channel_sent": 0, "channel_full": 0}

    def __enter__(self) -> "Abuse":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.s.port), timeout=10, source_address=("127.0.0.3", 0))

    def _held(self) -> None:
        ctx = client_context(self.s.cafile)
        slow, idle = [], []
        try:
            for _ in range(self.n_slow):
                tls = ctx.wrap_socket(self._connect())
                tls.sendall(b"GET /api/v1/current HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
                slow.append(tls)
            for _ in range(self.n_idle):
                idle.append(self._connect())
                self.counts["idle_opened"] += 1
            while not self.stop_event.wait(1.0):
                for i, tls in enumerate(slow):
                    try:
                        tls.sendall(b"a")
                        self.counts["slow_bytes"] += 1
                    except OSError:              # the server's header limit, after hours: start again
                        tls.close()
                        slow[i] = ctx.wrap_socket(self._connect())
                        slow[i].sendall(b"GET / HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
                for i, sock in enumerate(idle):
                    sock.setblocking(False)
                    try:
                        closed = sock.recv(1) == b""
                    except BlockingIOError:
                        closed = False
                    except OSError:
                        closed = True
                    if closed:
                        sock.close()
                        idle[i] = self._connect()
                        self.counts["idle_opened"] += 1
        finally:
            for sock in slow + idle:
                sock.close()

    def _guess(self) -> None:
        ctx = client_context(self.s.cafile)
        bad = "Basic " + base64.b64encode(f"{self.s.username}:wrong".encode()).decode()
        conn = None
        while not self.stop_event.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPSConnection("127.0.0.1", self.s.port, context=ctx, timeout=30,
                                                       source_address=("127.0.0.2", 0))
                conn.request("GET", "/api/v1/current", headers={"Authorization": bad})
                conn.getresponse().read()
                self.counts["guesses"] += 1
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.stop_event.wait(0.01)
        if conn is not None:
            conn.close()

    def _channel(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        path = str(self.s.lan_socket)
        step = 0.01
        per_step = max(1, int(self.channel_rate * step))
        while not self.stop_event.wait(step):
            for _ in range(per_step):
                try:
                    sock.sendto(b"\xc1bench-garbage", path)
                    self.counts["channel_sent"] += 1
                except (BlockingIOError, FileNotFoundError, ConnectionRefusedError):
                    self.counts["channel_full"] += 1
        sock.close()


# ---- RESULTS.md ------------------------------------------------------------------------------------
HEADING = "## Robustness and performance (issue 6)"


def write_section(text: str, path: Path = BENCH / "RESULTS.md", heading: str = HEADING) -> None:
    """Replace a script's own section (from its heading to the next '## ') and leave every other
    section as it is, in place."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n"
    body = text.rstrip("\n") + "\n"
    if heading in old:
        before, rest = old.split(heading, 1)
        nxt = rest.find("\n## ")
        after = rest[nxt + 1:] if nxt >= 0 else ""
        new = before + body + ("\n" + after if after else "")
    else:
        new = old.rstrip("\n") + "\n\n" + body
    path.write_text(new)


def run_for(seconds: float, every: float, action: Callable[[], None], stop: threading.Event | None = None):
    """Call action every `every` seconds for `seconds` (a sampler)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (stop and stop.is_set()):
        action()
        time.sleep(min(every, max(0.0, end - time.monotonic())))
