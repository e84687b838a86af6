"""A real `openseg-lan` (console script, real TLS, real channel socket) driven by http.client and curl:
authentication, throttling, subscriptions, hardening, and the process's own behaviour (config errors,
signals, sockets it opens, logs, sd_notify)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.support.lan_fixtures import (DEFAULT, LAN_ENVIRONMENT, LanServer, basic_auth, command, fresh_lan, lan,  # noqa: F401
                                        run_admin, wait_until)
from openseg.lan_server.accounts import certs
from openseg.lan_server import main as lan_main
from openseg.shared_schema import config as config_schema

PAGE_PATHS = ["/", "/api/v1/current", "/api/v1/status", "/api/v1/history", "/api/v1/whoami"]
SECURITY = {"strict-transport-security", "x-content-type-options", "x-frame-options",
            "content-security-policy", "referrer-policy"}


def espi_batch(sub: str) -> str:
    return f"/espi/1_1/resource/Batch/Subscription/{sub}"


def curl_status(lan, path, *args, auth=DEFAULT) -> str:
    out = lan.curl("--output", "/dev/null", "--write-out", "%{http_code}", *args,
                   f"https://127.0.0.1:{lan.port}{path}", auth=auth)
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- authentication ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PAGE_PATHS + ["/static/app.css", "/nothing", "/espi/1_1/resource/ReadingType/1"])
def test_401_without_credentials(lan, path):
    status, headers, body = lan.request(path, auth=None)
    assert status == 401
    assert headers["www-authenticate"].startswith('Basic realm="OpenSEG"')
    assert b"Traceback" not in body


def test_401_with_wrong_credentials_then_200_with_right_ones(lan):
    assert lan.request("/api/v1/current", auth=(lan.username, "wrong-password"), source="127.0.0.3")[0] == 401
    assert lan.request("/api/v1/current", auth=("nobody", "wrong-password"), source="127.0.0.3")[0] == 401
    status, headers, body = lan.request("/api/v1/current")
    assert status == 200
    data = json.loads(body)
    assert {"demand_w", "summation_wh", "received_wh", "time", "age_s", "status"} <= data.keys()


def test_curl_401_and_200(lan):
    assert curl_status(lan, "/api/v1/current", auth=None) == "401"
    assert curl_status(lan, "/api/v1/current", "--interface", "127.0.0.3",
                       auth=(lan.username, "not-the-password")) == "401"
    assert curl_status(lan, "/api/v1/current") == "200"
    out = lan.curl(f"https://127.0.0.1:{lan.port}/api/v1/status")
    assert out.returncode == 0 and "queries_total" in json.loads(out.stdout)


def test_throttle_429_per_address_while_the_user_gets_in_from_elsewhere(fresh_lan):
    lan = fresh_lan
    wrong = (lan.username, "not-the-password")
    statuses = []
    for _ in range(30):                       # the address limit is 10 per 10 minutes; stop at the first 429
        status, headers, _ = lan.request("/api/v1/current", auth=wrong, source="127.0.0.1")
        statuses.append(status)
        if status == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401} and len(statuses) == 11, statuses
    assert int(headers["retry-after"]) > 0
    assert SECURITY <= headers.keys()
    # The throttle answers before the password is checked, so even the right one is turned away here ...
    assert lan.request("/api/v1/current", source="127.0.0.1")[0] == 429
    assert curl_status(lan, "/api/v1/current", "--interface", "127.0.0.1") == "429"
    # ... while the same user from another address gets in, by http.client and by curl.
    assert lan.request("/api/v1/current", source="127.0.0.2")[0] == 200
    assert curl_status(lan, "/api/v1/current", "--interface", "127.0.0.4") == "200"


def test_subscriptions_are_separate_and_new_users_need_no_restart(lan):
    bob = lan.add_user("bob-sub", subscription="bobs-sub")
    bob_auth = (bob["username"], bob["password"])
    wait_until(lambda: lan.request("/api/v1/current", auth=bob_auth)[0] == 200, 10, "the new user to be accepted")
    # own subscription: not 401/403/404 (200 once there is data; 503 while there is none is fine)
    for auth, sub in ((None, lan.subscription), (bob_auth, "bobs-sub")):
        kw = {} if auth is None else {"auth": auth}
        status = lan.request(f"/espi/1_1/resource/Subscription/{sub}/UsagePoint", **kw)[0]
        assert status == 200, status
        assert lan.request(espi_batch(sub), **kw)[0] == 200
    # the other's: refused
    assert lan.request(espi_batch("bobs-sub"))[0] in (403, 404)
    assert lan.request(espi_batch(lan.subscription), auth=bob_auth)[0] in (403, 404)
    assert lan.request(f"/espi/1_1/resource/Subscription/{lan.subscription}/UsagePoint", auth=bob_auth)[0] in (403, 404)
    assert curl_status(lan, espi_batch(lan.subscription), auth=bob_auth) in ("403", "404")
    assert json.loads(lan.request("/api/v1/whoami", auth=bob_auth)[2])["subscription"] == "bobs-sub"
    assert lan.request("/espi/1_1/resource/NoSuchThing/1")[0] == 404


def test_a_doubled_slash_inside_a_path_is_the_same_path(lan):
    """CherryPy's tree joins the path with httputil.urljoin, which collapses '//' (main.configure_http
    keeps the tree for that): a client that doubles a slash gets the answer to the path with one, not a
    404, and not a 403 for its own subscription."""
    for path, doubled in (("/api/v1/whoami", "/api//v1/whoami"),
                          (f"/espi/1_1/resource/Subscription/{lan.subscription}/UsagePoint",
                           f"/espi/1_1/resource/Subscription//{lan.subscription}/UsagePoint")):
        status, _, body = lan.request(path)
        assert status == 200
        assert lan.request(doubled)[::2] == (200, body), doubled


def test_password_change_and_removal_take_effect_without_restart(lan):
    user = lan.add_user("carol-tmp")
    old = (user["username"], user["password"])
    wait_until(lambda: lan.request("/api/v1/current", auth=old)[0] == 200, 10, "the new user to be accepted")
    out = run_admin("user", "passwd", user["username"], "--config", str(lan.config))
    assert out.returncode == 0
    new = (user["username"], out.stdout.split("password: ")[1].strip())
    wait_until(lambda: lan.request("/api/v1/current", auth=new)[0] == 200, 10, "the new password")
    assert lan.request("/api/v1/current", auth=old, source="127.0.0.5")[0] == 401     # despite the cache
    assert run_admin("user", "remove", user["username"], "--config", str(lan.config)).returncode == 0
    wait_until(lambda: lan.request("/api/v1/current", auth=new, source="127.0.0.5")[0] == 401, 10,
               "the removed user to be refused")


# -- what every answer carries ----------------------------------------------------------------------------
def test_hardening_headers_and_no_version(lan):
    for path in PAGE_PATHS + ["/nothing", espi_batch(lan.subscription)]:
        status, headers, body = lan.request(path)
        assert SECURITY <= headers.keys(), path
        assert headers["server"] == "OpenSEG"
        assert not re.search(r"cherrypy|cheroot|python", json.dumps(headers), re.I)
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        if path != "/":
            assert headers["cache-control"] == "no-store", path


def test_page_and_static_files(lan):
    status, headers, body = lan.request("/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b"<html" in body.lower() or b"<!doctype" in body.lower()
    status, headers, _ = lan.request("/static/app.css")
    assert status == 200 and headers["content-type"] == "text/css; charset=utf-8"
    for bad in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/.hidden",
                "/static/", "/static/../../gw/users.toml"):
        assert lan.request(bad)[0] == 404, bad
    assert curl_status(lan, "/static/..%2f..%2fusers.toml", "--path-as-is") == "404"


def test_download_my_data(lan):
    status, headers, body = lan.request(espi_batch(lan.subscription) + "?download=1")
    assert status == 200 and headers["content-type"].startswith("application/atom+xml")
    assert headers["content-disposition"] == f'attachment; filename="openseg-{lan.subscription}.xml"'
    assert body.lstrip().startswith(b"<?xml")


def test_head_and_other_methods(lan):
    status, headers, body = lan.request("/api/v1/current", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert lan.request("/api/v1/current", method="DELETE")[0] == 405
    assert lan.request("/api/v1/current", method="DELETE", auth=None)[0] == 401


def test_size_limits(lan):
    status, _, _ = lan.request("/api/v1/current", headers={"X-Big": "a" * 40_000})
    assert status in (400, 413, 431)
    # A body larger than the limit is refused from its Content-Length, before it is read.
    with socket.create_connection(("127.0.0.1", lan.port), timeout=10) as raw:
        with lan.ssl_context().wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"POST /api/v1/current HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                      b"Authorization: " + basic_auth(lan.username, lan.password).encode() + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 413")
    assert lan.request("/api/v1/current")[0] == 200          # and the server is fine afterwards


def test_plain_http_on_the_https_port(lan):
    with socket.create_connection(("127.0.0.1", lan.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = s.recv(500)
    assert answer.startswith(b"HTTP/1.1 400") and b"HTTPS" in answer


def test_log_lines_are_one_event_each(lan):
    lan.request("/api/v1/current")
    wait_until(lambda: f'{lan.username} "GET /api/v1/current" 200' in lan.log_text(), 10,
               "the request's access line (written within a tenth of a second)")
    lines = lan.log_text().splitlines()
    assert lines
    pattern = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: .*")
    bad = [line for line in lines if not pattern.fullmatch(line)]
    assert not bad, bad[:3]
    assert any(f'{lan.username} "GET /api/v1/current" 200' in line for line in lines)
    assert lan.password not in lan.log_text()


# -- the process ------------------------------------------------------------------------------------------
def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _sockets_of(pid: int) -> list[tuple[str, str]]:
    """(kind, description) for each socket the process holds."""
    inodes = _socket_inodes(pid)
    found = []
    for kind in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        with open(f"/proc/{pid}/net/{kind}") as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    found.append((kind, f"{cols[1]} state={cols[3]}"))
    with open(f"/proc/{pid}/net/unix") as f:
        for line in list(f)[1:]:
            cols = line.split()
            if cols[6] in inodes:
                found.append(("unix", cols[7] if len(cols) > 7 else "(unnamed)"))
    return found


def test_opens_only_its_tls_socket_and_the_channel_socket(fresh_lan):
    lan = fresh_lan
    socket_path = config_schema.load(str(lan.config)).channel["socket_path"]
    listen = f"0100007F:{lan.port:04X} state=0A"          # 127.0.0.1:port, TCP_LISTEN

    def settled():
        found = _sockets_of(lan.proc.pid)
        return found if sorted(found) == sorted([("tcp", listen), ("unix", socket_path)]) else None

    try:
        wait_until(settled, 10, "only the listening socket and the channel socket")
    except TimeoutError:
        pytest.fail(f"sockets held: {_sockets_of(lan.proc.pid)}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signals(fresh_lan, sig):
    lan = fresh_lan
    socket_path = config_schema.load(str(lan.config)).channel["socket_path"]
    assert os.path.exists(socket_path)
    started = time.monotonic()
    assert lan.stop(sig) == 0
    assert time.monotonic() - started < 10
    assert not os.path.exists(socket_path)
    assert "stopped" in lan.log_text().splitlines()[-1]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", lan.port), timeout=2).close()


def run_lan(config: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([command("openseg-lan"), "--config", config], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def installation(tmp_path_factory):
    d = tmp_path_factory.mktemp("inst")
    out = run_admin("init", "--dir", str(d / "gw"))
    assert out.returncode == 0
    return d / "gw"


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("port = 8443", 'port = "8443"'), "[lan] port"),
    (lambda t: t.replace("port = 8443", "port = 8443\nbogus = 1"), "[lan] bogus"),
    (lambda t: t.replace('bind = "127.0.0.1"', 'bind = "my-host"'), "[lan] bind"),
    (lambda t: t.replace('users_file = "users.toml"', 'users_file = "nope.toml"'), "[lan] users_file"),
    (lambda t: t.replace('certificate = "tls/cert.pem"', 'certificate = "tls/none.pem"'), "none.pem"),
    (lambda t: t.replace('private_key = "tls/key.pem"', 'private_key = "tls/cert.pem"'), "certificate"),
    (lambda t: t + "\n[lan2]\n", "[lan2]"),
])
def test_config_problems_exit_2_naming_the_key(installation, tmp_path, edit, needle):
    cfg = installation / f"bad-{tmp_path.name}.toml"
    cfg.write_text(edit((installation / "gateway.toml").read_text()))
    try:
        out = run_lan(str(cfg))
    finally:
        cfg.unlink()
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_config_file_and_port_in_use(installation, tmp_path):
    out = run_lan(str(tmp_path / "none.toml"))
    assert out.returncode == 2 and "no such config file" in out.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        text = (installation / "gateway.toml").read_text()
        cfg = installation / "busy.toml"
        cfg.write_text(text.replace("port = 8443", f"port = {busy.getsockname()[1]}"))
        try:
            out = run_lan(str(cfg))
        finally:
            cfg.unlink()
    assert out.returncode == 2 and "[lan] port" in out.stderr


def test_unreadable_openssl_conf_exits_2_naming_it(installation, tmp_path):
    # OpenSSL itself would quietly fall back to its default groups
    out = run_lan(str(installation / "gateway.toml"), env={"OPENSSL_CONF": str(tmp_path / "none.cnf")})
    assert out.returncode == 2, out.stderr
    assert out.stderr == f"openseg-lan: TLS: OPENSSL_CONF={tmp_path / 'none.cnf'}: cannot read: " \
                         f"No such file or directory\n"


def test_start_up_log_names_where_the_tls_groups_come_from(lan, tmp_path):
    assert f"TLS key-exchange groups: OPENSSL_CONF={LAN_ENVIRONMENT['OPENSSL_CONF']}" in lan.log_text()


def test_start_up_log_names_the_malloc_settings(lan):
    assert (f"glibc malloc: MALLOC_ARENA_MAX={LAN_ENVIRONMENT['MALLOC_ARENA_MAX']} "
            f"MALLOC_MMAP_THRESHOLD_={LAN_ENVIRONMENT['MALLOC_MMAP_THRESHOLD_']} "
            f"GLIBC_TUNABLES={LAN_ENVIRONMENT['GLIBC_TUNABLES']}") in lan.log_text()


class NotifySocket:
    """Stands in for systemd's notify socket."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def next(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(200).decode()
        except socket.timeout:
            return None

    def close(self):
        self.sock.close()


