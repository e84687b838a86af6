"""The gateway as installed and booted: a real systemd as PID 1, deploy/install-gateway, the real units.

tests/system/container.sh boots this machine's Debian (an overlay of its /, never written to) with
systemd as PID 1 of new namespaces; its network is loopback only. Inside, the test does what a
technician does: runs deploy/install-gateway (pip installs from a wheelhouse built once from PyPI,
because the container has no network), with an emulated radio on a pty at the radio's stable name
/dev/openseg-xbee, started as a unit the way the udev rule starts the HAN when a radio is plugged in.
Then it proves, at run time, each property SECURITY.md claims of the booted units, and logs each proof
(a "proof:" line in the test output and in tests/artifacts/system-boot.log).

The one change to an installed unit: a container has no udev, so no device unit for the HAN to bind
to; /etc/systemd/system/openseg-han.service is the installed unit with BindsTo= the device dropped and
ordered after the emulator instead (checked: no other line differs). Lab settings: a 0.5 s poll (so
that timing has enough samples in seconds), and, for the watchdog proof only, WatchdogSec=3 drop-ins.

Needs root and a kernel that lets it boot systemd in namespaces; anywhere else it fails with the reason.
"""
from __future__ import annotations

import configparser
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from openseg.lan_server.accounts import certs
from openseg.lan_server.main import THREAD_POOL
from tests.system.test_deploy_systemd import LAN_THREADS_BESIDE_THE_POOL
from tests.system.test_faults_witness import poll_reads, read_frames

