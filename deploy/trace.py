"""The traceability table (SECURITY.md §3a): each read-only or separation claim -> the code lines that
make it true -> the test that proves it -> the negative control that shows the test can fail.

    .venv/bin/python deploy/trace.py            every row: run its test (must pass), then its control
    .venv/bin/python deploy/trace.py 3          row 3 only
    .venv/bin/python deploy/trace.py --table    the table as Markdown, line numbers read from the code now

A negative control copies the tree to a temporary folder, makes the edit the row names (the claim made
false in the smallest way), and runs the same test there with that copy first on PYTHONPATH (console
scripts the test starts import the copy too): the test must fail. `make audit` runs every row.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPIED = ("openseg", "emulator", "tests", "deploy", "setup.cfg", ".importlinter", "pyproject.toml")


@dataclass(frozen=True)
class Row:
    claim: str
    code: tuple[tuple[str, str], ...]          # (file, a string on the line that makes the claim true)
    test: str                                  # pytest node id(s), space separated
    control: str                               # what the negative control does, in words
    edits: tuple[tuple[str, str, str], ...]    # (file, old, new): the control's edit


ROWS = [
    Row("Only the egress guard holds a write-capable descriptor on the radio's port; the link reads through "
        "an O_RDONLY one",
        (("openseg/han_reader/link.py", "os.O_RDONLY | os.O_NOCTTY"), ("openseg/han_reader/link.py", "self._hand_over(port)"),
         ("openseg/han_reader/main.py", "guard.attach,"), ("openseg/han_reader/egress_guard.py", "def attach(new")),
        "tests/han_reader/test_link.py::test_the_link_holds_only_a_read_only_descriptor_and_hands_the_writer_over",
        "the link opens its descriptor read-write",
        (("openseg/han_reader/link.py", "os.O_RDONLY | os.O_NOCTTY", "os.O_RDWR | os.O_NOCTTY"),)),
    Row("No object the HAN loop holds (link, Radio, service) reaches the write-capable port, and no module "
        "but the guard and the link can",
        (("openseg/han_reader/egress_guard.py", "port: Port | None = None"), ("openseg/han_reader/egress_guard.py", "self.send = send"),
         ("openseg/han_reader/link.py", "self._hand_over(port)")),
        "tests/han_reader/test_egress_capability.py",
        "the link keeps the port it hands over (as `_serial`, where the issue found it)",
        (("openseg/han_reader/link.py", "        self._hand_over(port)\n", "        self._hand_over(port)\n"
          "        self._serial = port\n"),)),
    Row("Only the 9 AT queries the code sends leave the gateway, without a parameter",
        (("openseg/han_reader/egress_guard.py", "AT_QUERIES = {"), ("openseg/han_reader/egress_guard.py", "def _check_at(")),
        "tests/han_reader/test_egress_guard.py::test_every_two_letter_at_command_with_and_without_a_parameter",
        "WR (write to flash) added to the list",
        (("openseg/han_reader/egress_guard.py", '    "AP": "service', '    "WR": "x",\n    "AP": "service'),)),
    Row("Only IEEE_addr_req (to the coordinator) and Match_Desc_req (broadcast) on ZDO, byte for byte",
        (("openseg/han_reader/egress_guard.py", "ZDO_REQUESTS = {"), ("openseg/han_reader/egress_guard.py", "def _check_zdo(")),
        "tests/han_reader/test_egress_guard.py::test_every_zdo_cluster_at_its_spec_length",
        "Unbind_req (0x0022) added to the ZDO list",
        (("openseg/han_reader/egress_guard.py", "ZDO_REQUESTS = {\n", "ZDO_REQUESTS = {\n    0x0022: ZdoRequest("
          "'Unbind_req', 'x', 0, 0, bytes(4)),\n"),)),
    Row("ZCL: only global Read Attributes (frame control 0x00, command 0x00) of the read set",
        (("openseg/han_reader/egress_guard.py", "if payload[0] != ZCL_FRAME_CONTROL"),
         ("openseg/han_reader/egress_guard.py", "if payload[2] != ZCL_READ_ATTRIBUTES")),
        "tests/han_reader/test_egress_guard.py::test_every_zcl_frame_control_times_every_command",
        "the direction bit allowed",
        (("openseg/han_reader/egress_guard.py", "if payload[0] != ZCL_FRAME_CONTROL",
          "if payload[0] & 0xF7 != ZCL_FRAME_CONTROL"),)),
    Row("ZCL reads go unicast to the discovered meter only, APS-encrypted",
        (("openseg/han_reader/egress_guard.py", "!= (meter.ieee, METER_NWK, HOST_ENDPOINT, meter.endpoint)"),
         ("openseg/han_reader/egress_guard.py", "if options != TX_OPTIONS_ZCL")),
        "tests/han_reader/test_egress_guard.py::test_every_transmit_option_and_radius "
        "tests/han_reader/test_egress_guard.py::test_destinations_and_endpoints",
        "an unencrypted read allowed",
        (("openseg/han_reader/egress_guard.py", "if options != TX_OPTIONS_ZCL", "if options not in (0, TX_OPTIONS_ZCL)"),)),
    Row("Every mutant of the guard is killed by its tests (or named equivalent, with the reason)",
        (("tests/han_reader/test_egress_guard_mutation.py", "EQUIVALENT = {"),),
        "tests/han_reader/test_egress_guard_mutation.py",
        "a known-killed mutant listed as equivalent (the list must be exact)",
        (("tests/han_reader/test_egress_guard_mutation.py", "EQUIVALENT = {\n", "EQUIVALENT = {\n"
          "    'x_check__mutmut_1': 'planted',\n"),)),
    Row("The pace law: the guard refuses, logs and counts a frame to the meter less than 0.9 x the poll "
        "interval after the previous one",
        (("openseg/han_reader/egress_guard.py", "now < self.explicit_floor_at()"),
         ("openseg/han_reader/egress_guard.py", "return self._last_explicit + PACE_FLOOR * self.interval_s")),
        "tests/han_reader/test_egress_guard.py::test_the_pace_law",
        "the guard allows a second of slack",
        (("openseg/han_reader/egress_guard.py", "now < self.explicit_floor_at()", "now < self.explicit_floor_at() - 1.0"),)),
    Row("The schedule never breaks the pace: at start and after a radio reset, frames to the meter (as the "
        "emulator logs them) are at least 0.9 x the interval apart",
        (("openseg/han_reader/radio.py", "self._idle_until(self.guard.explicit_floor_at() if on_grid"),
         ("openseg/han_reader/service.py", "self._idle_until(self.guard.explicit_free_at())")),
        "tests/system/test_han_integration.py::test_radio_reset_rejoins_rediscovers_and_resumes",
        "the radio does not wait for its turn (the guard then refuses; the HAN never polls)",
        (("openseg/han_reader/radio.py", "            self._idle_until(self.guard.explicit_floor_at() if on_grid else "
          "self.guard.explicit_free_at())", "            pass"),)),
    Row("A reset storm stays bounded: <= 25 s / interval + 4 frames to the meter in 25 s",
        (("openseg/han_reader/service.py", "self._idle(self.discovery_backoff.next())"),
         ("openseg/han_reader/egress_guard.py", "return self._last_explicit + self.interval_s")),
        "tests/system/test_hostile_radio.py::test_a_reset_storm_stays_bounded",
        "neither the pace law nor the discovery backoff (discovery restarts at once, as before issue 11)",
        (("openseg/han_reader/egress_guard.py", "return self._last_explicit + self.interval_s", "return -math.inf"),
         ("openseg/han_reader/egress_guard.py", "return self._last_explicit + PACE_FLOOR * self.interval_s",
          "return -math.inf"),
         ("openseg/han_reader/service.py", "self._idle(self.discovery_backoff.next())", "pass"))),
    Row("Under the hostile corpus the real openseg-han writes only reads (judged by the radio's own code)",
        (("openseg/han_reader/egress_guard.py", "kind = check(frame, self._meter)"),),
        "tests/system/test_hostile_radio.py::test_the_hostile_corpus_gets_only_reads_at_the_pace",
        "the guard's check bypassed and one request given a parameter",
        (("openseg/han_reader/egress_guard.py", "kind = check(frame, self._meter)", "kind = Kind.AT_QUERY"),
         ("openseg/han_reader/wire_requests.py", "xbee_frames.ATCommand(frame_id, command).encode()",
          'xbee_frames.ATCommand(frame_id, command).encode() + b"\\x01"'))),
    Row("The processes never import each other; only the HAN's link imports serial",
        (("ROOT", ".importlinter"),),
        "tests/test_import_contract.py::test_lint_imports_keeps_every_contract",
        "the LAN imports serial",
        (("openseg/lan_server/main.py", '"""', 'import serial  # noqa\n"""'),)),
    Row("The HAN's channel socket has no address, so nothing can be sent back to it",
        (("openseg/han_reader/channel_sender.py", "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)"),),
        "tests/system/test_separation.py::test_han_sockets_have_no_address_so_nothing_can_be_sent_back",
        "the HAN auto-binds its socket",
        (("openseg/han_reader/channel_sender.py", "self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
          'self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); self._sock.bind("")'),)),
]


