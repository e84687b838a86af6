"""A whole gateway on one machine: emulator + `openseg-han` + `openseg-lan`, for `make run` and tests.

Every piece is started as the real console command, exactly as a user or systemd would start it, so the
stack exercises the real serial path over a pty, the real channel socket and real TLS. `make run` uses
the production poll interval; tests pass a short one (the config then gets `allow_fast_poll = true`).

    python -m openseg_emulator.devstack --dir run     # what `make run` does
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from importlib.resources import files
from pathlib import Path
from typing import Callable

from openseg.shared_schema.text_file import TextFileError, parse_toml, read_text

from .run_lock import Busy, RunLock

BIN = Path(sys.executable).parent
# The environment of openseg-lan, the same as deploy/openseg-lan.service sets (a test checks they
# agree; the unit says why). glibc malloc: at most 2 arenas instead of 8 per CPU, one per busy worker
# thread, and blocks of 128 KiB or more (a day's JSON, a Download My Data) mmap'ed and returned when
# freed. OPENSSL_CONF: the LAN's OpenSSL configuration, its TLS key-exchange groups (X25519, P-256,
# P-384; openseg/lan_server/http/tls.py says why not in code), found as the package's data file without
# importing the LAN's code (.importlinter).
LAN_OPENSSL_CONF = str(files("openseg") / "lan_server" / "http" / "openssl.cnf")
LAN_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
                   "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "OPENSSL_CONF": LAN_OPENSSL_CONF}


def command(name: str) -> str:
    """The console script installed beside this interpreter (the venv), else the one on PATH."""
    local = BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dump_toml(data: dict) -> str:
    """Enough TOML for the flat gateway.toml (sections of strings, numbers and booleans)."""
    lines = []
    for section, table in data.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, float):
                # 15 significant digits, as a person wrote it: 7 * 0.4 is 2.8, not 2.8000000000000003.
                text = repr(float(f"{value:.15g}"))
            elif isinstance(value, int):
                text = repr(value)
            elif isinstance(value, str):
                text = json.dumps(value)     # a JSON string is a valid TOML basic string
            else:
                raise TypeError(f"{section}.{key}: cannot write {type(value).__name__}")
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Stack:
    """Starts and stops emulator, HAN and LAN in `workdir`; a context manager for tests."""

    def __init__(self, workdir: Path | str, *, poll_interval_s: float = 7.0,
                 response_timeout_s: float | None = None, emulator_args: list[str] | tuple = (),
                 lan_port: int | None = None, han_overrides: dict | None = None,
                 lan_overrides: dict | None = None, capture_logs: bool = True,
                 load_w: float | None = None):
        self.workdir = Path(workdir).resolve()
        self.gateway_dir = self.workdir / "gateway"
        self.config_path = self.gateway_dir / "gateway.toml"
        self.link = self.workdir / "xbee"
        self.frame_log = self.workdir / "frames.jsonl"
        self.load_file = self.workdir / "load_w"
        self.log_dir = self.workdir / "logs"
        self.poll_interval_s = poll_interval_s
        self.response_timeout_s = response_timeout_s or min(3.0, poll_interval_s * 0.4)
        self.emulator_args = list(emulator_args)
        self.lan_port = lan_port
        self.han_overrides = han_overrides or {}
        self.lan_overrides = lan_overrides or {}
        self.capture_logs = capture_logs
        self.load_w = load_w      # None: the emulator's household profile; else a load set_load_w changes
        self.emulator: subprocess.Popen | None = None
        self.han: subprocess.Popen | None = None
        self.lan: subprocess.Popen | None = None
        self.login: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self._init_gateway()
        self.start_emulator()
        self.start_lan()
        self.start_han()

    def stop(self) -> None:
        for name in ("han", "lan", "emulator"):
            self._stop(name)

    def _init_gateway(self) -> None:
        login_file = self.workdir / "login.json"
        if not self.config_path.exists():
            port = self.lan_port or free_port()
            out = subprocess.run(
                [command("openseg-admin"), "init", "--dir", str(self.gateway_dir), "--serial",
                 str(self.link), "--lan-port", str(port)],
                check=True, capture_output=True, text=True, timeout=60).stdout
            login = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
            missing = {"url", "username", "password", "subscription"} - login.keys()
            if missing:
                raise RuntimeError(f"openseg-admin init printed no {', '.join(sorted(missing))}: {out!r}")
            # Dev convenience only: the password is kept so `make run` can show it again.
            fd = os.open(login_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(login, f)
        try:
            self.login = json.loads(read_text(str(login_file), "devstack login file"))
        except ValueError as exc:       # TextFileError is one; json's JSONDecodeError another
            raise TextFileError(f"{login_file}: not the login `openseg-admin init` printed ({exc}); "
                                f"delete {self.workdir} to start afresh") from None
        cfg = parse_toml(read_text(str(self.config_path), "config file"), str(self.config_path))
        if self.lan_port is not None and cfg.get("lan", {}).get("port") != self.lan_port:
            # A port asked for on a folder made earlier with another one: the config and the login
            # the banner shows both follow.
            cfg.setdefault("lan", {})["port"] = self.lan_port
            url = urllib.parse.urlsplit(self.login["url"])
            self.login["url"] = url._replace(netloc=f"{url.hostname}:{self.lan_port}").geturl()
            fd = os.open(login_file, os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.login, f)
        han = cfg.setdefault("han", {})
        han.update({"serial_port": str(self.link), "poll_interval_s": float(self.poll_interval_s),
                    "response_timeout_s": float(self.response_timeout_s)})
        if self.poll_interval_s < 7.0:
            han["allow_fast_poll"] = True
        han.update(self.han_overrides)
        cfg.setdefault("lan", {}).update(self.lan_overrides)
        self.config_path.write_text(dump_toml(cfg))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        stderr = open(self.log_dir / f"{name}.log", "ab") if self.capture_logs else None
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr or None,
                                    stderr=stderr or None, start_new_session=True,
                                    env={**os.environ, **env} if env else None)
        finally:
            if stderr:
                stderr.close()

    def _stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = getattr(self, name)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        setattr(self, name, None)

    def start_emulator(self) -> None:
        argv = [command("openseg-emulator"), "--link", str(self.link), "--frame-log", str(self.frame_log)]
        if self.load_w is not None:
            if not self.load_file.exists():
                self.load_file.write_text(f"{self.load_w}\n")
            argv += ["--load-file", str(self.load_file)]
        self.emulator = self._spawn("emulator", argv + self.emulator_args)
        wait_until(lambda: self.link.exists() or self._died("emulator"), 15, "the emulator's pty link")
        self._died("emulator", raise_=True)

    def start_lan(self) -> None:
        self.lan = self._spawn("lan", [command("openseg-lan"), "--config", str(self.config_path)],
                               env=LAN_ENVIRONMENT)
        wait_until(lambda: self._port_open() or self._died("lan"), 30, "openseg-lan to listen")
        self._died("lan", raise_=True)

    def start_han(self) -> None:
        self.han = self._spawn("han", [command("openseg-han"), "--config", str(self.config_path)])

    def stop_han(self, sig: int = signal.SIGTERM) -> None:
        self._stop("han", sig)

    def stop_lan(self, sig: int = signal.SIGTERM) -> None:
        self._stop("lan", sig)

    def signal_emulator(self, sig: int) -> None:
        assert self.emulator is not None
        self.emulator.send_signal(sig)

    def set_load_w(self, watts: float) -> None:
        """Change the emulated load (the emulator re-reads the file on SIGHUP); needs load_w=."""
        if self.load_w is None:
            raise RuntimeError("start the Stack with load_w= to be able to change the load")
        self.load_file.write_text(f"{watts}\n")
        self.signal_emulator(signal.SIGHUP)

    def _died(self, name: str, raise_: bool = False) -> bool:
        proc = getattr(self, name)
        dead = proc is None or proc.poll() is not None
        if dead and raise_:
            log = (self.log_dir / f"{name}.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{name} exited early (code {proc and proc.returncode}):\n{tail}")
        return dead

    def _port_open(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    # -- client side -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.login["url"].rstrip("/")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def username(self) -> str:
        return self.login["username"]

    @property
    def password(self) -> str:
        return self.login["password"]

    @property
    def subscription(self) -> str:
        return self.login["subscription"]

    @property
    def cafile(self) -> str:
        """The served chain (the server certificate and the CA's): a trust anchor for the tests."""
        return str(self.gateway_dir / "tls" / "cert.pem")

    @property
    def ca_certificate(self) -> str:
        """What a device imports once to trust this gateway, across certificate renewals."""
        return str(self.gateway_dir / "ca.pem")

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cafile)
        ctx.check_hostname = False     # the dev certificate names localhost; we connect by address
        return ctx

    def get(self, path: str, *, auth: tuple[str, str] | None = None,
            timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        user, password = auth or (self.username, self.password)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ssl_context(),
                                           timeout=timeout)
        try:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            conn.request("GET", path, headers={"Authorization": f"Basic {token}"})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> tuple[int, dict]:
        status, _, body = self.get(path)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {}

    def frames(self) -> list[dict]:
        if not self.frame_log.exists():
            return []
        return [json.loads(line) for line in self.frame_log.read_text().splitlines() if line.strip()]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run emulator + openseg-han + openseg-lan together.")
    parser.add_argument("--dir", default="run", help="working folder (created once, then reused)")
    parser.add_argument("--poll-interval", type=float, default=7.0, help="seconds between meter reads")
    parser.add_argument("--lan-port", type=int, metavar="N",
                        help="HTTPS port (default 8443, or what the folder was made with); also changes "
                             "an existing folder's config")
    args = parser.parse_args(argv)
    if args.lan_port is not None and not 1 <= args.lan_port <= 65535:
        parser.error("--lan-port: must be a TCP port 1-65535")
    folder = Path(args.dir)
    lock = RunLock(folder)
    try:
        lock.acquire()
    except Busy as exc:
        print(f"OpenSEG is already running in {folder}/ (process {exc.pid}); this run changed nothing.\n"
              f"Stop that one (Ctrl-C where it runs), or run a second one in another folder on another "
              f"port: make run RUNDIR=run2 PORT=8444", file=sys.stderr)
        return 1
    try:
        return _run(folder, args)
    finally:
        lock.release()


