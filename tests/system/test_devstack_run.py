"""`make run` as a new user meets it (python -m openseg_emulator.devstack, what the Makefile runs): one run
per folder (a second one names the holder and changes nothing), the port chosen on the command line
even for a folder made earlier, a console that stays quiet after the banner (logs in files), and the
emulated meter's register carrying on across runs."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import pytest

from openseg_emulator.devstack import Stack, dump_toml, free_port, wait_until
from openseg_emulator.run_lock import Busy, RunLock

pytestmark = pytest.mark.integration
BANNER_END = "Ctrl-C stops everything."


def test_generated_config_has_no_float_noise():
    assert dump_toml({"han": {"response_timeout_s": 7 * 0.4, "poll_interval_s": 7.0, "n": 3}}) == \
        "[han]\nresponse_timeout_s = 2.8\npoll_interval_s = 7.0\nn = 3\n"


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from openseg_emulator.run_lock import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy) as caught:
            RunLock(tmp_path).acquire()
        assert caught.value.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(tmp_path)            # the kernel released it with the process: no stale lock
    lock.acquire()
    assert (tmp_path / ".lock").read_text().strip() == str(__import__("os").getpid())
    lock.release()


class MakeRun:
    """One `make run` (the devstack command) with its console captured in a file."""

    def __init__(self, folder: Path, *args: str):
        self.console = folder.parent / f"console-{time.monotonic_ns()}.txt"
        out = open(self.console, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "openseg_emulator.devstack", "--dir", str(folder),
                                      "--poll-interval", "1", *args], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def text(self) -> str:
        return self.console.read_text(errors="replace")

    def wait_banner(self) -> str:
        wait_until(lambda: BANNER_END in self.text() or self.proc.poll() is not None, 60, "the banner")
        assert self.proc.poll() is None, self.text()
        return self.text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def test_make_run_is_one_per_folder_quiet_on_any_port_and_its_meter_carries_on():
    tmp = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))      # AF_UNIX paths hold 107 bytes
    folder = tmp / "run"
    port = free_port()
    first = MakeRun(folder, "--lan-port", str(port))
    try:
        banner = first.wait_banner()
        assert f"https://127.0.0.1:{port}/" in banner
        assert "run/login.json" in banner and f"{folder.resolve()}/logs/" in banner
        client = Stack(folder, lan_port=port)
        client.login = json.loads((folder / "login.json").read_text())
        wait_until(lambda: len(client.get_json("/api/v1/history?minutes=5")[1].get("points", [])) >= 3, 60,
                   "three readings")
        # Quiet: nothing more on the console while readings arrive and pages are served.
        assert first.text() == banner
        wait_until(lambda: "GET /api/v1/history" in (folder / "logs" / "lan.log").read_text(), 10,
                   "the history requests' access lines")

        # A second run on the same folder: names the first, exits, touches nothing.
        before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
                  for p in folder.rglob("*") if p.is_file() and p.suffix not in (".jsonl", ".log", ".sqlite3",
                                                                                  ".json", ".tmp", ".sqlite3-wal",
                                                                                  ".sqlite3-shm")}
        link = (folder / "xbee").resolve()
        second = MakeRun(folder, "--lan-port", str(free_port()))
        assert second.proc.wait(timeout=30) == 1
        assert f"already running in {folder}/ (process {first.proc.pid})" in second.text()
        assert "this run changed nothing" in second.text()
        after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before}
        assert after == before
        assert (folder / "xbee").resolve() == link and json.loads((folder / "login.json").read_text()) == client.login
        last = client.get_json("/api/v1/history?minutes=5")[1]["points"][-1]
        wait_until(lambda: client.get_json("/api/v1/history?minutes=5")[1]["points"][-1]["slot"] > last["slot"] + 1,
                   30, "the first run to go on polling")
        status = client.get_json("/api/v1/status")[1]
        assert status["state"] == "polling" and status["channel"]["han_restarts"] == 0, status
        assert status["channel"]["seq_missing"] == 0 and status["queries_total"] > 0
        assert first.proc.poll() is None
        last_wh = client.get_json("/api/v1/current")[1]["summation_wh"]
    finally:
        assert first.stop() == 0
    state = json.loads((folder / "meter-state.json").read_text())
    saved, saved_received = Fraction(state["kwh"]), Fraction(state["received_kwh"])

    # The same folder on another port; the register carries on from where the last run left it.
    new_port = free_port()
    third = MakeRun(folder, "--lan-port", str(new_port))
    try:
        assert f"https://127.0.0.1:{new_port}/" in third.wait_banner()
        client = Stack(folder, lan_port=new_port)
        client.login = json.loads((folder / "login.json").read_text())
        assert client.port == new_port
        wait_until(lambda: client.get_json("/api/v1/current")[1].get("status") == "ok", 60, "a reading")
        assert client.get_json("/api/v1/current")[1]["summation_wh"] >= last_wh >= 12345678
        # The emulator's own record: this run's first answer starts at the saved registers, which are
        # past the default start (--start-kwh 12345.678, nothing received) by what the first run's
        # household drew or, `make run` having solar panels, exported in daylight: which one depends on
        # the time of day, their sum moves at any hour (demand is never zero for the whole run).
        frames = [json.loads(line) for line in (folder / "frames.jsonl").read_text().splitlines()
                  if line.startswith("{") and line.endswith("}")]
        starts = [i for i, f in enumerate(frames) if f["event"] == "start"]
        assert len(starts) == 2
        first_answer = next(f for f in frames[starts[1]:] if f["event"] == "answer")
        assert saved >= Fraction("12345.678") and saved_received >= 0
        assert saved + saved_received > Fraction("12345.678")
        assert Fraction(first_answer["kwh_exact"]) >= saved
        assert Fraction(first_answer["received_kwh_exact"]) >= saved_received
    finally:
        third.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_port_in_use_is_named_with_the_way_out(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "openseg_emulator.devstack", "--dir", str(tmp_path / "r"),
                              "--lan-port", str(port)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and f"Port {port} is in use" in run.stderr and "make run PORT=" in run.stderr
    assert not (tmp_path / "r" / "gateway").exists()


def test_register_state_round_trips_exactly_and_refuses_what_it_did_not_write(tmp_path):
    from openseg_emulator import register_state
    path = tmp_path / "meter-state.json"
    assert register_state.load(path) is None
    register_state.save(path, Fraction(123456789, 7), Fraction(1, 3))
    assert register_state.load(path) == (Fraction(123456789, 7), Fraction(1, 3))
    for text in ("{", '{"kwh": "1"}', '{"kwh": "-1", "received_kwh": "0"}', '{"kwh": "x", "received_kwh": "0"}'):
        path.write_text(text)
        with pytest.raises(register_state.StateFileError):
            register_state.load(path)
    run = subprocess.run([sys.executable, "-m", "openseg_emulator.main", "--link", str(tmp_path / "x"),
                          "--state-file", str(path)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "--state-file:" in run.stderr and "Traceback" not in run.stderr
