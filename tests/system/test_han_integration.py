"""The real `openseg-han` against the real `openseg-emulator` over a pty, read through the real channel.

Each test starts both console commands as a user would, binds the channel socket itself (standing in for
the LAN process) and decodes every datagram with shared_schema. What the HAN side reports is checked
against what the emulator's frame log says happened: which values the meter answered, which answers a
fault swallowed, and that every frame the host sent was a read (no `not-a-read` record, ever).

Waits are on conditions with generous deadlines, never on bare sleeps; every process is killed in
teardown.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import pytest

from openseg.shared_schema import messages

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
INTERVAL = 0.3
TIMEOUT = 0.15
DEADLINE = 20.0          # generous: a loaded CI machine may be slow, a passing run is far quicker
POLL_READ_IDS = "000001000004"   # CurrentSummationDelivered, -Received, InstantaneousDemand, in the payload


def command(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed beside {sys.executable} (pip install -e .)"
    return str(path)


class Gateway:
    """Emulator + openseg-han in a short temporary folder (AF_UNIX paths are limited to 107 bytes)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="oh-", dir="/tmp"))
        self.link = self.dir / "xbee"
        self.frame_log = self.dir / "frames.jsonl"
        self.socket_path = self.dir / "readings.sock"
        self.config_path = self.dir / "gateway.toml"
        self.emulator: subprocess.Popen | None = None
        self.han: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.messages: list[dict] = []
        self.interval = INTERVAL

    # ---- processes -------------------------------------------------------------------------------
    def start_emulator(self, *args: str) -> None:
        argv = [command("openseg-emulator"), "--link", str(self.link), "--frame-log", str(self.frame_log),
                "--join-delay-s", "0.2", "--seed", "1", *args]
        with open(self.dir / "emulator.log", "ab") as err:
            self.emulator = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.wait_for(lambda: self.link.is_symlink(), "the emulator's pty link", self.emulator)

    def write_config(self, **han) -> None:
        values = {"serial_port": str(self.link), "poll_interval_s": self.interval, "allow_fast_poll": True,
                  "response_timeout_s": TIMEOUT, "status_every_s": 0.5, **han}
        lines = ["[han]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines += ["[channel]", f"socket_path = {json.dumps(str(self.socket_path))}"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start_han(self, **han) -> None:
        self.write_config(**han)
        if self.channel is None:
            self.channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.channel.bind(str(self.socket_path))
        with open(self.dir / "han.log", "ab") as err:
            self.han = subprocess.Popen([command("openseg-han"), "--config", str(self.config_path)],
                                        stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    def run_han(self, *extra: str, **han) -> subprocess.CompletedProcess:
        self.write_config(**han)
        return subprocess.run([command("openseg-han"), "--config", str(self.config_path), *extra],
                              capture_output=True, text=True, timeout=60)

    def stop_han(self) -> int:
        self.han.send_signal(signal.SIGTERM)
        code = self.han.wait(timeout=10)
        self.drain()
        return code

    def signal_emulator(self, sig: int, event: str) -> None:
        """Send a signal and wait until the emulator's frame log shows it acted on it."""
        before = len(self.events(event))
        self.emulator.send_signal(sig)
        self.wait_for(lambda: len(self.events(event)) > before, f"the emulator's {event!r} record")

    def close(self) -> None:
        for proc in (self.han, self.emulator):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.channel is not None:
            self.channel.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- what happened ---------------------------------------------------------------------------
    def frames(self) -> list[dict]:
        if not self.frame_log.exists():
            return []
        out = []
        for line in self.frame_log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass            # a line the emulator is still writing
        return out

    def events(self, name: str) -> list[dict]:
        return [f for f in self.frames() if f.get("event") == name]

    def poll_reads(self) -> list[int]:
        """ZCL sequence numbers of the poll reads the emulator received, in order."""
        seqs = []
        for f in self.events("rx"):
            if f.get("class") == "zcl-read":
                payload = bytes.fromhex(f["hex"])[20:]
                if payload[3:].hex() == POLL_READ_IDS:
                    seqs.append(payload[1])
        return seqs

    def scaling_reads(self) -> int:
        return sum(1 for f in self.events("rx") if f.get("class") == "zcl-read"
                   and bytes.fromhex(f["hex"])[20:][3:].hex() != POLL_READ_IDS)

    def assert_only_reads(self) -> None:
        classes = [f.get("class") for f in self.events("rx")]
        assert classes, "the emulator received no frame at all"
        assert "not-a-read" not in classes
        assert set(classes) <= {"at-query", "zdo-discovery", "zcl-read"}

    def drain(self) -> None:
        self.channel.setblocking(False)
        try:
            while True:
                self.messages.append(messages.decode(self.channel.recv(4096)))
        except BlockingIOError:
            pass
        finally:
            self.channel.setblocking(True)

    def until(self, predicate, what: str, timeout: float = DEADLINE):
        """Read channel messages until predicate(messages) is true; fail with the HAN log otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.messages)
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self.han is not None and self.han.poll() is not None):
                log = (self.dir / "han.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"waiting for {what}: states {states(self.messages)}, HAN exit "
                            f"{self.han.poll() if self.han else None}\n{log}")
            self.channel.settimeout(min(remaining, 0.5))
            try:
                self.messages.append(messages.decode(self.channel.recv(4096)))
            except socket.timeout:
                pass

    def wait_for(self, condition, what: str, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            if proc is not None and proc.poll() is not None:
                pytest.fail(f"process exited ({proc.returncode}) while waiting for {what}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.02)


def of(ms: list[dict], kind: str) -> list[dict]:
    return [m for m in ms if m["kind"] == kind]


def slots(ms: list[dict]) -> list[dict]:
    return [m for m in ms if m["kind"] in ("reading", "gap")]


def states(ms: list[dict]) -> list[str]:
    out: list[str] = []
    for m in of(ms, "status"):
        if not out or out[-1] != m["state"]:
            out.append(m["state"])
    return out


def states_since(ms: list[dict], index: int) -> list[str]:
    return states(ms[index:])


def is_subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(w in it for w in wanted)


def check_slots(ms: list[dict], interval: float = INTERVAL) -> None:
    """Every slot from 0 is one reading or one gap, and each is due at start + slot * interval."""
    got = slots(ms)
    assert [m["slot"] for m in got] == list(range(len(got)))
    reading = of(ms, "reading")[0]
    start = reading["due"] - reading["slot"] * interval
    for m in got:
        assert m["due"] == pytest.approx(start + m["slot"] * interval, abs=1e-6)


@pytest.fixture
def gw():
    gateway = Gateway()
    yield gateway
    gateway.close()


def test_readings_equal_the_meters_answers_scaled_and_time_tagged(gw):
    gw.start_emulator("--multiplier", "3", "--divisor", "10000", "--meter-endpoint", "7",
                      "--pace-baud", "9600", "--reply-delay-ms", "30")     # a real UART and a real meter
    gw.start_han()
    gw.until(lambda ms: len(of(ms, "reading")) >= 8, "eight readings")
    assert gw.stop_han() == 0
    readings = of(gw.messages, "reading")
    answers = [a for a in gw.events("answer") if "0x0000" in a["attrs"]]
    assert len(answers) >= len(readings) and not of(gw.messages, "gap")
    for r, a in zip(readings, answers):
        assert (r["summation"], r["demand"]) == (a["attrs"]["0x0000"], a["attrs"]["0x0400"])
        assert (r["scaling"]["multiplier"], r["scaling"]["divisor"], r["scaling"]["unit"]) == (3, 10000, 0)
        kwh = Fraction(r["summation"] * 3, 10000)
        kw = Fraction(r["demand"] * 3, 10000)
        step = Fraction(3, 10000)               # one register count
        assert abs(kwh - Fraction(a["kwh_exact"])) <= step and abs(kw - Fraction(a["kw_exact"])) <= step
        assert abs(r["time"] - a["t_sample"]) < 1.0 and abs(r["time"] - a["t"]) < 1.0
        assert r["due"] <= r["time"] <= r["due"] + TIMEOUT + 0.1 and 0.03 <= r["rtt_s"] < TIMEOUT
    check_slots(gw.messages)
    status = of(gw.messages, "status")[-1]
    assert status["meter"]["nwk"] == 0 and status["meter"]["endpoint"] == 7
    assert status["radio_ieee"] and status["state"] == "polling"
    assert states(gw.messages)[:3] == ["joining", "discovering", "polling"]
    assert gw.scaling_reads() == 1
    gw.assert_only_reads()


def test_lost_answers_become_gaps_for_their_own_slots(gw):
    gw.interval = 0.2
    gw.start_emulator("--drop-rate", "0.25", "--corrupt-rate", "0.1", "--seed", "7")
    gw.start_han()
    gw.until(lambda ms: len(slots(ms)) >= 30 and len(of(ms, "gap")) >= 4 and of(ms, "reading"),
             "thirty slots with some gaps")
    assert gw.stop_han() == 0
    outcome = {a["zcl_seq"]: "answer" for a in gw.events("answer")}
    outcome.update({f["zcl_seq"]: f["fault"] for f in gw.events("fault")})
    reads = gw.poll_reads()
    got = slots(gw.messages)
    assert len(reads) >= len(got)
    for m, seq in zip(got, reads):          # slot k was the k-th poll read the emulator received
        if m["kind"] == "reading":
            assert outcome[seq] == "answer", m
        else:
            assert outcome[seq] in ("drop", "corrupt") and m["cause"] == "timeout", m
    check_slots(gw.messages, gw.interval)
    # the counters agree with the faults the emulator injected, as of the last status sent
    last = max(i for i, m in enumerate(gw.messages) if m["kind"] == "status")
    before = gw.messages[:last]
    status = gw.messages[last]
    faults = sum(1 for m, seq in zip(slots(before), reads) if outcome[seq] != "answer")
    assert status["queries_lost"] == faults == len(of(before, "gap"))
    assert status["lost_by_cause"]["timeout"] == faults
    assert status["queries_total"] == len(slots(before))
    corrupted = sum(1 for m, seq in zip(slots(before), reads) if outcome[seq] == "corrupt")
    assert status["frames_bad"] >= corrupted
    gw.assert_only_reads()


def test_radio_reset_rejoins_rediscovers_and_resumes(gw):
    gw.start_emulator()
    gw.start_han()
    gw.until(lambda ms: len(of(ms, "reading")) >= 3, "three readings")
    mark = len(gw.messages)
    gw.signal_emulator(signal.SIGUSR1, "reset")
    gw.until(lambda ms: is_subsequence(["joining", "discovering", "polling"], states_since(ms, mark))
             and len(of(ms[mark:], "reading")) >= 3, "joining, discovering, polling and readings again")
    assert gw.stop_han() == 0
    after = gw.messages[mark:]
    assert {g["cause"] for g in of(after, "gap")} <= {"not-polling"}
    assert gw.scaling_reads() == 2                  # the scaling is read again after a radio reset
    check_slots(gw.messages)
    gw.assert_only_reads()
    # The pace law, measured by the emulator: over the start and the reset, no two frames to the meter
    # (discovery, the scaling reads, the polls) closer than the poll interval (0.9 x for the pty's jitter).
    to_meter = [f["t"] for f in gw.events("rx") if f.get("class") in ("zdo-discovery", "zcl-read")]
    assert len(to_meter) >= 12
    assert min(b - a for a, b in zip(to_meter, to_meter[1:])) >= 0.9 * gw.interval


def test_meter_power_loss_gives_gaps_then_polling_resumes(gw):
    gw.start_emulator()
    gw.start_han()
    gw.until(lambda ms: len(of(ms, "reading")) >= 3, "three readings")
    mark = len(gw.messages)
    gw.signal_emulator(signal.SIGUSR2, "meter-power")
    gw.until(lambda ms: "meter-unreachable" in states_since(ms, mark), "meter-unreachable")
    mark2 = len(gw.messages)
    gw.signal_emulator(signal.SIGUSR2, "meter-power")
    gw.until(lambda ms: "polling" in states_since(ms, mark2) and len(of(ms[mark2:], "reading")) >= 2,
             "polling again")
    assert gw.stop_han() == 0
    gaps = of(gw.messages[mark:], "gap")
    assert len(gaps) >= 3 and {g["cause"] for g in gaps} <= set(messages.LOST_CAUSES)
    status = of(gw.messages, "status")[-1]
    assert status["queries_lost"] == len(of(gw.messages[:gw.messages.index(status)], "gap"))
    assert gw.scaling_reads() == 1                  # a meter that was off is not rediscovered
    check_slots(gw.messages)
    gw.assert_only_reads()


def test_serial_device_vanishing_is_radio_down_then_reopened(gw):
    gw.start_emulator()
    gw.start_han()
    gw.until(lambda ms: len(of(ms, "reading")) >= 3, "three readings")
    mark = len(gw.messages)
    gw.emulator.send_signal(signal.SIGTERM)         # the pty goes away, as an unplugged USB radio does
    assert gw.emulator.wait(timeout=10) == 0
    down = gw.until(lambda ms: next((m for m in of(ms[mark:], "status") if m["state"] == "radio-down"), None),
                    "radio-down")
    assert gw.han.poll() is None, "the HAN process keeps running without its port"
    gw.until(lambda ms: len(of(ms[mark:], "gap")) >= 3, "slots passing while the radio is down")
    mark2 = len(gw.messages)
    gw.start_emulator()                             # the same device name comes back (frame log appends)
    gw.until(lambda ms: is_subsequence(["joining", "discovering", "polling"], states_since(ms, mark2))
             and len(of(ms[mark2:], "reading")) >= 2, "polling on the reopened port")
    assert gw.stop_han() == 0
    assert "radio-down" in states(gw.messages[mark:mark2 + 1]) and down["detail"]
    assert {g["cause"] for g in of(gw.messages[mark:], "gap")} == {"not-polling"}
    check_slots(gw.messages)
    gw.assert_only_reads()


def test_meter_at_another_address_is_a_mismatch(gw):
    gw.start_emulator("--meter-address", "0x1234")
    gw.start_han()
    status = gw.until(lambda ms: next((m for m in of(ms, "status")
                                       if m["state"] == "meter-address-mismatch"), None),
                      "meter-address-mismatch")
    assert "0x1234" in status["detail"] and "meter" not in status
    # it keeps retrying discovery, and never reads from the wrong node
    gw.wait_for(lambda: sum(1 for f in gw.events("rx") if f.get("class") == "zdo-discovery") >= 6,
                "discovery retries")
    assert gw.stop_han() == 0
    assert not slots(gw.messages) and gw.scaling_reads() == 0 and not gw.poll_reads()
    gw.assert_only_reads()


def test_a_meter_that_never_answers_is_unreachable_until_it_does(gw):
    gw.start_emulator()
    gw.signal_emulator(signal.SIGUSR2, "meter-power")          # off before the HAN side starts
    gw.start_han()
    gw.until(lambda ms: "meter-unreachable" in states(ms), "meter-unreachable")
    assert not slots(gw.messages)
    gw.signal_emulator(signal.SIGUSR2, "meter-power")
    gw.until(lambda ms: of(ms, "reading"), "a reading once the meter is back")
    assert gw.stop_han() == 0
    assert states(gw.messages) == ["joining", "discovering", "meter-unreachable", "polling"]
    gw.assert_only_reads()


def test_the_production_floor_of_7_seconds(gw):
    gw.start_emulator()
    refused = gw.run_han(poll_interval_s=1.0, allow_fast_poll=False, response_timeout_s=0.5)
    assert refused.returncode == 2
    assert "[han] poll_interval_s" in refused.stderr and "7 s" in refused.stderr
    assert not gw.events("rx"), "a refused configuration opens nothing"
    # exactly 7 s is allowed without the lab switch: at the meter's pace, IEEE_addr_req, Match_Desc, the
    # scaling read and slot 0 go 7 s apart, and the next slot 7 s later
    gw.start_han(poll_interval_s=7.0, allow_fast_poll=False)
    first = gw.until(lambda ms: next(iter(of(ms, "reading")), None), "the first reading", timeout=45.0)
    gw.until(lambda ms: False if time.time() < first["time"] + 2.0 else True, "two more seconds")
    assert gw.stop_han() == 0
    assert len(gw.poll_reads()) == 1
    assert of(gw.messages, "status")[-1]["poll_interval_s"] == 7.0
    gw.assert_only_reads()


def test_check_reports_a_ready_gateway(gw):
    gw.start_emulator("--meter-endpoint", "11", "--multiplier", "3", "--divisor", "10000")
    result = gw.run_han("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in ["firmware: 0x3362 (Smart Energy router firmware)", "hardware: 0x1A42",
                     "api mode: AP=2 (API with escaping): OK", "explicit receive: AO=1",
                     "join: AI=0x00: joined and authenticated", "radio IEEE address: 00:13:a2:",
                     "meter: answered from 0x0000 endpoint 11", "multiplier 3, divisor 10000",
                     "result: READY"]:
        assert expected in out, out
    gw.assert_only_reads()


@pytest.mark.parametrize("emulator_args, words", [
    (["--meter-address", "0x1234"], "meter: METER-ADDRESS-MISMATCH"),
    (["--api-mode", "1"], "api mode: AP=1: WRONG"),
    (["--firmware", "0x3162", "--api-options", "0"], "explicit receive: AO=0: WRONG"),
])
def test_check_says_what_is_wrong_and_exits_1(gw, emulator_args, words):
    gw.start_emulator(*emulator_args)
    result = gw.run_han("--check")
    assert result.returncode == 1 and words in result.stdout, result.stdout
    assert "result: NOT READY" in result.stdout
    gw.assert_only_reads()


def test_a_radio_in_the_wrong_api_mode_stops_the_service_with_exit_3(gw):
    gw.start_emulator("--api-mode", "1")
    gw.start_han()
    assert gw.han.wait(timeout=DEADLINE) == 3
    gw.drain()
    assert of(gw.messages, "status")[-1]["state"] == "radio-down"
    assert "AP=1" in (gw.dir / "han.log").read_text()
    gw.assert_only_reads()