def test_warns_about_secrets_readable_by_others(tmp_path):
    server = LanServer(tmp_path)
    key = config_schema.load(str(server.config)).lan["private_key"]
    os.chmod(key, 0o644)
    with server:
        log = server.log_text()
    assert re.search(r"WARNING openseg.lan: TLS private key .*key.pem is readable by other users", log), log


def test_warns_when_the_certificate_is_about_to_expire(tmp_path):
    server = LanServer(tmp_path)
    lan_cfg = config_schema.load(str(server.config)).lan
    key_pem, cert_pem = certs.make_identity(days=10)
    with open(lan_cfg["private_key"], "wb") as f:
        f.write(key_pem)
    with open(lan_cfg["certificate"], "wb") as f:
        f.write(cert_pem)
    with server:
        assert server.request("/api/v1/current")[0] == 200
    assert re.search(r"WARNING openseg.lan: TLS certificate .* expires on .*openseg-admin cert renew",
                     server.log_text()), server.log_text()


def test_access_lines_of_the_last_requests_are_written_at_stop(tmp_path):
    """The access log's writer holds lines for up to a tenth of a second; a SIGTERM right after a
    burst of requests still finds every one of them in the log (main closes the access log)."""
    server = LanServer(tmp_path)
    server.start()
    try:
        paths = [f"/api/v1/current?n={i}" for i in range(20)]
        for path in paths:
            server.request(path)
    finally:
        assert server.stop() == 0
    text = server.log_text()
    assert text.count('"GET /api/v1/current" 200') == len(paths), text[-2000:]


