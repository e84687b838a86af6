"""GET /metrics as a real Prometheus server (Debian package `prometheus`) scrapes it from a live stack
(emulator -> HAN -> LAN) over TLS with basic_auth, queried through Prometheus's HTTP API; the values
are checked against what the emulated meter answered (its frame log), not against the gateway itself.
The text format is also checked by `promtool check metrics` (the same package), which enforces the
ecosystem's naming conventions (base units, `_total` counters)."""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from tests.support.channel_messages import SCALING_3_10000, Clock, gap, reading, status
from openseg.lan_server.http import web_resources
from openseg.lan_server.state.readings import Readings
from openseg_emulator.devstack import free_port
from tests.support.readme_recipes import recipe
from tests.system.test_faults_witness import FaultStack, poll_reads

pytestmark = pytest.mark.integration
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MULTIPLIER, DIVISOR = 3, 10000          # 0.3 Wh per count: a scaling bug shows in every value


def _require(tool: str | None, name: str) -> str:
    if tool is None:
        pytest.fail(f"{name} is not installed (Debian: apt-get install prometheus); `make test` installs it")
    return tool


def test_the_exposition_passes_promtool_and_says_what_it_holds():
    promtool = _require(PROMTOOL, "promtool")
    clock = Clock()
    r = Readings(30.0, clock=clock)
    counters = {"received": 3, "rejected": 1, "rejected_by_reason": {"oversized": 1, "foreign-uid": 0},
                "seq_gaps": 0, "seq_missing": 0, "han_restarts": 0, "last_seq": 2}
    empty = web_resources.metrics_text(r, counters, 1.0)
    assert empty.status == 200 and empty.content_type.startswith("text/plain; version=0.0.4")
    # No value yet: no sample (a 0 would be a wrong reading), and the freshness says so.
    assert b"openseg_energy_imported_joules_total" not in empty.body
    assert b"openseg_power_watts" not in empty.body
    assert b'openseg_data_status{status="no-data"} 1' in empty.body

    r.apply(status(0, clock(), queries_total=10, queries_lost=1))
    r.apply(reading(1, 11, clock(), demand=-7, summation=(1 << 48) - 1, scaling=SCALING_3_10000, received=5))
    r.apply(gap(2, 12, clock.advance(7), cause="zcl-status"))
    text = web_resources.metrics_text(r, counters, 1.0).body.decode()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    # A 48-bit register at 0.3 Wh a count, times 3600 J/Wh, every digit written out.
    assert samples["openseg_energy_imported_joules_total"] == "303992974847507400"
    assert samples["openseg_energy_exported_joules_total"] == "5400"       # 5 counts = 1.5 Wh
    assert samples["openseg_power_watts"] == "-2.1"
    assert samples["openseg_queries_total"] == "12"                 # 10 reported + a reading + a loss
    assert samples['openseg_queries_lost_total{cause="timeout"}'] == "1"
    assert samples['openseg_queries_lost_total{cause="zcl-status"}'] == "1"
    assert samples['openseg_han_state{state="polling"}'] == "1"
    assert samples['openseg_han_state{state="joining"}'] == "0"
    assert samples['openseg_channel_rejected_total{reason="oversized"}'] == "1"
    assert samples["openseg_history_enabled"] == "0"
    # Events start as true zeros; a register jump no service could draw is counted as it happens.
    assert samples["openseg_register_breaks_total"] == samples["openseg_meter_changes_total"] == "0"
    assert samples["openseg_clock_moves_total"] == samples["openseg_channel_lost_slots_total"] == "0"
    r.apply(reading(3, 13, clock.advance(7), summation=(1 << 48) - 1 + 10**9, scaling=SCALING_3_10000))
    after = web_resources.metrics_text(r, {**counters, "internal_errors": 2, "queue_len": 513}, 1.0).body.decode()
    check = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    samples = dict(line.rsplit(" ", 1) for line in after.splitlines() if not line.startswith("#"))
    assert samples["openseg_register_breaks_total"] == "1"
    assert samples["openseg_channel_internal_errors_total"] == "2"
    assert samples["openseg_channel_queue_length"] == "513"


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping one target every second; stops with the test."""

    def __init__(self, workdir: Path, stack: FaultStack):
        self.dir = workdir
        self.port = free_port()
        password_file = workdir / "gateway-password"
        password_file.write_text(stack.password)
        password_file.chmod(0o600)
        # The README's scrape job as written, with this stack's user, files, target and a fast interval.
        config = yaml.safe_load(recipe("prometheus-scrape"))
        [job] = config["scrape_configs"]
        job["scrape_interval"] = job["scrape_timeout"] = "1s"
        job["basic_auth"].update(username=stack.username, password_file=str(password_file))
        job["tls_config"]["ca_file"] = stack.cafile
        job["static_configs"] = [{"targets": [f"127.0.0.1:{stack.port}"]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [_require(PROMETHEUS, "prometheus"), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def query(self, expr: str) -> dict[tuple, float]:
        """An instant query: {sorted label pairs without __name__: value}; {} until Prometheus answers."""
        if self.proc.poll() is not None:
            pytest.fail("prometheus exited:\n" + (self.dir / "prometheus.log").read_text()[-3000:])
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                answer = json.load(resp)
        except OSError:
            return {}
        assert answer["status"] == "success", answer
        return {tuple(sorted((k, v) for k, v in s["metric"].items() if k != "__name__")): float(s["value"][1])
                for s in answer["data"]["result"]}

    def value(self, expr: str) -> float | None:
        got = self.query(expr)
        return next(iter(got.values())) if len(got) == 1 else None


def test_a_real_prometheus_scrapes_the_gateway_and_its_numbers_are_the_meters():
    with FaultStack(1.0, timeout=0.4, emulator_args=["--multiplier", str(MULTIPLIER), "--divisor",
                                                    str(DIVISOR), "--drop-rate", "0.2"]) as s:
        s.until_polling(readings=3)
        prom = Prometheus(s.tmp, s)
        try:
            s.until(lambda: prom.value('up{job="openseg"}') == 1, "Prometheus to scrape /metrics")
            s.until(lambda: prom.value('openseg_han_state{state="polling"}') == 1, "HAN state polling")
            assert prom.value("openseg_history_enabled") == 1
            assert prom.value("openseg_channel_received_total") > 0

            # Freeze the gateway's numbers: stop the HAN, then take the meter's last answer as truth.
            s.stop_han()
            reads = poll_reads(s.all_frames())
            answered = [r for r in reads if r.answered is not None]
            last = answered[-1].attrs
            wh = Fraction(last["0x0000"] * MULTIPLIER, DIVISOR) * 1000
            watts = Fraction(last["0x0400"] * MULTIPLIER, DIVISOR) * 1000
            joules = float(wh * 3600)
            s.until(lambda: prom.value("openseg_energy_imported_joules_total") == joules,
                    f"Prometheus to hold {joules} J (the meter's last summation, {float(wh)} Wh)")
            assert prom.value("openseg_power_watts") == float(watts)
            # The meter's export register (CurrentSummationReceived), which this emulated meter serves.
            exported_wh = Fraction(last["0x0001"] * MULTIPLIER, DIVISOR) * 1000
            assert prom.value("openseg_energy_exported_joules_total") == float(exported_wh * 3600)
            # Never backwards over the whole run (a counter Prometheus would otherwise call a reset).
            assert prom.value("resets(openseg_energy_imported_joules_total[5m])") == 0
            assert prom.value("resets(openseg_energy_exported_joules_total[5m])") == 0

            # Every query the emulator received, each dropped one a timeout; the last one may have
            # been in flight when the HAN stopped (then it has no outcome and is not counted).
            total = prom.value("openseg_queries_total")
            assert total in (len(reads), len(reads) - 1), (total, len(reads))
            counted = reads[:int(total)]
            lost = prom.query("openseg_queries_lost_total")
            assert lost[(("cause", "timeout"), ("instance", f"127.0.0.1:{s.port}"), ("job", "openseg"))] \
                == sum(1 for r in counted if r.fault == "drop")
            assert sum(lost.values()) == sum(1 for r in counted if r.fault is not None) > 0
        finally:
            prom.stop()
