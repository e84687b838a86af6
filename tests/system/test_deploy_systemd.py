"""deploy/: the systemd units, sysusers.d, tmpfiles.d and udev files, checked with systemd's own tools.

- `systemd-analyze verify` runs on the units inside a throw-away root that looks like an installed
  gateway: this machine's unit library (for multi-user.target & co), the units in /etc/systemd/system,
  and the real console scripts at the paths ExecStart names. "Clean" means exit 0 *and* no output: verify
  exits 0 on an unknown key or a bad value and only prints a warning. A negative control proves the
  harness notices a broken unit.
- `systemd-analyze security --offline=true` rates each unit; the issue's bar is an exposure of 2.0.
- the issue's hardening list is checked directive by directive, so a unit cannot pass the score by
  trading a required setting for others.
- sysusers.d and tmpfiles.d are applied to the throw-away root by systemd-sysusers/systemd-tmpfiles,
  and the resulting users, groups, memberships, owners and modes are checked.
"""
from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = ("openseg-han.service", "openseg-lan.service", "openseg-mqtt.service")
SYSTEMD_UNIT_LIBRARY = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.0


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
    if not path:
        pytest.fail(f"{name} not found: install systemd (Debian: apt-get install systemd); "
                    "`make audit` does this itself")
    return path


def run(*argv: str, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and result.returncode:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def read_unit(name: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd allows a key several times; order kept)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in (DEPLOY / name).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{name}: {line!r} before any section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exec_start(unit: str) -> list[str]:
    [value] = read_unit(unit)["Service"]["ExecStart"]
    return value.split()


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    """An installed gateway in miniature: unit library, our units, the real console scripts."""
    root = tmp_path_factory.mktemp("sysroot")
    if not SYSTEMD_UNIT_LIBRARY.is_dir():
        pytest.fail(f"{SYSTEMD_UNIT_LIBRARY} missing: install systemd")
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEMD_UNIT_LIBRARY, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(DEPLOY / unit, root / "etc/systemd/system" / unit)
        program = Path(exec_start(unit)[0])
        script = Path(sys.executable).parent / program.name
        assert script.exists(), f"{script} missing: `pip install -e .` installs the console scripts"
        target = root / program.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(script, target)
    return root


def verify(root: Path, *units: str) -> subprocess.CompletedProcess:
    return run(tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", *units)


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_is_clean(fake_root, unit):
    result = verify(fake_root, unit)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        f"systemd-analyze verify {unit}:\n{result.stdout}{result.stderr}"


def test_verify_harness_notices_a_broken_unit(fake_root, tmp_path):
    """Negative controls: a misspelt value, an unknown key, and a missing program each show up."""
    unit_dir = fake_root / "etc/systemd/system"
    good = (DEPLOY / "openseg-han.service").read_text()
    broken = {
        "openseg-bad1.service": good.replace("Type=notify", "Type=notifyy"),
        "openseg-bad2.service": good.replace("UMask=0077", "UMask=0077\nProtectSytem=strict"),
        "openseg-bad3.service": good.replace("/opt/openseg/venv/bin/openseg-han", "/opt/openseg/venv/bin/nope"),
    }
    try:
        for name, text in broken.items():
            (unit_dir / name).write_text(text)
            result = verify(fake_root, name)
            assert result.returncode != 0 or (result.stdout + result.stderr).strip(), name
    finally:
        for name in broken:
            (unit_dir / name).unlink(missing_ok=True)


def exposure(unit_path: Path) -> float:
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit_path))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, f"no overall exposure in:\n{result.stdout}{result.stderr}"
    return float(match.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_at_most_2(unit):
    score = exposure(DEPLOY / unit)
    assert score <= MAX_EXPOSURE, f"{unit}: exposure {score} > {MAX_EXPOSURE}"
    # and systemd's own threshold check agrees (its scale is tenths)
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager",
                 f"--threshold={int(MAX_EXPOSURE * 10)}", str(DEPLOY / unit))
    assert result.returncode == 0, result.stdout[-500:]


