"""The real `openseg-han` against a hostile radio on a pty (tests/support/hostile_radio.py, framing of its own).

Every byte the HAN writes is recorded by the radio and judged by the radio's own verdict. The HAN must
send only reads, never answer the hostile corpus, keep frames to the meter one poll interval apart
(measured here as at least 0.9 x the interval, for the pty's scheduling), and under a radio that resets
on every Match_Desc (the reset storm) send at most 25 s / interval + 4 frames to the meter in 25 s.
"""
from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from openseg_emulator.devstack import command
from tests.support.hostile_radio import CORPUS, HostileRadio, frame, verdict

pytestmark = pytest.mark.integration
INTERVAL = 1.0


def run_han(tmp: Path, radio: HostileRadio, seconds: float) -> tuple[int, str]:
    config = tmp / "gateway.toml"
    config.write_text("\n".join([
        "[han]", f"serial_port = {json.dumps(str(radio.link))}", f"poll_interval_s = {INTERVAL}",
        "allow_fast_poll = true", "response_timeout_s = 0.4", "status_every_s = 5.0",
        "[channel]", f"socket_path = {json.dumps(str(tmp / 'readings.sock'))}"]) + "\n")
    with open(tmp / "han.log", "wb") as log:
        han = subprocess.Popen([command("openseg-han"), "--config", str(config)], stdin=subprocess.DEVNULL, stdout=log,
                               stderr=log)
        try:
            han.wait(timeout=seconds)       # it must still be running: a crash ends the wait early
            pytest.fail("openseg-han ended by itself: " + (tmp / "han.log").read_text()[-2000:])
        except subprocess.TimeoutExpired:
            pass
        han.send_signal(signal.SIGTERM)
        code = han.wait(timeout=10)
    return code, (tmp / "han.log").read_text(errors="replace")


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="hr-", dir="/tmp") as d:
        yield Path(d)


def assert_only_reads_at_the_pace(radio: HostileRadio) -> None:
    assert radio.frames, "the HAN sent nothing"
    assert radio.damaged == 0
    assert sum(len(data) for _, data in radio.written) == sum(len(frame(d)) for _, d in radio.frames), \
        "bytes written outside whole frames"
    wrong = [d.hex() for _, d in radio.frames if verdict(d) == "NOT A READ"]
    assert wrong == []
    times = radio.explicit_times()
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.9 * INTERVAL


def test_the_hostile_corpus_gets_only_reads_at_the_pace(tmp):
    with HostileRadio(tmp / "xbee") as radio:
        code, log = run_han(tmp, radio, 14.0)
    assert code == 0, log[-2000:]
    assert radio.corpus_sent >= len(CORPUS)             # every hostile input went out at least once
    assert_only_reads_at_the_pace(radio)
    polls = [d for _, d in radio.frames if verdict(d) == "zcl" and d[23:25] == b"\x00\x00"]
    assert len(polls) >= 5, log[-2000:]                 # and the meter was read all along
    assert "Traceback" not in log


def test_a_reset_storm_stays_bounded(tmp):
    with HostileRadio(tmp / "xbee", storm=True) as radio:
        start = time.monotonic()
        code, log = run_han(tmp, radio, 25.0)
    assert code == 0, log[-2000:]
    assert radio.resets >= 3
    assert_only_reads_at_the_pace(radio)
    to_meter = [t for t in radio.explicit_times() if t - start <= 25.0]
    assert len(to_meter) <= 25.0 / INTERVAL + 4
