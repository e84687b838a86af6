"""`make audit`: the security evidence in one run and one screen (SECURITY.md, "Audit in one hour").

Runs, each as its own pytest session so one failure does not hide the others:
  1. the import contract             tests/test_import_contract.py (lint-imports + runtime imports)
  2. the read-only guarantee         tests/han_reader/test_egress_guard.py (property tests against a reference)
  3. the runtime separation          tests/system/test_separation.py (live stack, /proc)
  4. readiness and watchdog          tests/system/test_sd_notify.py (fake notify socket, stalled loops)
  5. TLS                             tests/system/test_tls_scan.py (sslyze, Mozilla intermediate; headers)
  6. the systemd units               tests/system/test_deploy_systemd.py (verify, security, sysusers, tmpfiles)
  7. a known limit, measured         tests/system/test_deploy_limits.py (idle/slow HTTP connections)
then prints what each showed, with the numbers an auditor asks for, then runs the traceability table
(deploy/trace.py: each claim's test must pass and its negative control must make it fail) and prints
each row's status, and exits non-zero if anything failed.
Full outputs are kept in tests/artifacts/audit/.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "tests" / "artifacts"
OUT = ART / "audit"
BIN = Path(sys.executable).parent

SECTIONS = [
    ("import contract", "tests/test_import_contract.py"),
    ("read-only guarantee", "tests/han_reader/test_egress_guard.py tests/han_reader/test_egress_capability.py"),
    ("runtime separation", "tests/system/test_separation.py"),
    ("readiness + watchdog", "tests/system/test_sd_notify.py"),
    ("TLS scan + headers", "tests/system/test_tls_scan.py"),
    ("systemd units", "tests/system/test_deploy_systemd.py"),
    ("HTTP idle/slow limit", "tests/system/test_deploy_limits.py"),
]


def run_section(name: str, path: str) -> dict:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    junit = OUT / f"{slug}.xml"
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           *path.split()], cwd=ROOT, capture_output=True, text=True)
    (OUT / f"{slug}.log").write_text(proc.stdout + proc.stderr)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    ok = proc.returncode == 0 and counts["tests"] > 0 and not counts["skipped"]
    return {"name": name, "path": path, "ok": ok, "seconds": time.monotonic() - start, **counts,
            "log": OUT / f"{slug}.log"}


def facts() -> list[str]:
    """The numbers behind the verdicts, read from the tools' own outputs."""
    lines = []
    lint = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    kept = re.search(r"Contracts: .*", lint.stdout)
    lines.append(f"import-linter: {kept.group(0) if kept else 'no result (see lint-imports output)'}")
    scores = []
    for unit in ("openseg-han.service", "openseg-lan.service"):
        out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                              str(ROOT / "deploy" / unit)], capture_output=True, text=True).stdout
        m = re.search(r"Overall exposure level for \S+: (\S+ \S+)", out)
        scores.append(f"{unit} {m.group(1) if m else '?'}")
    lines.append("systemd-analyze security: " + ", ".join(scores) + " (bar: 2.0)")
    sslyze = ART / "sslyze.txt"
    if sslyze.exists():
        verdict = re.search(r"^\s*(\S+: (?:OK - Compliant|FAILED - Not compliant)\.?)", sslyze.read_text(), re.M)
        lines.append(f"sslyze --mozilla_config=intermediate: {verdict.group(1) if verdict else '?'}")
    limits = ART / "http-limits.json"
    if limits.exists():
        m = json.loads(limits.read_text())
        idle = next((v for k, v in m.items() if k.startswith("idle_x")), {})
        slow = next((v for k, v in m.items() if k.startswith("slow_x")), {})
        lines.append(f"HTTP limit: pool {m.get('thread_pool')} workers; {idle.get('connections')} idle "
                     f"connections delay a client {idle.get('seconds')} s, {slow.get('connections')} slow "
                     f"ones {slow.get('seconds')} s; below the pool {m['below_pool']['seconds']} s")
    return lines


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for name, path in SECTIONS:
        print(f"  running {name:22} {path} ...", flush=True)
        results.append(run_section(name, path))
    print("\nOpenSEG security audit " + "=" * 56)
    for r in results:
        passed = r["tests"] - r["failures"] - r["errors"] - r["skipped"]
        mark = "PASS" if r["ok"] else "FAIL"
        extra = f", {r['skipped']} skipped" if r["skipped"] else ""
        print(f"  {mark}  {r['name']:22} {passed:4}/{r['tests']:<4} tests{extra}  {r['seconds']:6.1f} s  {r['path']}")
    print("-" * 80)
    for line in facts():
        print(f"  {line}")
    print("-" * 80)
    print("  traceability (SECURITY.md §3a): test passes, negative control fails it", flush=True)
    trace = subprocess.run([sys.executable, str(ROOT / "deploy" / "trace.py")], cwd=ROOT)
    print("-" * 80)
    failed = [r for r in results if not r["ok"]]
    if trace.returncode != 0:
        failed.append({"name": "traceability", "log": ROOT / "deploy" / "trace.py"})
    if failed:
        for r in failed:
            print(f"  FAILED: {r['name']}: see {r['log'].relative_to(ROOT)}")
        print(f"AUDIT FAILED ({len(failed)} of {len(results)} sections)")
        return 1
    print(f"AUDIT PASSED: {len(results)} sections, {sum(r['tests'] for r in results)} tests, and every "
          f"traceability row; logs in {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