def _run(folder: Path, args: argparse.Namespace) -> int:
    config = folder / "gateway" / "gateway.toml"
    port = args.lan_port
    if port is None:
        try:
            cfg = parse_toml(read_text(str(config), "config file"), str(config)) if config.exists() else {}
            port = cfg.get("lan", {}).get("port", 8443)
        except TextFileError as exc:
            print(f"devstack: {exc}", file=sys.stderr)
            return 2
    if port_in_use(port):
        print(f"Port {port} is in use by another program. Pick another: make run PORT=8444 "
              f"(or python -m openseg_emulator.devstack --dir {folder} --lan-port 8444)", file=sys.stderr)
        return 1
    # A household with solar panels, so the page shows energy exported around midday as well. The
    # meter's registers carry on from the last run; the processes' logs go to files, so the console
    # keeps only the banner below.
    stack = Stack(folder, poll_interval_s=args.poll_interval, lan_port=port,
                  emulator_args=["--solar", "--state-file", str(folder.resolve() / "meter-state.json")])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        stack.start()
    except TextFileError as exc:
        stack.stop()
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        stack.stop()        # the process at fault said why in its log, whose end this holds
        print(f"devstack: OpenSEG did not start: {str(exc).strip()}\nThe logs are in {stack.log_dir}/.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stack.stop()
        return 130
    except BaseException:
        stack.stop()
        raise
    try:
        print(f"\nOpenSEG is running (emulated meter on {stack.link}).", flush=True)
        print(f"  url:          {stack.url}/")
        print(f"  username:     {stack.username}")
        print(f"  password:     {stack.password}")
        print(f"  subscription: {stack.subscription}")
        print(f"  certificate:  {stack.ca_certificate} (the gateway's CA: import it once to trust the page)")
        print(f"\n  curl --cacert {stack.ca_certificate} -u {stack.username}:{stack.password} \\\n"
              f"       {stack.url}/espi/1_1/resource/Batch/Subscription/{stack.subscription}")
        print(f"\nThe login is kept in {folder}/login.json; the logs are in {stack.log_dir}/ "
              "(emulator.log, han.log, lan.log).")
        print("Ctrl-C stops everything.\n", flush=True)
        while not stop:
            for name in ("emulator", "lan", "han"):
                proc = getattr(stack, name)
                if proc is not None and proc.poll() is not None:
                    print(f"{name} exited with code {proc.returncode}; stopping "
                          f"(see {stack.log_dir}/{name}.log)", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