def test_security_rating_tells_a_weak_unit_apart(tmp_path):
    """Negative control for the score: the same unit without its confinement is rated far worse."""
    weak = tmp_path / "openseg-weak.service"
    weak.write_text("[Unit]\nDescription=weak\n[Service]\nType=notify\n"
                    "ExecStart=/opt/openseg/venv/bin/openseg-han --config /etc/openseg/gateway.toml\n")
    assert exposure(weak) > 5.0


COMMON = {
    "Type": ["notify"], "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
    "UMask": ["0077"], "Restart": ["always"], "CapabilityBoundingSet": [""], "AmbientCapabilities": [""],
}
REQUIRED = {
    "openseg-han.service": {**COMMON, "PrivateNetwork": ["yes"], "RestrictAddressFamilies": ["AF_UNIX"],
                            "IPAddressDeny": ["any"], "DevicePolicy": ["closed"],
                            "DeviceAllow": ["/dev/openseg-xbee rw"], "User": ["openseg-han"]},
    "openseg-lan.service": {**COMMON, "PrivateDevices": ["yes"],
                            "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
                            "User": ["openseg-lan"]},
    "openseg-mqtt.service": {**COMMON, "PrivateDevices": ["yes"], "DevicePolicy": ["closed"],
                             "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
                             "User": ["openseg-mqtt"], "PrivateUsers": ["yes"]},
}


@pytest.mark.parametrize("unit", UNITS)
def test_required_hardening_directives(unit):
    service = read_unit(unit)["Service"]
    for key, values in REQUIRED[unit].items():
        assert service.get(key) == values, f"{unit}: {key}={service.get(key)} (want {values})"
    assert service["SystemCallFilter"][0] == "@system-service", unit
    assert all(v.startswith("~") for v in service["SystemCallFilter"][1:]), "later filters only deny"
    assert int(service["WatchdogSec"][0]) > 0
    assert service["NotifyAccess"] == ["main"]
    assert re.fullmatch(r"\d+[KMG]", service["MemoryMax"][0]), service["MemoryMax"]
    assert int(service["TasksMax"][0]) > 0
    # no capability at all: no directive adds one back further down
    assert not [k for k, vs in service.items() for v in vs if "CAP_" in v], unit


