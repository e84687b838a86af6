"""A real `openseg-lan` for tests: `openseg-admin init` into a temp folder, start the console script on a
free 127.0.0.1 port, wait (deadline-bounded) until it answers HTTPS, stop it with SIGTERM afterwards.

Reusable by any test module:

    from tests.support.lan_fixtures import lan, fresh_lan, LanServer    # noqa: F401  (pytest fixtures)

    def test_something(lan):                  # one server per module
        status, headers, body = lan.request("/api/v1/current")

`lan.request()` uses Python's http.client over a verifying TLS context (the installation's own
certificate as the only trust anchor); `lan.curl()` runs /usr/bin/curl the same way.
"""
from __future__ import annotations

import base64
import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from openseg_emulator.devstack import LAN_ENVIRONMENT, command, free_port, wait_until  # noqa: F401 (tests import them from here)

BIN = Path(sys.executable).parent
CURL = shutil.which("curl")
DEFAULT = object()


def run_admin(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([command("openseg-admin"), *args], input=input, capture_output=True, text=True,
                          timeout=timeout)


def parse_fields(stdout: str) -> dict[str, str]:
    """`key: value` lines as printed by openseg-admin."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def require_curl() -> str:
    if CURL is None:
        pytest.skip("curl is not installed (Debian: apt-get install curl); `make test` installs it")
    return CURL


class LanServer:
    """One installation and one openseg-lan process on 127.0.0.1."""

    def __init__(self, workdir: Path | str, *, port: int | None = None):
        self.workdir = Path(workdir)
        self.dir = self.workdir / "gw"
        self.config = self.dir / "gateway.toml"
        self.cafile = str(self.dir / "tls" / "cert.pem")
        self.log_path = self.workdir / "openseg-lan.log"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        out = run_admin("init", "--dir", str(self.dir), "--lan-port", str(self.port))
        if out.returncode != 0:
            raise RuntimeError(f"openseg-admin init failed: {out.stderr}")
        login = parse_fields(out.stdout)
        self.url = login["url"]
        self.username, self.password = login["username"], login["password"]
        self.subscription = login["subscription"]

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "LanServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([command("openseg-lan"), "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True,
                                         env={**os.environ, **LAN_ENVIRONMENT, **(env or {})})
        finally:
            log.close()
        wait_until(lambda: self._answers() or self._died(), timeout, "openseg-lan to answer HTTPS")
        if self._died():
            raise RuntimeError(f"openseg-lan exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def _died(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def _answers(self) -> bool:
        try:
            status, _, _ = self.request("/", auth=None, timeout=2)
        except (OSError, http.client.HTTPException):
            return False
        return status == 401

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- clients ---------------------------------------------------------------------------------
    def ssl_context(self, **versions) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cafile)
        for attr, value in versions.items():
            setattr(ctx, attr, value)
        return ctx

    def connection(self, *, source: str | None = None, timeout: float = 10.0,
                   context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(host, self.port, context=context or self.ssl_context(),
                                           timeout=timeout, source_address=(source, 0) if source else None)

    def request(self, path: str, *, auth=DEFAULT, method: str = "GET", source: str | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0,
                host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body). auth: DEFAULT = the init user, None = none,
        or (user, password)."""
        if auth is DEFAULT:
            auth = (self.username, self.password)
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs["Authorization"] = basic_auth(*auth)
        conn = self.connection(source=source, timeout=timeout, host=host)
        try:
            conn.request(method, path, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def curl(self, *args: str, auth=DEFAULT, timeout: float = 30) -> subprocess.CompletedProcess:
        curl = require_curl()
        argv = [curl, "--silent", "--show-error", "--cacert", self.cafile, "--max-time", "20"]
        if auth is DEFAULT:
            auth = (self.username, self.password)
        if auth is not None:
            argv += ["--user", f"{auth[0]}:{auth[1]}"]
        return subprocess.run(argv + list(args), capture_output=True, text=True, timeout=timeout)

    def add_user(self, name: str, subscription: str | None = None) -> dict[str, str]:
        args = ["user", "add", name, "--config", str(self.config)]
        if subscription:
            args += ["--subscription", subscription]
        out = run_admin(*args)
        assert out.returncode == 0, out.stderr
        return parse_fields(out.stdout)


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    with LanServer(tmp_path_factory.mktemp("lan")) as server:
        yield server


@pytest.fixture
def fresh_lan(tmp_path):
    with LanServer(tmp_path) as server:
        yield server


def wait_for_channel(stack, count: int, timeout: float) -> None:
    """Until a devstack Stack's LAN has taken `count` channel messages from its HAN."""
    def enough():
        code, js = stack.get_json("/api/v1/status")
        return code == 200 and (js.get("channel") or {}).get("received", 0) >= count
    wait_until(enough, timeout, f"{count} channel messages from the HAN")