def test_sd_notify_ready_watchdog_stopping(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    server = LanServer(tmp_path)
    try:
        server.start(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"})
        first = notify.next(20)
        assert first.startswith("READY=1\n") and "STATUS=serving HTTPS" in first
        # Access lines reach the log in order, within a tenth of a second (http/access_log.py): once a
        # request's own line is there, so is every line before it.
        assert server.request("/api/v1/status")[0] == 200
        wait_until(lambda: '"GET /api/v1/status" 200' in server.log_text(), 10, "the status request's line")
        unauthenticated = server.log_text().count('"GET /" 401')      # the fixture's readiness checks
        pings = [notify.next(5) for _ in range(3)]               # probe + receiver fine: pings every ~0.5 s
        assert pings == ["WATCHDOG=1"] * 3
        assert server.request("/api/v1/current")[0] == 200
        wait_until(lambda: '"GET /api/v1/current" 200' in server.log_text(), 10, "the current request's line")
        assert server.log_text().count('"GET /" 401') == unauthenticated    # probes are not logged
    finally:
        assert server.stop() == 0
        rest = []
        while (message := notify.next(5)) is not None and message != "STOPPING=1":
            rest.append(message)
        notify.close()
    assert message == "STOPPING=1", rest


def test_watchdog_is_withheld_while_requests_cannot_get_through(tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    server = LanServer(tmp_path)
    hogs = []
    try:
        server.start(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"})
        assert notify.next(20).startswith("READY=1")
        assert notify.next(5) == "WATCHDOG=1"
        # More silent connections than worker threads: each holds a worker until the handshake
        # timeout, so nothing else gets through meanwhile and the watchdog must not be fed. (Opening
        # more than the listen backlog at once can take a SYN retry, ~1 s: the silence is measured
        # from the pings themselves, not from when the last connection was open.)
        began = time.monotonic()
        hogs = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(lan_main.THREAD_POOL + 8)]
        pings = [began]
        while time.monotonic() < began + 5:
            if notify.next(0.1) == "WATCHDOG=1":
                pings.append(time.monotonic())
        pings.append(time.monotonic())
        silence = max(b - a for a, b in zip(pings, pings[1:]))
        assert silence > 2.5, pings                           # > one WatchdogSec without a ping
        wait_until(lambda: "withholding the watchdog" in server.log_text(), 10, "the unhealthy log line")
        for s in hogs:
            s.close()
        assert notify.next(15) == "WATCHDOG=1"                # pings resume once workers are free
        wait_until(lambda: "healthy again" in server.log_text(), 10, "the recovery log line")
    finally:
        for s in hogs:
            s.close()
        server.stop()
        notify.close()