def test_lan_environment_is_the_same_in_the_unit_and_in_make_run():
    from openseg_emulator.devstack import LAN_ENVIRONMENT
    values = [v for line in read_unit("openseg-lan.service")["Service"]["Environment"] for v in line.split()]
    unit = {k: v for k, _, v in (x.partition("=") for x in values) if k != "PYTHONDONTWRITEBYTECODE"}
    assert unit.keys() == LAN_ENVIRONMENT.keys()
    assert {k: v for k, v in unit.items() if k.startswith(("MALLOC_", "GLIBC_"))} == \
        {k: v for k, v in LAN_ENVIRONMENT.items() if k.startswith(("MALLOC_", "GLIBC_"))}
    assert unit["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0"
    # the same OpenSSL configuration: `make run` names the package's file, the unit the copy
    # deploy/install-gateway makes of it
    shipped = ROOT / "openseg" / "lan_server" / "http" / "openssl.cnf"
    assert Path(LAN_ENVIRONMENT["OPENSSL_CONF"]).resolve() == shipped.resolve()
    installer = (ROOT / "deploy" / "install-gateway").read_text()
    assert unit["OPENSSL_CONF"] == "/opt/openseg/openssl.cnf"
    assert 'OPENSSL_CONF = PREFIX / "openssl.cnf"' in installer and 'PREFIX = Path("/opt/openseg")' in installer
    assert "Groups = X25519:P-256:P-384" in shipped.read_text().splitlines()


def test_exec_start_runs_the_installed_console_scripts():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = {line.split("=")[0].strip() for line in
               cfg["options.entry_points"]["console_scripts"].strip().splitlines()}
    for unit in UNITS:
        argv = exec_start(unit)
        assert Path(argv[0]).name in scripts, argv
        assert argv[1:] == ["--config", "/etc/openseg/gateway.toml"], argv


def test_han_device_names_agree_with_the_udev_rule():
    """The udev SYMLINK, the unit's DeviceAllow and its BindsTo device unit name the same device."""
    rule = (DEPLOY / "99-openseg-xbee.rules").read_text()
    rules = [l for l in rule.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert len(rules) == 1
    symlink = re.search(r'SYMLINK\+="([^"]+)"', rules[0]).group(1)
    assert 'TAG+="systemd"' in rules[0] and 'GROUP="dialout"' in rules[0] and 'MODE="0660"' in rules[0]
    assert 'SYSTEMD_WANTS}+="openseg-han.service"' in rules[0]
    device = f"/dev/{symlink}"
    unit = read_unit("openseg-han.service")
    assert unit["Service"]["DeviceAllow"] == [f"{device} rw"]
    escaped = run(tool("systemd-escape"), "--path", "--suffix=device", device, check=True).stdout.strip()
    assert unit["Unit"]["BindsTo"] == [escaped]
    assert escaped in unit["Unit"]["After"][0].split()


def sysusers(root: Path) -> None:
    (root / "etc").mkdir(exist_ok=True)
    run(tool("systemd-sysusers"), f"--root={root}", str(DEPLOY / "openseg.sysusers.conf"), check=True)


def test_sysusers_creates_one_user_per_process_and_the_channel_group(tmp_path):
    sysusers(tmp_path)
    passwd = {l.split(":")[0]: l.split(":") for l in (tmp_path / "etc/passwd").read_text().splitlines()}
    group = {l.split(":")[0]: l.split(":") for l in (tmp_path / "etc/group").read_text().splitlines()}
    for user in ("openseg-han", "openseg-lan", "openseg-mqtt"):
        assert user in passwd and passwd[user][6] == "/usr/sbin/nologin"
        assert 0 < int(passwd[user][2]) < 1000, "a system user"
    assert passwd["openseg-han"][2] != passwd["openseg-lan"][2]

    def members(name):
        return set(filter(None, group[name][3].split(",")))
    assert members("dialout") == {"openseg-han"}
    assert members("openseg-chan") == {"openseg-han"}, "the channel group grants only the HAN user"
    # the LAN user is in no group but its own
    assert not [g for g, fields in group.items() if "openseg-lan" in fields[3].split(",")]


def test_tmpfiles_makes_the_channel_directory_and_guards_the_secrets(tmp_path):
    sysusers(tmp_path)
    etc = tmp_path / "etc/openseg"
    (etc / "tls").mkdir(parents=True)
    (etc / "ca").mkdir(mode=0o777)
    for name in ("gateway.toml", "users.toml", "tls/cert.pem", "tls/key.pem", "ca.pem", "ca/key.pem"):
        (etc / name).write_text("x")
        (etc / name).chmod(0o666)
    run(tool("systemd-tmpfiles"), "--create", f"--root={tmp_path}", str(DEPLOY / "openseg.tmpfiles.conf"),
        check=True)
    uid = {l.split(":")[0]: int(l.split(":")[2]) for l in (tmp_path / "etc/passwd").read_text().splitlines()}
    gid = {l.split(":")[0]: int(l.split(":")[2]) for l in (tmp_path / "etc/group").read_text().splitlines()}
    st = (tmp_path / "run/openseg").stat()
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o2750, oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (uid["openseg-lan"], gid["openseg-chan"])
    secrets = {"tls/key.pem": 0o600, "users.toml": 0o600}
    for name, mode in secrets.items():
        st = (etc / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (mode, uid["openseg-lan"]), name
    for name in ("gateway.toml", "tls/cert.pem", "ca.pem"):
        st = (etc / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, 0), name
    # the CA key is root's alone (openseg-cert-renew.service runs as root), in a folder no service enters
    for name, mode in (("ca", 0o700), ("ca/key.pem", 0o600)):
        st = (etc / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, 0), name
    st = (etc / "tls").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, gid["openseg-lan"])
    # the socket directory is the one the LAN unit may write to
    assert "/run/openseg" in read_unit("openseg-lan.service")["Service"]["ReadWritePaths"]


MDWE_STACK = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE failed: errno {ctypes.get_errno()} (kernel older than 6.3?)")
from openseg_emulator.devstack import Stack, wait_until
with Stack(sys.argv[1], poll_interval_s=1.0) as s:
    wait_until(lambda: s.get_json("/api/v1/current")[1].get("status") == "ok", 60, "a reading")
    code, _, body = s.get(f"/espi/1_1/resource/Batch/Subscription/{s.subscription}")
    alive = all(getattr(s, name).poll() is None for name in ("han", "lan"))
# control: an exec'd child has the flag too, and it bites (a W+X mapping is refused)
import subprocess
child = subprocess.run([sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
                       capture_output=True, text=True)
print(json.dumps({"batch": code, "bytes": len(body), "alive": alive,
                  "wx_refused_in_child": child.returncode != 0 and "PermissionError" in child.stderr}))
"""


@pytest.mark.integration
def test_both_processes_work_with_memory_deny_write_execute(tmp_path):
    """MemoryDenyWriteExecute=yes must not break them (CPython, cffi, lxml, cryptography): the whole stack
    runs under the kernel's equivalent (PR_SET_MDWE, which children inherit across execve) and serves a
    reading and a Green Button batch."""
    result = subprocess.run([sys.executable, "-c", MDWE_STACK, str(tmp_path / "stack")], cwd=ROOT,
                            capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["batch"] == 200 and report["bytes"] > 1000, report
    assert report["alive"] and report["wx_refused_in_child"], report


# Threads of openseg-lan besides the HTTP worker pool: the main thread, the channel receiver, the accept
# loop and CherryPy's engine threads. Counted in the booted unit by tests/system/test_system_boot.py, which
# fails if the LAN ever runs more than this.
LAN_THREADS_BESIDE_THE_POOL = 8
TASKS_HEADROOM = 16


def test_lan_tasks_max_covers_the_worker_pool_from_the_code():
    """TasksMax below the pool crash-loops the LAN ("can't start new thread"), as the shipped
    TasksMax=64 did against 128 workers: the limit is checked against the pool size in the code."""
    from openseg.lan_server.main import THREAD_POOL
    [tasks_max] = read_unit("openseg-lan.service")["Service"]["TasksMax"]
    assert int(tasks_max) >= THREAD_POOL + LAN_THREADS_BESIDE_THE_POOL + TASKS_HEADROOM, \
        f"TasksMax={tasks_max} < {THREAD_POOL} workers + {LAN_THREADS_BESIDE_THE_POOL} + {TASKS_HEADROOM} headroom"


def test_han_is_favoured_for_the_cpu():
    """The HAN's poll loop must not wait behind an HTTPS flood of the LAN (tests/system/test_system_boot.py
    measures its timing under one): more CPU weight than the default 100 and a higher priority."""
    service = read_unit("openseg-han.service")["Service"]
    assert int(service["CPUWeight"][0]) > 100 and int(service["Nice"][0]) < 0, service
    assert "CPUWeight" not in read_unit("openseg-lan.service")["Service"]


def test_the_certificate_renewal_timer_verifies_clean(fake_root):
    """deploy/openseg-cert-renew.{service,timer}: daily, as root (the CA key's owner), only when due,
    restarting openseg-lan after a renewal (tests/system/test_certs_ca.py runs the command itself)."""
    unit_dir = fake_root / "etc/systemd/system"
    units = ("openseg-cert-renew.service", "openseg-cert-renew.timer")
    for unit in units:
        shutil.copy(DEPLOY / unit, unit_dir / unit)
    argv = exec_start(units[0])
    target = fake_root / Path(argv[0]).relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(Path(sys.executable).parent / Path(argv[0]).name, target)
    result = verify(fake_root, *units)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    assert argv[1:4] == ["cert", "renew", "--if-due"] and "openseg-lan.service" in argv
    service = read_unit(units[0])["Service"]
    assert "User" not in service and service["Type"] == ["oneshot"]
    assert read_unit(units[1])["Timer"]["Persistent"] == ["yes"]