pytestmark = [pytest.mark.integration, pytest.mark.system, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = ROOT / "tests" / "system" / "container.sh"
ARTIFACT = ROOT / "tests" / "artifacts" / "system-boot.log"
SRC = "/root/openseg"                        # inside: the source tree, as a technician's clone
WHEELS = "/root/wheels"
PROBE_DIR = "/usr/local/lib/openseg-probe"
PROBE = f"{PROBE_DIR}/probe.py"
PYTHON = "/opt/openseg/venv/bin/python"
ADMIN = "/opt/openseg/venv/bin/openseg-admin"
CONFIG = "/etc/openseg/gateway.toml"
CAFILE = "/etc/openseg/tls/cert.pem"
CA_PEM = "/etc/openseg/ca.pem"                 # what a phone or TV imports, once
INSTALL_CA = f"{PROBE_DIR}/ca-at-install.pem"  # a copy of it taken right after the first install
RENEW_UNIT, RENEW_TIMER = "openseg-cert-renew.service", "openseg-cert-renew.timer"
FRAME_LOG = "/run/openseg-emulator/frames.jsonl"
POLL_S = 0.2
SYSTEM_PYTHON = "/usr/bin/python3"             # deploy/install-gateway's interpreter
UNITS = ("openseg-lan.service", "openseg-han.service")
LIFECYCLE_KEYS = {"Type", "ExecStart", "NotifyAccess", "WatchdogSec", "Restart", "RestartSec",
                  "TimeoutStartSec"}

EMULATOR_UNIT = f"""[Unit]
Description=XBee SE radio and meter emulator on a pty at /dev/openseg-xbee (the system test's radio)
Before=openseg-han.service
# What the udev rule's SYSTEMD_WANTS does when the radio is plugged in.
Wants=openseg-han.service

[Service]
# It stands for the radio and the meter, hardware that shares no CPU with the gateway: under the test's
# flood it must not be what is late.
CPUWeight=1000
Nice=-15
RuntimeDirectory=openseg-emulator
ExecStart=/opt/openseg/venv/bin/openseg-emulator --link /dev/openseg-xbee --frame-log {FRAME_LOG}
# What the udev rule does for the real device: group dialout, mode 0660.
ExecStartPost=/bin/sh -c 'while [ ! -e /dev/openseg-xbee ]; do sleep 0.05; done; t=$$(readlink -f /dev/openseg-xbee); chgrp dialout $$t; chmod 0660 $$t'

[Install]
WantedBy=multi-user.target
"""


# ---- the wheelhouse: pip's downloads, once per dependency set ------------------------------------
def wheelhouse() -> Path:
    """Wheels of every dependency and of the build backend, built once from PyPI into .venv/ and
    reused while setup.cfg and pyproject.toml are unchanged (OpenSEG itself is built by the installer,
    from the source, every time). Built by the system's python3, the one the installer's venv uses
    inside, so that compiled wheels fit it whatever python runs the tests."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    requirements = [r.strip() for r in cfg["options"]["install_requires"].strip().splitlines()] + \
        ["setuptools>=68", "wheel"]
    key = hashlib.sha256("\n".join(requirements).encode() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    target = ROOT / ".venv" / f"system-test-wheels-{key}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        pip_venv = ROOT / ".venv" / "system-python"
        if not (pip_venv / "bin" / "pip").exists():
            made = subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(pip_venv)], capture_output=True, text=True)
            if made.returncode:
                pytest.fail(f"{SYSTEM_PYTHON} -m venv failed: {made.stderr.strip()[-500:]}")
        result = subprocess.run([str(pip_venv / "bin" / "pip"), "wheel", "--quiet", "--disable-pip-version-check",
                                 "--wheel-dir", str(target), *requirements],
                                capture_output=True, text=True, timeout=600)
        if result.returncode:
            pytest.fail(f"pip wheel (needs PyPI) failed: {result.stderr[-2000:]}")
        (target / ".complete").touch()
    return target


# ---- the booted machine ----------------------------------------------------------------------------
class Gateway:
    def __init__(self, state: Path):
        self.state = state
        self.env = {**os.environ, "OPENSEG_CONTAINER": str(state)}
        self.pid1 = 0
        self.login: dict[str, str] = {}
        self.first_install: subprocess.CompletedProcess | None = None
        self.probes = 0

    def script(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([str(CONTAINER), *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode:
            pytest.fail(f"container.sh {args[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def boot(self) -> None:
        self.pid1 = int(self.script("boot").split()[-1])

    def reboot(self) -> float:
        """Reboot; returns the host's monotonic time at which the new systemd started."""
        self.pid1 = int(self.script("reboot").split()[-1])
        return self.manager_started()

    def manager_started(self) -> float:
        return int(self.show(None, "UserspaceTimestampMonotonic")["UserspaceTimestampMonotonic"]) / 1e6

    def run(self, *argv: str, input: str | None = None, timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """argv inside the machine (all its namespaces), with a clean environment."""
        clean = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                 *[f"{k}={v}" for k, v in (env or {}).items()]]
        result = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *clean, *argv], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
        return result

    def path(self, inside: str) -> Path:
        """A path of the machine, seen from the host (through PID 1's root)."""
        return Path(f"/proc/{self.pid1}/root{inside}")

    def write(self, inside: str, text: str, mode: int = 0o644) -> None:
        target = self.path(inside)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def show(self, unit: str | None, *props: str) -> dict[str, str]:
        argv = ["systemctl", "show", *[f"--property={p}" for p in props]] + ([unit] if unit else [])
        return dict(line.split("=", 1) for line in self.run(*argv).stdout.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def probe(self, *args: str, user: str | None = None) -> dict:
        """tests/system/probe.py as root, or as USER with exactly its uid and groups (no sandbox)."""
        prefix = [] if user is None else ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        out = self.run(*prefix, PYTHON, PROBE, *args).stdout
        return json.loads(out.strip().splitlines()[-1])

    def sandboxed(self, unit: str, *args: str) -> dict:
        """probe.py inside a copy of UNIT's sandbox: every [Service] line of the file the running unit
        was loaded from, but its lifecycle (Type, ExecStart, watchdog, restart) one-shot."""
        fragment = self.show(unit, "FragmentPath")["FragmentPath"]
        sandbox, section = [], None
        for line in self.path(fragment).read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and line and not line.startswith("#") \
                    and line.split("=", 1)[0] not in LIFECYCLE_KEYS:
                sandbox.append(line)
        self.probes += 1
        name, out = f"openseg-probe-{self.probes}.service", f"/run/openseg-probe-{self.probes}.json"
        self.write(f"/run/systemd/system/{name}", "\n".join(
            ["[Service]", "Type=oneshot", f"ExecStart={PYTHON} {PROBE} {' '.join(args)}",
             f"StandardOutput=truncate:{out}", *sandbox]) + "\n")
        self.run("systemctl", "daemon-reload")
        self.run("systemctl", "start", name)
        return json.loads(self.path(out).read_text().strip().splitlines()[-1])

    def get(self, path: str, user: str | None = None, password: str | None = None) -> dict:
        return self.probe("get", path, user or self.login["username"], password or self.login["password"], CAFILE)

    def wait_serving(self, after: float = 0.0, timeout: float = 60) -> dict:
        """Until the LAN answers over HTTPS with a reading whose time tag is later than `after`."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.get("/api/v1/current")
            current = answer.get("json") or {}
            if answer.get("status") == 200 and current.get("status") == "ok" and \
                    _epoch(current["time"]) > after:
                return current
            if time.monotonic() > deadline:
                pytest.fail(f"no fresh reading over HTTPS within {timeout} s: {answer}; "
                            f"{self.run('systemctl', 'status', '--no-pager', *UNITS, check=False).stdout[-2000:]}")
            time.sleep(0.2)

    def wait_until(self, what: str, predicate, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout} s")
            time.sleep(0.1)
        return value

    def install(self, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """deploy/install-gateway as a technician runs it; pip finds everything in the wheelhouse."""
        pip = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS}
        result = self.run(f"{SRC}/deploy/install-gateway", "--serial", "/dev/openseg-xbee",
                          env={**pip, **(extra_env or {})}, timeout=400, check=False)
        if result.returncode:
            journal = self.run("journalctl", "--no-pager", "-n", "40", "-u", "openseg-lan", "-u", "openseg-han",
                               check=False).stdout
            pytest.fail(f"install-gateway exited {result.returncode}:\n{result.stdout}{result.stderr}\n{journal}")
        return result

    def history(self) -> list[dict]:
        answer = self.get("/api/v1/history?minutes=60")
        assert answer.get("status") == 200, answer
        return answer["json"]["points"]

    def frames(self) -> list[dict]:
        return read_frames(self.path(FRAME_LOG))


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _wall_of(monotonic_us: str) -> float:
    """A systemd ...TimestampMonotonic (this kernel's CLOCK_MONOTONIC: no time namespace) as epoch."""
    return time.time() - time.monotonic() + int(monotonic_us) / 1e6


def require_bootable() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (CI does)")
    for tool in ("unshare", "nsenter", "setsid", "setpriv"):
        if not shutil.which(tool):
            problems.append(f"{tool} missing (Debian: apt-get install util-linux)")
    if not os.access("/lib/systemd/systemd", os.X_OK):
        problems.append("/lib/systemd/systemd missing (Debian: apt-get install systemd)")
    if subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True).returncode:
        problems.append("python3 -m venv unavailable (Debian: apt-get install python3-venv)")
    if problems:
        pytest.fail("cannot boot the gateway's systemd: " + "; ".join(problems))


@pytest.fixture(scope="module")
def proof(request):
    """Logs one runtime proof: in the test output (even with -q) and in tests/artifacts/system-boot.log."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    ARTIFACT.parent.mkdir(exist_ok=True)
    log = ARTIFACT.open("w")

    def say(text: str) -> None:
        line = f"proof: {text}"
        log.write(line + "\n")
        log.flush()
        if reporter is not None:
            reporter.write_line(line)
    yield say
    log.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, proof):
    require_bootable()
    started = time.monotonic()
    wheels = wheelhouse()
    gw = Gateway(tmp_path_factory.mktemp("container"))
    try:
        gw.script("prepare", str(ROOT), str(wheels))
        gw.boot()
        try:        # as on a gateway, install once it has booted ("degraded" is fine: the host's own units)
            gw.run("systemctl", "is-system-running", "--wait", check=False, timeout=90)
        except subprocess.TimeoutExpired:
            pass    # a unit still starting does not stop a technician either
        gw.write(PROBE, (ROOT / "tests/system/probe.py").read_text())
        gw.write("/etc/systemd/system/openseg-emulator.service", EMULATOR_UNIT)
        gw.write("/etc/systemd/system/openseg-han.service", without_udev(ROOT / "deploy/openseg-han.service"))
        booted = time.monotonic()
        first = gw.install()
        installed = time.monotonic()
        # The product's install carries no emulator (README, "Packaging"); the lab's radio is the
        # emulator's own distribution, installed beside it from the same clone.
        absent = gw.run(PYTHON, "-c", "import openseg_emulator", check=False)
        assert "No module named 'openseg_emulator'" in absent.stderr, "install-gateway installed the emulator"
        gw.run(PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               f"{SRC}/emulator", timeout=300,
               env={"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS})
        fields = dict(re.findall(r"^(url|username|password|subscription): (\S+)$", first.stdout, re.M))
        assert set(fields) == {"url", "username", "password", "subscription"}, first.stdout
        gw.login, gw.first_install = fields, first
        gw.write(INSTALL_CA, gw.path(CA_PEM).read_text())
        # Lab settings: a fast poll (needs allow_fast_poll), so timing has samples within seconds.
        config = gw.path(CONFIG)
        config.write_text(config.read_text().replace(
            "[han]\n", f"[han]\npoll_interval_s = {POLL_S}\nallow_fast_poll = true\nresponse_timeout_s = 0.15\n", 1))
        gw.run("systemctl", "enable", "--now", "openseg-emulator.service")     # "plugs the radio in"
        gw.wait_serving()
        proof(f"booted, installed and serving in {time.monotonic() - started:.1f} s: wheelhouse and boot "
              f"{booted - started:.1f} s, install-gateway {installed - booted:.1f} s, first reading "
              f"{time.monotonic() - installed:.1f} s")
        yield gw
    finally:
        subprocess.run([str(CONTAINER), "clean"], env=gw.env, capture_output=True, timeout=120)


def without_udev(unit: Path) -> str:
    text = unit.read_text()
    changed = re.sub(r"^BindsTo=dev-openseg\\x2dxbee\.device\n", "", text, flags=re.M)
    changed = changed.replace("After=dev-openseg\\x2dxbee.device ", "After=openseg-emulator.service ")
    assert changed.count("\n") == text.count("\n") - 1 and "openseg-emulator" in changed, "unit changed shape"
    return changed


# ---- the proofs --------------------------------------------------------------------------------------
def test_install_prints_the_login_and_installs_what_it_says(gateway, proof):
    out = gateway.first_install.stdout
    assert out.count("password: ") == 1, out
    installed = gateway.path("/usr/local/lib/systemd/system/openseg-han.service").read_text()
    assert without_udev(gateway.path("/usr/local/lib/systemd/system/openseg-han.service")) == \
        gateway.path("/etc/systemd/system/openseg-han.service").read_text()
    assert installed == (ROOT / "deploy/openseg-han.service").read_text()
    for shipped in ("openseg-lan.service", RENEW_UNIT, RENEW_TIMER):
        assert gateway.path(f"/usr/local/lib/systemd/system/{shipped}").read_text() == \
            (ROOT / "deploy" / shipped).read_text(), shipped
    assert gateway.show("openseg-lan.service", "FragmentPath")["FragmentPath"] == \
        "/usr/local/lib/systemd/system/openseg-lan.service", "the LAN runs the installed unit as shipped"
    for unit in UNITS:
        state = gateway.show(unit, "ActiveState", "UnitFileState")
        assert state == {"ActiveState": "active", "UnitFileState": "enabled"}, (unit, state)
    config = gateway.path(CONFIG).read_text()
    han_uid = gateway.run("id", "-u", "openseg-han").stdout.strip()
    for line in ('socket_path = "/run/openseg/readings.sock"', f"han_uid = {han_uid}",
                 'state_dir = "/var/lib/openseg"', 'serial_port = "/dev/openseg-xbee"', 'bind = "0.0.0.0"'):
        assert line in config, line
    current = gateway.wait_serving()
    proof(f"install-gateway printed the login once; both units enabled and active; HTTPS (verified against "
          f"{CAFILE}) serves a reading: {current['demand_w']} W at {current['time']}")
    proof(f"after install: {renewal_timer_state(gateway)}")
    assert gateway.path("/opt/openseg/openssl.cnf").read_text() == \
        (ROOT / "openseg/lan_server/http/openssl.cnf").read_text()
    groups = {group: tls13_group(gateway, group) for group in ("X448:X25519", "P-384", "X448", "P-521", "ffdhe2048")}
    assert groups == {"X448:X25519": "X25519, 253 bits", "P-384": "ECDH, secp384r1, 384 bits", "X448": None,
                      "P-521": None, "ffdhe2048": None}, groups
    proof(f"the booted LAN's TLS 1.3 key exchange, per group the client offers (None: refused): {groups}")


def tls13_group(gateway, offered: str) -> str | None:
    """The key the installed LAN agrees on with `openssl s_client -groups offered`, or None if it refuses."""
    out = gateway.run("openssl", "s_client", "-connect", "127.0.0.1:8443", "-tls1_3", "-groups", offered,
                      input="", check=False).stdout
    temp_key = [line.removeprefix("Server Temp Key: ") for line in out.splitlines()
                if line.startswith("Server Temp Key: ")]
    return temp_key[0] if temp_key else None


def renewal_timer_state(gateway) -> str:
    """Asserts the certificate renewal timer is enabled and waiting; what systemctl says about it."""
    enabled = gateway.run("systemctl", "is-enabled", RENEW_TIMER, check=False).stdout.strip()
    active = gateway.run("systemctl", "is-active", RENEW_TIMER, check=False).stdout.strip()
    assert (enabled, active) == ("enabled", "active"), (enabled, active)
    listed = gateway.run("systemctl", "list-timers", "--all", "--no-legend", RENEW_TIMER).stdout.strip()
    assert RENEW_TIMER in listed and RENEW_UNIT in listed, listed
    assert gateway.show(RENEW_TIMER, "NextElapseUSecMonotonic")["NextElapseUSecMonotonic"] not in ("", "0"), \
        "the timer has a next run"
    return f"{RENEW_TIMER} is-enabled {enabled}, is-active {active}; list-timers: {' '.join(listed.split())}"


def test_lan_uid_cannot_open_the_radio(gateway, proof):
    as_lan = gateway.probe("open-rw", "/dev/openseg-xbee", user="openseg-lan")
    as_han = gateway.probe("open-rw", "/dev/openseg-xbee", user="openseg-han")      # control: the probe can open it
    in_lan_sandbox = gateway.sandboxed("openseg-lan.service", "open-rw", "/dev/openseg-xbee")
    assert as_lan == {"/dev/openseg-xbee": "EACCES"}, as_lan
    assert as_han == {"/dev/openseg-xbee": "ok"}, as_han
    assert in_lan_sandbox == {"/dev/openseg-xbee": "ENOENT"}, in_lan_sandbox
    proof(f"radio device: openseg-lan's uid and groups {as_lan}; in the LAN unit's sandbox {in_lan_sandbox} "
          f"(PrivateDevices); openseg-han's uid: {as_han['/dev/openseg-xbee']} (control)")


def test_han_has_no_network_socket_and_cannot_reach_the_lan(gateway, proof):
    han = gateway.main_pid("openseg-han.service")
    held = gateway.probe("sockets", str(han))
    assert held["sockets"] and set(held["sockets"]) == {"AF_UNIX"}, held
    tried = gateway.sandboxed("openseg-han.service", "connect", "127.0.0.1", "8443")
    assert tried == {"AF_INET": "EAFNOSUPPORT", "AF_INET6": "EAFNOSUPPORT", "AF_NETLINK": "EAFNOSUPPORT",
                     "connect": "EAFNOSUPPORT"}, tried
    # second layer, without the address-family filter: in the HAN's network namespace nothing listens
    netns = gateway.run("nsenter", "-t", str(han), "-n", PYTHON, PROBE, "connect", "127.0.0.1", "8443").stdout
    in_netns = json.loads(netns)
    assert in_netns["connect"] == "ECONNREFUSED", in_netns
    lan_side = gateway.probe("connect", "127.0.0.1", "8443")          # control: from the LAN's side it connects
    assert lan_side["connect"] == "ok", lan_side
    proof(f"HAN pid {han} holds sockets {held['sockets']} only; in its sandbox socket() gives {tried}; "
          f"in its network namespace 127.0.0.1:8443 is {in_netns['connect']} (control, outside: {lan_side['connect']})")


def test_lan_and_han_cannot_read_each_others(gateway, proof):
    han, lan = gateway.main_pid("openseg-han.service"), gateway.main_pid("openseg-lan.service")
    state = sorted(str(p).split("/root", 1)[1] for p in gateway.path("/var/lib/openseg").iterdir())
    assert state, "the LAN keeps its history in /var/lib/openseg"
    lan_owned = ["/etc/openseg/tls/key.pem", "/etc/openseg/users.toml", "/var/lib/openseg", *state,
                 f"/proc/{lan}/environ"]
    as_han = gateway.probe("read", *lan_owned, user="openseg-han")
    in_han = gateway.sandboxed("openseg-han.service", "read", *lan_owned)
    assert all(v in ("EACCES", "EPERM") for v in as_han.values()), as_han
    assert all(v in ("EACCES", "ENOENT", "EPERM") for v in in_han.values()), in_han
    # What the HAN owns: its process (and the radio, above); no file anywhere is openseg-han's.
    han_files = gateway.run("find", "/", "-xdev", "-user", "openseg-han", check=False).stdout.split()
    assert han_files == [], han_files
    han_owned = [f"/proc/{han}/environ", f"/proc/{han}/fd", "/dev/openseg-xbee"]
    as_lan = gateway.probe("read", *han_owned, user="openseg-lan")
    in_lan = gateway.sandboxed("openseg-lan.service", "read", *han_owned)
    assert all(v in ("EACCES", "EPERM") for v in as_lan.values()), as_lan
    assert all(v in ("EACCES", "ENOENT", "EPERM") for v in in_lan.values()), in_lan
    control = gateway.probe("read", *lan_owned[:3], user="openseg-lan")   # the LAN reads its own
    assert set(control.values()) == {"ok"}, control
    proof(f"HAN uid on the LAN's key, users, history, process: {as_han}; in the HAN sandbox: {in_han}")
    proof(f"LAN uid on the HAN's process and radio: {as_lan}; in the LAN sandbox: {in_lan}; "
          f"files owned by openseg-han: none; control (LAN reads its own): ok")


def test_lan_threads_fit_its_tasks_max(gateway, proof):
    lan = gateway.main_pid("openseg-lan.service")
    threads = int(re.search(r"^Threads:\s+(\d+)", gateway.path(f"/proc/{lan}/status").read_text(), re.M).group(1))
    limits = gateway.show("openseg-lan.service", "TasksMax", "TasksCurrent")
    assert threads - THREAD_POOL <= LAN_THREADS_BESIDE_THE_POOL, (threads, THREAD_POOL)
    assert threads >= THREAD_POOL, "the whole pool runs"
    assert int(limits["TasksCurrent"]) < int(limits["TasksMax"]), limits
    proof(f"LAN runs {threads} threads ({THREAD_POOL} workers from openseg.lan_server.main.THREAD_POOL + "
          f"{threads - THREAD_POOL}); TasksCurrent {limits['TasksCurrent']} of TasksMax {limits['TasksMax']}")


def lan_cpu_seconds(gateway) -> float:
    fields = gateway.path(f"/proc/{gateway.main_pid('openseg-lan.service')}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")     # utime + stime, all threads


def cpu_priority(gateway, unit: str) -> str:
    """The nice value and the CPU cgroup weight the kernel applies to UNIT's main process."""
    pid = gateway.main_pid(unit)
    nice = gateway.path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16]
    # read inside: /proc/PID/cgroup names paths relative to the reader's cgroup namespace
    for line in gateway.run("cat", f"/proc/{pid}/cgroup").stdout.splitlines():
        _, controllers, path = line.split(":", 2)
        for knob in ([f"/sys/fs/cgroup/{controllers}{path}/cpu.shares"] if "cpu" in controllers.split(",") else
                     [f"/sys/fs/cgroup/unified{path}/cpu.weight", f"/sys/fs/cgroup{path}/cpu.weight"]
                     if controllers == "" else []):
            value = gateway.run("cat", knob, check=False)
            if value.returncode == 0:
                return f"nice {nice}, {knob.rsplit('/', 1)[1]} {value.stdout.strip()}"
    return f"nice {nice}, no CPU controller"


