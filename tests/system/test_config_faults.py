"""Issue 12: every fault of a config or users file stops every process that reads it with exit 2 and
ONE line on stderr naming the file and the reason; never a traceback. The real console scripts run as
subprocesses (all cases at once, so the module costs about as much as its slowest case).

"Unreadable" means a file its reader lacks permission for. Root reads any file, so under root the
process is started by setpriv without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH in its bounding set: its
uid is still 0 but mode 000 then stops it, as it stops the service users on a real gateway.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.lan_fixtures import command, run_admin

SETPRIV = shutil.which("setpriv")


@dataclass(frozen=True)
class Fault:
    name: str
    reason: str                     # a word the message must contain
    make: object                    # make(path: Path, good_text: str) -> None
    root_needs_setpriv: bool = False


def _write(data: bytes):
    def make(path: Path, good: str) -> None:
        path.write_bytes(data)
    return make


def _latin1_comment(path: Path, good: str) -> None:
    path.write_bytes(("# chauffe-eau r\u00e9gl\u00e9 le soir\n" + good).encode("latin-1"))


def _unreadable(path: Path, good: str) -> None:
    path.write_text(good)
    path.chmod(0)


def _directory(path: Path, good: str) -> None:
    path.mkdir()


def _fifo(path: Path, good: str) -> None:
    os.mkfifo(path)


def _missing(path: Path, good: str) -> None:
    pass


def _newline_key(path: Path, good: str) -> None:
    path.write_text(good + '\n"two\\nlines" = 1\n')      # the last table of a config is [lan]


COMMON = [
    Fault("not-utf8", "UTF-8", _latin1_comment),
    Fault("unreadable", "Permission denied", _unreadable, root_needs_setpriv=True),
    Fault("directory", "directory", _directory),
    Fault("fifo", "regular file", _fifo),
    Fault("missing", "no such", _missing),
    Fault("not-toml", "not valid TOML", _write(b"[lan\nport = 1\n")),
    Fault("nested-deep", "nested too deeply", _write(b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n")),
]
CONFIG_ONLY = [
    Fault("key-with-newline", "unknown key", _newline_key),
    Fault("nul-in-path", "NUL", lambda p, good: p.write_text(
        good.replace('users_file = "users.toml"', 'users_file = "users\\u0000.toml"'))),
    Fault("wrong-type", "[lan] port", lambda p, good: p.write_text(good.replace("port = 8443", 'port = "x"'))),
]
USERS_ONLY = [
    Fault("bad-hash", "password_hash", _write(b'[users."a"]\nsubscription = "s1"\npassword_hash = "md5$x"\n')),
]


@pytest.fixture(scope="module")
def installation(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("faults") / "gw"
    out = run_admin("init", "--dir", str(d), "--serial", "/dev/null")
    assert out.returncode == 0, out.stderr
    return d


# Every fault against both services; a sample against the admin command (its files are read by the
# same openseg.shared_schema.text_file, and each process start costs 0.3-1 s of CPU).
SAMPLE = (COMMON[0], COMMON[1], COMMON[2], COMMON[5])
# (label, which file, the fault, the process reading it)
PLAN = ([(f"config-{f.name}-{p}", "config", f, p) for f in COMMON + CONFIG_ONLY for p in ("han", "lan")]
        + [(f"config-{f.name}-admin-list", "config", f, "admin-list") for f in SAMPLE + tuple(CONFIG_ONLY)]
        + [(f"config-{f.name}-admin-renew", "config", f, "admin-renew") for f in SAMPLE[:1]]
        + [(f"users-{f.name}-lan", "users", f, "lan") for f in COMMON + USERS_ONLY]
        + [(f"users-{f.name}-admin-add", "users", f, "admin-add") for f in SAMPLE + tuple(USERS_ONLY)]
        + [("config-not-utf8-devstack", "config", COMMON[0], "devstack"),
           ("load-file-directory-emulator", "load", COMMON[2], "emulator")])


def _argv(proc: str, cfg: Path, work: Path) -> list[str]:
    if proc == "devstack":      # the development stack re-reads the config it made on an earlier run
        return [sys.executable, "-m", "openseg_emulator.devstack", "--dir", str(work)]
    if proc == "emulator":      # the emulator's one file: the load it is told to draw
        return [command("openseg-emulator"), "--link", str(work / "xbee"), "--load-file", str(work / "load")]
    script, *rest = {"han": ["openseg-han"], "lan": ["openseg-lan"],
                     "admin-list": ["openseg-admin", "user", "list"],
                     "admin-add": ["openseg-admin", "user", "add", "bob"],
                     "admin-renew": ["openseg-admin", "cert", "renew"]}[proc]
    return [command(script), *rest, "--config", str(cfg)]


def _cases(installation: Path, root: Path) -> dict[str, tuple[list[str], Path, Fault]]:
    """label -> (argv, the faulty file, the fault)."""
    good = {"config": (installation / "gateway.toml").read_text(),
            "users": (installation / "users.toml").read_text(), "load": "100\n"}
    cases = {}
    for label, which, fault, proc in PLAN:
        work = root / label
        shutil.copytree(installation, work / "gateway")
        (work / "login.json").write_text('{"url": "x", "username": "x", "password": "x", "subscription": "x"}')
        cfg = work / "gateway" / "gateway.toml"
        path = {"config": cfg, "users": work / "gateway" / "users.toml", "load": work / "load"}[which]
        path.unlink(missing_ok=True)
        fault.make(path, good[which])
        cases[label] = (_argv(proc, cfg, work), path, fault)
    return cases


def _run(argv: list[str], fault: Fault) -> subprocess.CompletedProcess:
    if fault.root_needs_setpriv and os.geteuid() == 0:
        assert SETPRIV, "setpriv (util-linux) is needed to test an unreadable file as root"
        argv = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search", "--"] + argv
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def results(installation, tmp_path_factory):
    cases = _cases(installation, tmp_path_factory.mktemp("cases"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {label: pool.submit(_run, argv, fault) for label, (argv, _, fault) in cases.items()}
        return {label: (f.result(), cases[label][1], cases[label][2]) for label, f in futures.items()}


LABELS = [label for label, *_ in PLAN]


@pytest.mark.parametrize("label", LABELS)
def test_one_line_exit_2(results, label):
    out, path, fault = results[label]
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    assert len(lines) == 1, out.stderr
    assert str(path) in lines[0], lines[0]
    assert fault.reason in lines[0], lines[0]


def test_every_case_ran(results):
    assert sorted(results) == sorted(LABELS)


def test_unreadable_really_is_unreadable_to_the_reader(installation, tmp_path):
    """The harness's premise: under setpriv, root cannot read a mode-000 file (else the 'unreadable'
    cases would prove nothing)."""
    f = tmp_path / "secret"
    _unreadable(f, "x")
    out = _run(["cat", str(f)], Fault("unreadable", "", _unreadable, root_needs_setpriv=True))
    assert out.returncode != 0 and "Permission denied" in out.stderr