def line_of(path: str, anchor: str) -> str:
    if path == "ROOT":
        return anchor
    for number, line in enumerate((ROOT / path).read_text().splitlines(), 1):
        if anchor.splitlines()[0] in line:
            return f"{path}:{number}"
    raise SystemExit(f"trace.py: {anchor!r} is no longer in {path}; update the table")


def pytest(tree: Path, test: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(BIN / "python"), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *test.split()], cwd=tree, env=env, capture_output=True, text=True)


def control(row: Row) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="trace-", dir="/tmp") as d:
        tree = Path(d)
        for name in COPIED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
            elif src.exists():
                shutil.copy(src, tree / name)
        for path, old, new in row.edits:
            text = (tree / path).read_text()
            if text.count(old) < 1:
                raise SystemExit(f"trace.py: the control's edit no longer applies to {path}: {old!r}")
            (tree / path).write_text(text.replace(old, new, 1))
        return pytest(tree, row.test)


def check_row(number: int, row: Row) -> bool:
    start = time.monotonic()
    proved = pytest(ROOT, row.test)
    caught = control(row)
    # pytest's exit code 1 is "tests failed"; 2 (collection error) would mean the edit broke the copy
    # rather than the claim, which proves nothing.
    ok = proved.returncode == 0 and caught.returncode == 1
    print(f"  {'PASS' if ok else 'FAIL'}  row {number:2}  test {'passes' if proved.returncode == 0 else 'FAILS'}, "
          f"control {'fails it' if caught.returncode == 1 else 'does NOT fail it'}  "
          f"({time.monotonic() - start:5.1f} s)  {row.claim[:60]}", flush=True)
    if not ok:
        print((proved.stdout if proved.returncode else caught.stdout)[-1500:])
    return ok


def table() -> str:
    out = ["| # | claim | code | test | negative control | rerun |", "|---|---|---|---|---|---|"]
    for number, row in enumerate(ROWS, 1):
        code = "<br>".join(f"`{line_of(p, a)}`" for p, a in row.code)
        test = "<br>".join(f"`{t}`" for t in row.test.split())
        out.append(f"| {number} | {row.claim} | {code} | {test} | {row.control} | "
                   f"`.venv/bin/python deploy/trace.py {number}` |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if argv == ["--table"]:
        print(table())
        return 0
    wanted = [int(a) for a in argv] or list(range(1, len(ROWS) + 1))
    for number in wanted:
        for path, anchor in ROWS[number - 1].code:
            line_of(path, anchor)               # the code named is still there
    results = [check_row(n, ROWS[n - 1]) for n in wanted]
    print(f"traceability: {sum(results)}/{len(results)} rows hold (test passes, negative control fails it)")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
