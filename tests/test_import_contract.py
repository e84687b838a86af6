"""The import contract: han_reader and lan_server never import each other, and neither imports the
other side's kind of module (HTTP/TLS for the HAN, serial/XBee for the LAN).

Two independent checks:
- static: `lint-imports` with the contracts in .importlinter (import-linter follows chains through all
  of our modules, so an indirect import via shared_schema counts), plus a negative control showing
  the same contracts do break on a planted violation;
- runtime: a fresh interpreter imports every module of the package and reports what got loaded, which
  also sees imports made inside third-party and standard-library code that import-linter cannot.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

HAN_FORBIDDEN = {"http", "ssl", "_ssl", "cherrypy", "cheroot", "socketserver", "urllib3", "requests",
                 "xmlrpc", "ftplib", "smtplib", "asyncio", "openseg.lan_server", "openseg_emulator"}
LAN_FORBIDDEN = {"serial", "xbee", "termios", "tty", "pty", "openseg.han_reader", "openseg_emulator"}


def lint_imports(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = BIN / "lint-imports"
    if not exe.exists():
        pytest.fail(f"{exe} missing: pip install import-linter (in setup.cfg's test extras)")
    return subprocess.run([str(exe), "--no-cache", "--config", str(cwd / ".importlinter")], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


def test_lint_imports_keeps_every_contract():
    result = lint_imports(ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Contracts: 6 kept, 0 broken." in out, out


def test_contract_breaks_on_a_planted_violation(tmp_path):
    """The same .importlinter, on a tree where the HAN imports ssl, the LAN imports the HAN, the HAN's
    radio imports serial itself (only the link may: the guard holds the write) and the LAN's espi room
    imports the state room above it."""
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    files = {
        "openseg/__init__.py": "",
        "openseg/han_reader/__init__.py": "",
        "openseg/han_reader/main.py": "from openseg.shared_schema import wire\n",
        "openseg/lan_server/__init__.py": "",
        "openseg/lan_server/main.py": "import openseg.han_reader.main\nimport serial\n",
        **{f"openseg/lan_server/{room}/__init__.py": "" for room in ("http", "state", "espi", "accounts")},
        "openseg/lan_server/state/readings.py": "",
        "openseg/lan_server/espi/feed.py": "from openseg.lan_server.state import readings\n",
        "openseg/shared_schema/__init__.py": "",
        "openseg/shared_schema/wire.py": "import ssl\n",
        "openseg_emulator/__init__.py": "",
        "openseg/mqtt_bridge/__init__.py": "",
        "openseg/han_reader/radio.py": "import serial\n",
        **{f"openseg/han_reader/{m}.py": "" for m in ("channel_sender", "check", "clock", "discovery", "egress_guard",
                                             "poller", "schedule", "service", "time_base", "wire_requests", "xbee_frames",
                                             "zcl", "zdo")},
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = lint_imports(tmp_path, env)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Contracts: 1 kept, 5 broken." in out, out
    assert "openseg.shared_schema.wire -> ssl" in out, "the chain through shared_schema is reported"
    assert "openseg.lan_server.main -> openseg.han_reader.main" in out
    assert "openseg.lan_server.main -> serial" in out
    assert "openseg.han_reader.radio -> serial" in out
    assert "openseg.lan_server.espi.feed -> openseg.lan_server.state.readings" in out


def _top(module: str) -> str:
    """The top-level name, or openseg.<package> for ours: what the sets above name."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "openseg" else parts[0]


def loaded_by(package: str) -> dict:
    """Modules a fresh interpreter loads when importing every module of `package`."""
    probe = textwrap.dedent("""
        import importlib, json, pkgutil, sys
        before = set(sys.modules)
        pkg = importlib.import_module(sys.argv[1])
        names = [m.name for m in pkgutil.walk_packages(pkg.__path__, sys.argv[1] + ".")]
        for name in names:
            importlib.import_module(name)
        print(json.dumps({"modules": names, "new": sorted(set(sys.modules) - before)}))
    """)
    result = subprocess.run([sys.executable, "-c", probe, package], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("package, forbidden, needed", [
    ("openseg.han_reader", HAN_FORBIDDEN, {"serial", "openseg.shared_schema"}),
    ("openseg.lan_server", LAN_FORBIDDEN, {"cherrypy", "ssl", "openseg.shared_schema"}),
])
def test_runtime_imports_of_each_process(package, forbidden, needed):
    report = loaded_by(package)
    assert f"{package}.main" in report["modules"], "the process's entry point was among the imports"
    top = {_top(name) for name in report["new"]}
    assert not top & forbidden, f"{package} loads {sorted(top & forbidden)}"
    # the probe sees real imports (the check is not vacuous)
    assert needed <= top, f"{package} did not load {sorted(needed - top)}"