def witnessed_lateness(reads, since: float, until: float) -> list[float]:
    """The emulator's view, for comparison: each poll's arrival at the radio minus its due time, for
    the polls in [since, until]. The radio sees arrivals only, so the grid (slot k due at start +
    k * interval, openseg/han_reader/schedule.py) is anchored at the earliest-arriving poll of the HAN run. On a
    pty this includes the kernel worker that moves the bytes, which a real UART does not have."""
    first = reads[0].t
    offsets = [r.t - round((r.t - first) / POLL_S) * POLL_S for r in reads]
    base = min(offsets)
    return [o - base for o, r in zip(offsets, reads) if since <= r.t <= until]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


RELAY_DIR = "/run/openseg-relay"


def relayed(gateway) -> list[dict]:
    path = gateway.path(f"{RELAY_DIR}/messages.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()[:-1]] if path.exists() else []


def test_poll_timing_under_an_https_flood(gateway, proof):
    """The HAN's own account of every slot (due, time tag, round trip: its send time is time - rtt_s),
    read off the channel by bench/relay.py, which the HAN is pointed at for this test (a drop-in
    changes its config file only: the same unit, user, sandbox and CPU priority)."""
    gateway.write(f"{PROBE_DIR}/relay.py", (ROOT / "bench/relay.py").read_text())
    config = gateway.path(CONFIG).read_text().replace('socket_path = "/run/openseg/readings.sock"',
                                                      f'socket_path = "{RELAY_DIR}/relay.sock"')
    gateway.write("/etc/openseg/gateway-relay.toml", config)
    gateway.run("systemd-run", "--unit=openseg-test-relay", "--uid=openseg-han", "--gid=openseg-han",
                "-p", "SupplementaryGroups=openseg-chan", "-p", "RuntimeDirectory=openseg-relay",
                "-p", "CPUWeight=1000", "-p", "Nice=-10", PYTHON, f"{PROBE_DIR}/relay.py",
                "--listen", f"{RELAY_DIR}/relay.sock", "--forward", "/run/openseg/readings.sock",
                "--out", f"{RELAY_DIR}/messages.jsonl")
    gateway.wait_until("the relay listening", lambda: gateway.path(f"{RELAY_DIR}/relay.sock").exists())
    dropin = "/etc/systemd/system/openseg-han.service.d/test-relay.conf"
    gateway.write(dropin, "[Service]\nExecStart=\nExecStart=/opt/openseg/venv/bin/openseg-han "
                          "--config /etc/openseg/gateway-relay.toml\n")
    gateway.run("systemctl", "daemon-reload")
    gateway.run("systemctl", "restart", "openseg-han.service")
    try:
        han_before = gateway.show("openseg-han.service", "MainPID", "NRestarts", "ExecMainStartTimestampMonotonic")
        han_started = _wall_of(han_before["ExecMainStartTimestampMonotonic"])
        gateway.wait_until("20 idle polls", lambda: len([m for m in relayed(gateway) if m["kind"] == "reading"]) >= 20)
        cpu_before, since = lan_cpu_seconds(gateway), time.time()
        seconds, clients = 25, 4
        # The flood runs as a service of the gateway itself (default CPU weight): the worst case of a
        # small CPU, where the HTTPS clients' work competes with the HAN too.
        flood = gateway.run("systemd-run", "--wait", "--pipe", "--quiet", "--unit=openseg-test-flood", PYTHON,
                            PROBE, "flood", str(seconds), str(clients), gateway.login["username"],
                            gateway.login["password"], CAFILE, timeout=seconds + 60).stdout
        counts = json.loads(flood.strip().splitlines()[-1])
        until = time.time()
        cpu = (lan_cpu_seconds(gateway) - cpu_before) / (until - since)
        gateway.wait_until("the slots after the flood", lambda: any(m.get("due", 0) > until for m in relayed(gateway)))
        assert gateway.show("openseg-han.service", "MainPID", "NRestarts", "ExecMainStartTimestampMonotonic") == \
            han_before, "the HAN ran through the flood without a restart"
        messages = relayed(gateway)        # before the relay stops: its RuntimeDirectory goes with it
        priorities = {unit: cpu_priority(gateway, unit) for unit in UNITS}
    finally:
        gateway.path(dropin).unlink()
        gateway.run("systemctl", "daemon-reload")
        gateway.run("systemctl", "restart", "openseg-han.service")
        gateway.run("systemctl", "stop", "openseg-test-relay.service")
    slots = [m for m in messages if m["kind"] in ("reading", "gap") and since <= m["due"] <= until]
    readings = [m for m in slots if m["kind"] == "reading"]
    late = [(m["time"] - m["rtt_s"]) - m["due"] for m in readings]
    numbers = [m["slot"] for m in slots]
    served = counts["keep-alive"] + counts["new-connection"]
    witnessed = witnessed_lateness([r for r in poll_reads(gateway.frames()) if r.t > han_started], since, until)
    proof(f"CPU priority in effect: openseg-han {priorities['openseg-han.service']}; openseg-lan "
          f"{priorities['openseg-lan.service']}")
    proof(f"under an HTTPS flood ({counts['keep-alive']} keep-alive + {counts['new-connection']} new-connection "
          f"requests in {until - since:.1f} s, {counts['failed']} failed; the LAN used {cpu:.0%} of a CPU) the HAN "
          f"sent its {len(late)} polls p50 {sorted(late)[len(late) // 2] * 1000:.1f} ms, p99 {p99(late) * 1000:.1f} ms, "
          f"max {max(late) * 1000:.1f} ms after due ({len(slots) - len(readings)} gaps); the emulator saw them "
          f"arrive p99 {p99(witnessed) * 1000:.1f} ms after the grid (through the pty)")
    assert served >= 10 * seconds and cpu >= 0.3, f"no flood: {counts}, LAN used {cpu:.0%} of a CPU"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a slot went unaccounted"
    assert not [m for m in slots if m.get("cause") == "late"], "a slot was missed: the loop was late"
    assert len(late) >= 0.9 * seconds / POLL_S, len(late)
    assert p99(late) <= 0.020, f"poll p99 {p99(late) * 1000:.1f} ms late under the flood"


def test_cert_renew_and_user_add_as_root_leave_a_lan_that_starts(gateway, proof):
    gateway.run(ADMIN, "cert", "renew", "--config", CONFIG)
    gateway.run(ADMIN, "user", "add", "alice", "--password-stdin", "--config", CONFIG,
                input="a long enough household passphrase 42\n")
    owners = gateway.run("stat", "-c", "%n %U:%G %a", "/etc/openseg/tls/key.pem", "/etc/openseg/users.toml").stdout
    assert owners.split("\n")[:2] == ["/etc/openseg/tls/key.pem openseg-lan:openseg-lan 600",
                                      "/etc/openseg/users.toml openseg-lan:openseg-lan 600"], owners
    restarted = gateway.run("systemctl", "restart", "openseg-lan.service", check=False)
    assert restarted.returncode == 0, gateway.run("journalctl", "-u", "openseg-lan", "-n", "20", "--no-pager").stdout
    answer = gateway.get("/api/v1/current", "alice", "a long enough household passphrase 42")
    # the chain's first certificate (ssl.PEM_cert_to_DER_cert would decode the whole chain as one)
    served, _ = server_certificate(gateway)
    assert answer["status"] == 200 and answer["cert_sha256"] == served, answer
    proof(f"as root: cert renew and user add kept key.pem and users.toml openseg-lan's (0600); the LAN "
          f"restarted, serves the new certificate and the new user (HTTP {answer['status']})")


MAKE_DUE = """
import sys
from openseg.lan_server.accounts import admin, certs
ca_key, ca_cert, key, cert = sys.argv[1:]
# What the installation's CA would have issued 335 days ago: a server certificate ending in 30 days.
with open(ca_key, "rb") as k, open(ca_cert, "rb") as c:
    key_pem, chain_pem = certs.issue_server(k.read(), c.read(), ["0.0.0.0"], days=30)
with admin.keeping_owners(key, cert):
    certs.write_private(key, key_pem, 0o600)
    certs.write_private(cert, chain_pem, 0o644)
"""


def served_certificate(gateway, cafile: str) -> dict:
    answer = gateway.probe("get", "/api/v1/current", gateway.login["username"], gateway.login["password"], cafile)
    assert answer.get("status") == 200, answer
    return answer


def server_certificate(gateway) -> tuple[str, dt.datetime]:
    """The server certificate in tls/cert.pem (the chain's first): its SHA-256 and its end."""
    cert = x509.load_pem_x509_certificate(gateway.path(CAFILE).read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(), cert.not_valid_after_utc


def test_renewal_service_renews_a_due_certificate_and_the_install_time_ca_still_verifies(gateway, proof):
    """The timer's service, run once as systemd would, on a certificate that is due: a server
    certificate the installation's CA issued for 30 days (under the 60 days before the end at which
    `--if-due` renews), written by the admin code itself. Every HTTPS check trusts only the copy of
    /etc/openseg/ca.pem taken right after the first install."""
    key, cert = "/etc/openseg/tls/key.pem", CAFILE
    gateway.run(PYTHON, "-c", MAKE_DUE, "/etc/openseg/ca/key.pem", CA_PEM, key, cert)
    gateway.run("systemctl", "restart", "openseg-lan.service")
    gateway.wait_serving()
    short, short_end = server_certificate(gateway)
    assert short_end - dt.datetime.now(dt.timezone.utc) < dt.timedelta(days=certs.RENEW_BEFORE_DAYS)
    assert served_certificate(gateway, INSTALL_CA)["cert_sha256"] == short, "the LAN serves the due certificate"
    lan_before = gateway.main_pid("openseg-lan.service")
    since = int(time.time()) - 1
    gateway.run("systemctl", "start", RENEW_UNIT, timeout=120)          # a oneshot: returns when it is done
    result = gateway.show(RENEW_UNIT, "Result", "ExecMainStatus")
    journal = gateway.run("journalctl", "-u", RENEW_UNIT, "--no-pager", "-o", "cat", f"--since=@{since}").stdout
    assert result == {"Result": "success", "ExecMainStatus": "0"}, (result, journal[-1500:])
    assert "renewing: it ends on" in journal and "restarted: openseg-lan.service" in journal, journal[-1500:]
    renewed, renewed_end = server_certificate(gateway)
    assert renewed != short and renewed_end - short_end > dt.timedelta(days=300), (short_end, renewed_end)
    assert gateway.main_pid("openseg-lan.service") not in (0, lan_before), "the renewal restarted the LAN"
    gateway.wait_serving(after=time.time())
    served = served_certificate(gateway, INSTALL_CA)
    assert served["cert_sha256"] == renewed, "the LAN serves the renewed certificate"
    assert gateway.path(CA_PEM).read_bytes() == gateway.path(INSTALL_CA).read_bytes(), "the CA did not change"
    # control: a CA the gateway was not issued by is refused, so the check above is a real verification
    _, other_ca = certs.make_ca()
    gateway.write(f"{PROBE_DIR}/other-ca.pem", other_ca.decode())
    refused = gateway.probe("get", "/api/v1/current", gateway.login["username"], gateway.login["password"],
                            f"{PROBE_DIR}/other-ca.pem")
    assert "CERTIFICATE_VERIFY_FAILED" in refused.get("error", ""), refused
    # the CA key: root's alone, in a folder neither service's uid nor the LAN's sandbox may enter
    owners = gateway.run("stat", "-c", "%n %U:%G %a", "/etc/openseg/ca", "/etc/openseg/ca/key.pem", key).stdout
    assert owners.split("\n")[:3] == ["/etc/openseg/ca root:root 700", "/etc/openseg/ca/key.pem root:root 600",
                                      f"{key} openseg-lan:openseg-lan 600"], owners
    ca_paths = ["/etc/openseg/ca", "/etc/openseg/ca/key.pem"]
    as_lan = gateway.probe("read", *ca_paths, user="openseg-lan")
    as_han = gateway.probe("read", *ca_paths, user="openseg-han")
    in_lan = gateway.sandboxed("openseg-lan.service", "read", *ca_paths)
    assert set(as_lan.values()) == set(as_han.values()) == set(in_lan.values()) == {"EACCES"}, (as_lan, as_han, in_lan)
    proof(f"{RENEW_UNIT} started once on a due certificate (ends {short_end.date()}): it logged "
          f"{[l for l in journal.splitlines() if l.startswith(('renewing:', 'restarted:'))]}; the new one ends "
          f"{renewed_end.date()}; openseg-lan restarted and serves it over HTTPS verified with only the CA file "
          f"copied at install time (unchanged; a foreign CA: {refused['error'][:60]})")
    proof(f"CA key: {owners.split(chr(10))[0]}, {owners.split(chr(10))[1]}; openseg-lan's uid {as_lan}, "
          f"openseg-han's {as_han}, in the LAN sandbox {in_lan}")


def test_second_install_upgrades_the_code_and_keeps_everything(gateway, proof):
    kept = {p: gateway.path(p).read_bytes() for p in
            (CONFIG, "/etc/openseg/tls/key.pem", "/etc/openseg/tls/cert.pem", "/etc/openseg/users.toml")}
    before = gateway.history()
    pids = {u: gateway.main_pid(u) for u in UNITS}
    marker = f"# upgraded by the system test {time.time()}\n"
    source = gateway.path(f"{SRC}/openseg/lan_server/__init__.py")
    source.write_text(source.read_text() + marker)
    out = gateway.install().stdout
    assert "password" not in out, "the login is printed by the first run only"
    installed = gateway.run(PYTHON, "-c", "import openseg.lan_server; print(openseg.lan_server.__file__)").stdout.strip()
    assert marker in gateway.path(installed).read_text(), "the code was upgraded"
    for path, content in kept.items():
        assert gateway.path(path).read_bytes() == content, f"{path} changed"
    for unit in UNITS:
        assert gateway.main_pid(unit) not in (0, pids[unit]), f"{unit} was not restarted on the new code"
    gateway.wait_serving(after=time.time())
    after = gateway.history()
    assert after[0]["time"] <= before[0]["time"] and len(after) >= len(before), "history kept"
    proof(f"second install-gateway run: new code in the venv, both units restarted; config, TLS key and "
          f"certificate, users unchanged; history kept ({len(before)} -> {len(after)} points); no login printed")


def test_watchdog_restarts_a_stopped_han_and_a_stopped_lan(gateway, proof):
    for unit in UNITS:
        gateway.write(f"/etc/systemd/system/{unit}.d/test-watchdog.conf", "[Service]\nWatchdogSec=3\nRestartSec=1\n")
    gateway.run("systemctl", "daemon-reload")
    gateway.run("systemctl", "restart", *UNITS)
    try:
        for unit in ("openseg-han.service", "openseg-lan.service"):
            before = gateway.show(unit, "MainPID", "NRestarts")
            stopped = time.time()
            gateway.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", unit)
            gateway.wait_until(f"{unit} restarted", lambda: gateway.show(unit, "NRestarts", "ActiveState", "SubState") ==
                               {"NRestarts": str(int(before["NRestarts"]) + 1), "ActiveState": "active",
                                "SubState": "running"}, timeout=30)
            journal = gateway.run("journalctl", "-u", unit, "--no-pager", "-o", "cat",
                                  f"--since=@{int(stopped) - 1}").stdout
            assert "Watchdog timeout" in journal, journal[-1500:]
            assert gateway.main_pid(unit) != int(before["MainPID"])
            current = gateway.wait_serving(after=time.time())
            proof(f"{unit}: SIGSTOPped; systemd logged a watchdog timeout and restarted it "
                  f"({time.time() - stopped:.1f} s to a fresh reading over HTTPS, {current['time']})")
    finally:
        for unit in UNITS:
            gateway.path(f"/etc/systemd/system/{unit}.d/test-watchdog.conf").unlink()
        gateway.run("systemctl", "daemon-reload")


def test_both_back_after_a_reboot_within_10_s_with_history_kept(gateway, proof):
    before = gateway.history()
    assert before, "history before the reboot"
    booted = gateway.reboot()
    gateway.wait_until("both units active", lambda: all(
        gateway.show(u, "ActiveState")["ActiveState"] == "active" for u in UNITS), timeout=60)
    active = {u: int(gateway.show(u, "ActiveEnterTimestampMonotonic")["ActiveEnterTimestampMonotonic"]) / 1e6 - booted
              for u in UNITS}
    current = gateway.wait_serving(after=time.time() - 5)
    timer = renewal_timer_state(gateway)
    after = gateway.history()
    assert after[0]["time"] == before[0]["time"] and len(after) >= len(before), "history kept across the reboot"
    proof(f"rebooted: openseg-lan active {active['openseg-lan.service']:.2f} s and openseg-han (radio answered) "
          f"{active['openseg-han.service']:.2f} s after systemd started; serving {current['time']}; history "
          f"kept ({len(before)} points before, {len(after)} after, the oldest unchanged)")
    proof(f"after the reboot: {timer}")
    assert max(active.values()) <= 10.0, active
