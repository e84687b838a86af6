"""openseg-mqtt: the real process between a live stack (emulator -> HAN -> LAN) and a real mosquitto
broker (Debian package) over TLS with a username, watched by mosquitto's own command-line client
(`mosquitto_sub`, which prints each message's retain flag): topics, payloads, retain flags, values against
the emulator's answers, and a broker restart. The pure parts (discovery configs, states, backoff) are in
tests/mqtt_bridge/."""
from __future__ import annotations

import getpass
import json
import shutil
import subprocess
import time
import tomllib
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from openseg.mqtt_bridge import discovery
from openseg_emulator.devstack import command, dump_toml, free_port
from tests.support.readme_recipes import recipe
from tests.system.test_faults_witness import FaultStack, poll_reads

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
MOSQUITTO_SUB = shutil.which("mosquitto_sub")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
MOSQUITTO_PUB = shutil.which("mosquitto_pub")


# ---- the command -------------------------------------------------------------------------------------
def run_bridge(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([command("openseg-mqtt"), "--config", str(config)], capture_output=True, text=True,
                          timeout=30)


def test_off_unless_configured_and_one_line_errors(tmp_path):
    init = subprocess.run([command("openseg-admin"), "init", "--dir", str(tmp_path / "gw")],
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    config = tmp_path / "gw" / "gateway.toml"
    out = run_bridge(config)
    assert out.returncode == 2 and "no [mqtt] section, so openseg-mqtt is off" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    base = config.read_text()
    for section, message in [
        ('host = "127.0.0.1"\ngateway_username = "u"', "[mqtt] gateway_password_file: missing"),
        ('host = "127.0.0.1"\ngateway_username = "u"\ngateway_password_file = "nope"',
         "[mqtt] gateway_password_file: cannot read"),
        ('host = "127.0.0.1"\nport = 0\ngateway_username = "u"\ngateway_password_file = "x"', "[mqtt] port:"),
        ('host = "b"\ntopic_prefix = "a/#"\ngateway_username = "u"\ngateway_password_file = "x"',
         "[mqtt] topic_prefix:"),
    ]:
        config.write_text(base + "\n[mqtt]\n" + section + "\n")
        out = run_bridge(config)
        assert out.returncode == 2 and message in out.stderr, (section, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1


# ---- against a real broker -----------------------------------------------------------------------------
class Mosquitto:
    """A mosquitto broker on 127.0.0.1 with TLS (the gateway's own certificate, which names 127.0.0.1)
    and one user; no persistence, so a restart forgets every retained message."""

    def __init__(self, workdir: Path, cert: str, key: str):
        for tool, name in ((MOSQUITTO, "mosquitto"), (MOSQUITTO_SUB, "mosquitto_sub"),
                           (MOSQUITTO_PASSWD, "mosquitto_passwd")):
            if tool is None:
                pytest.fail(f"{name} is not installed (Debian: apt-get install mosquitto mosquitto-clients); "
                            "`make test` installs it")
        self.dir, self.cafile = workdir, cert
        self.port = free_port()
        self.user, self.password = "ha", "broker-secret"
        passwd = workdir / "mosquitto.passwd"
        subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(passwd), self.user, self.password], check=True,
                       capture_output=True, timeout=30)
        (workdir / "mosquitto.conf").write_text(
            f"user {getpass.getuser()}\npersistence false\nallow_anonymous false\npassword_file {passwd}\n"
            f"log_dest stderr\nlistener {self.port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while b"mosquitto version" not in (self.dir / "mosquitto.log").read_bytes() or not self._listening():
            assert self.proc.poll() is None, (self.dir / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)

    def _listening(self) -> bool:
        import socket
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def sub_args(self, *topics: str) -> list[str]:
        args = [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(self.port), "--cafile", self.cafile,
                "-u", self.user, "-P", self.password, "-F", "%r\t%t\t%p"]
        for t in topics:
            args += ["-t", t]
        return args

    def retained(self, *topics: str) -> dict[str, tuple[int, str]]:
        """What a new subscriber gets at once: {topic: (retain flag, payload)}."""
        out = subprocess.run(self.sub_args(*topics) + ["--retained-only", "-W", "1"], capture_output=True,
                             text=True, timeout=20)
        got = {}
        for line in out.stdout.splitlines():
            flag, topic, payload = line.split("\t", 2)
            got[topic] = (int(flag), payload)
        return got


def test_openseg_mqtt_publishes_the_meter_to_a_real_broker_and_survives_its_restart():
    with FaultStack(1.0, timeout=0.4, lan={"stale_after_s": 3.0}) as s:
        broker = Mosquitto(s.tmp, s.cafile, str(s.gateway_dir / "tls" / "key.pem"))
        broker.start()
        gw_password = s.tmp / "gw-password"
        gw_password.write_text(s.password + "\n")
        broker_password = s.tmp / "broker-password"
        broker_password.write_text(broker.password + "\n")
        # The README's [mqtt] section as written, pointed at this broker, this gateway and these files.
        section = tomllib.loads(recipe("mqtt-config"))["mqtt"]
        section.update(host="127.0.0.1", port=broker.port, ca_file=s.cafile, username=broker.user,
                       password_file=str(broker_password), interval_s=0.5, gateway_username=s.username,
                       gateway_password_file=str(gw_password))
        assert section["tls"] is True
        config = s.config_path.read_text() + dump_toml({"mqtt": section})
        s.config_path.write_text(config)
        node = discovery.node_id(s.subscription)
        state = f"openseg/{node}"
        live = subprocess.Popen(broker.sub_args(f"{state}/energy_imported"), stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        log = open(s.tmp / "mqtt.log", "ab")
        bridge = subprocess.Popen([command("openseg-mqtt"), "--config", str(s.config_path)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        try:
            s.until_polling(readings=2)
            want = {f"homeassistant/sensor/{node}/{k}/config" for k in
                    ("power", "energy_imported", "meter_link", "last_reading")}
            want |= {f"{state}/{k}" for k in ("bridge", "data", "power", "energy_imported", "meter_link",
                                              "last_reading")}

            def all_retained():
                got = broker.retained("homeassistant/#", "openseg/#")
                return got if want <= got.keys() else None
            got = s.until(all_retained, "openseg-mqtt's retained configs and states")
            assert all(flag == 1 for flag, _ in got.values()), got
            config_power = json.loads(got[f"homeassistant/sensor/{node}/power/config"][1])
            assert config_power["state_topic"] == f"{state}/power" and config_power["unit_of_measurement"] == "W"
            assert got[f"{state}/bridge"][1] == "online" and got[f"{state}/meter_link"][1] == "polling"

            # The meter's numbers: stop the HAN, then the last answer is the truth.
            s.stop_han()
            answered = [r for r in poll_reads(s.all_frames()) if r.answered is not None]
            raw = answered[-1].attrs
            kwh = Fraction(raw["0x0000"], 1000)          # the emulator's default 1/1000 kWh per count
            watts = raw["0x0400"]
            s.until(lambda: (Fraction(Decimal(broker.retained(f"{state}/energy_imported")
                                              .get(f"{state}/energy_imported", (0, "0"))[1])) == kwh),
                    f"energy_imported {float(kwh)} kWh (the meter's last register)")
            assert Decimal(broker.retained(f"{state}/power")[f"{state}/power"][1]) == watts
            exported = broker.retained(f"homeassistant/sensor/{node}/energy_exported/config", f"{state}/energy_exported")
            if "0x0001" in raw:          # the gateway reads the meter's export register: kWh, exactly
                s.until(lambda: Fraction(Decimal(broker.retained(f"{state}/energy_exported")
                                                 .get(f"{state}/energy_exported", (0, "-1"))[1]))
                        == Fraction(raw["0x0001"], 1000), "energy_exported, the meter's received register")
            else:                        # it does not: no sensor for it, no state, never a made-up 0
                assert exported == {}, exported
            # The gateway's data turns stale without the HAN: the numbers become unavailable.
            s.until(lambda: broker.retained(f"{state}/data").get(f"{state}/data", (0, ""))[1] == "offline",
                    "the data availability to say offline")

            # A broker restart forgets everything retained; openseg-mqtt reconnects and says it all again.
            broker.stop()
            broker.start()
            got = s.until(all_retained, "the configs and states again after the broker restarted")
            assert got[f"{state}/bridge"] == (1, "online") and got[f"{state}/data"] == (1, "offline")
            assert Fraction(Decimal(got[f"{state}/energy_imported"][1])) == kwh
            assert "connection lost" in (s.tmp / "mqtt.log").read_text()

            # Home Assistant's birth message brings back a config its broker lost.
            lost = f"homeassistant/sensor/{node}/power/config"
            pub = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", broker.cafile,
                   "-u", broker.user, "-P", broker.password, "-q", "1"]
            subprocess.run(pub + ["-r", "-n", "-t", lost], check=True, timeout=20)       # retained: deleted
            assert lost not in broker.retained(lost)
            subprocess.run(pub + ["-t", "homeassistant/status", "-m", "online"], check=True, timeout=20)
            s.until(lambda: lost in broker.retained(lost), "the config again after Home Assistant's birth message")

            # The gateway itself gone: everything unavailable; back: available again.
            def bridge_says(word):
                return lambda: broker.retained(f"{state}/bridge").get(f"{state}/bridge", (0, ""))[1] == word
            s.stop_lan()
            s.until(bridge_says("offline"), "bridge offline while the gateway does not answer")
            s.start_lan()
            s.until(bridge_says("online"), "bridge online once the gateway answers again")

            # Stopped cleanly, the bridge says it is gone (and the broker's last will would, if it died).
            bridge.terminate()
            assert bridge.wait(timeout=15) == 0
            assert broker.retained(f"{state}/bridge")[f"{state}/bridge"] == (1, "offline")
        finally:
            if bridge.poll() is None:
                bridge.kill()
                bridge.wait()
            live.terminate()
            seen, _ = live.communicate(timeout=10)
            broker.stop()
        # Over the whole run the energy total never went down.
        values = [Decimal(line.split("\t")[2]) for line in seen.splitlines()]
        assert values and values == sorted(values), values
