"""`openseg-mqtt --config F`: reads the gateway's JSON every `[mqtt] interval_s` and publishes it to an
MQTT broker with Home Assistant discovery (discovery.py says what and where).

One plain loop: learn the gateway's subscription id (the node id in every topic), connect to the
broker (again and again with a doubling wait, 1 s up to 60 s, while it is down), then every interval
read /api/v1/current and /api/v1/status and publish what changed. paho-mqtt speaks the protocol; its
network work happens in this loop's `client.loop()` calls, so there is no thread of ours to watch.
Without an `[mqtt]` section the process is off: it says so and exits 2.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt

from openseg.shared_schema import config as config_schema
from openseg.shared_schema import sd_notify
from .discovery import NeverDown, Topics, discovery_messages, node_id, state_messages, states
from .gateway import Gateway, GatewayError

log = logging.getLogger("openseg.mqtt")
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 60.0
KEEPALIVE_S = 60
QOS = 1


class StartupError(Exception):
    pass


class Backoff:
    """1, 2, 4 … BACKOFF_MAX_S seconds between attempts; back to the start after a success."""

    def __init__(self, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S):
        self.first, self.cap, self.wait = first, cap, first

    def next(self) -> float:
        wait, self.wait = self.wait, min(self.cap, self.wait * 2)
        return wait

    def reset(self) -> None:
        self.wait = self.first


def _read_secret(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as exc:
        raise StartupError(f"[mqtt] {key}: cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise StartupError(f"[mqtt] {key}: {path} is empty")
    return secret


def _version() -> str:
    try:
        return importlib.metadata.version("openseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Bridge:
    def __init__(self, cfg: config_schema.Config):
        m = cfg.mqtt
        self.m = m
        if m["ca_file"] and not m["tls"]:
            raise StartupError("[mqtt] ca_file: set tls = true to use it")
        if m["password_file"] and not m["username"]:
            raise StartupError("[mqtt] password_file: needs a username")
        url = m["gateway_url"] or f"https://127.0.0.1:{cfg.lan['port']}"
        self.gateway = Gateway(url, m["gateway_username"],
                               _read_secret(m["gateway_password_file"], "gateway_password_file"),
                               m["gateway_ca_file"] or cfg.lan["certificate"])
        self.broker_password = (_read_secret(m["password_file"], "password_file") if m["password_file"]
                                else None)
        self.version = _version()
        self.topics: Topics | None = None
        self.birth_topic = ""                  # Home Assistant's status topic, once the node is known
        self.client: mqtt.Client | None = None
        self.connected = False
        self.backoff = Backoff()
        self.next_connect = 0.0
        self.floor = NeverDown()
        self.values: dict[str, str] = {}       # the last payload of every state topic key
        self.announced: set[str] = set()       # sensors whose discovery config went out on this connection
        self.gateway_problem: str | None = ""  # "" = not yet known

    # -- the gateway ---------------------------------------------------------------------------
    def learn_node(self) -> bool:
        try:
            who = self.gateway.get_json("/api/v1/whoami")
        except GatewayError as exc:
            self._gateway_state(str(exc))
            return False
        self.topics = Topics(self.m["discovery_prefix"], self.m["topic_prefix"],
                             node_id(str(who["subscription"])))
        self.birth_topic = f"{self.m['discovery_prefix']}/status"
        log.info("gateway %s: subscription %s, publishing under %s/%s", self.gateway.url,
                 who["subscription"], self.m["topic_prefix"], self.topics.node)
        return True

    def read_gateway(self) -> dict[str, str]:
        try:
            current = self.gateway.get_json("/api/v1/current")
            status = self.gateway.get_json("/api/v1/status")
        except GatewayError as exc:
            self._gateway_state(str(exc))
            return states(None, None, self.floor)
        self._gateway_state(None)
        return states(current, status, self.floor)

    def _gateway_state(self, problem: str | None) -> None:
        if problem != self.gateway_problem:
            if problem:
                log.warning("gateway unreachable: %s", problem)
            else:
                log.info("gateway answers")
            self.gateway_problem = problem

    # -- the broker ----------------------------------------------------------------------------
    def make_client(self) -> mqtt.Client:
        m = self.m
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=m["client_id"],
                             protocol=mqtt.MQTTv311)
        if m["tls"]:
            client.tls_set(ca_certs=m["ca_file"])
        if m["username"]:
            client.username_pw_set(m["username"], self.broker_password)
        client.will_set(self.topics.bridge, "offline", qos=QOS, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def connect(self, now: float) -> None:
        try:
            self.client.connect(self.m["host"], self.m["port"], keepalive=KEEPALIVE_S)
        except (OSError, ValueError) as exc:
            wait = self.backoff.next()
            log.warning("broker %s:%d: %s; again in %g s", self.m["host"], self.m["port"], exc, wait)
            self.next_connect = now + wait
        else:
            self.next_connect = now + self.backoff.next()   # if the CONNACK never comes

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.m["host"], self.m["port"], reason_code)
            return
        log.info("connected to broker %s:%d", self.m["host"], self.m["port"])
        self.connected = True
        self.backoff.reset()
        self.announced.clear()
        self.publish(self.values)      # the configs and the last states again: the broker may be new
        # Home Assistant's birth message: when it (re)starts it says `online` here; answer with the
        # configs and states again, in case its broker lost what was retained.
        client.subscribe(self.birth_topic, qos=QOS)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == self.birth_topic and message.payload == b"online" and self.connected:
            log.info("Home Assistant announced itself; publishing the configs and states again")
            self.announced.clear()
            self.publish(self.values)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected:
            log.warning("broker connection lost: %s", reason_code)
        self.connected = False
        self.next_connect = time.monotonic() + self.backoff.next()

    def publish(self, values: dict[str, str]) -> None:
        if not self.connected:
            return
        new = [k for k in values if k not in self.announced and k not in ("bridge", "data")]
        messages = discovery_messages(self.topics, new, self.gateway.url, self.version)
        self.announced.update(new)
        for msg in messages + state_messages(self.topics, values):
            self.client.publish(msg.topic, msg.payload, qos=QOS, retain=msg.retain)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> int:
        interval = self.m["interval_s"]
        while self.topics is None:
            # Not READY yet: systemd's start timeout covers a gateway that never answers.
            if self.learn_node():
                break
            if stop.wait(interval):
                return 0
        self.client = self.make_client()
        dog = sd_notify.Watchdog({"loop"})
        sd_notify.notify("READY=1", sd_notify.status_text(f"publishing to {self.m['host']}:{self.m['port']}"))
        next_read = time.monotonic()
        while not stop.is_set():
            dog.beat("loop")        # the loop turns at least once a second, broker or not
            now = time.monotonic()
            if not self.connected and now >= self.next_connect:
                self.connect(now)
            if now >= next_read:
                values = self.read_gateway()
                changed = {k: v for k, v in values.items() if self.values.get(k) != v}
                self.values.update(values)
                self.publish(changed)
                next_read = now + interval
            deadline = next_read if self.connected else min(next_read, self.next_connect)
            wait = max(0.0, min(1.0, deadline - time.monotonic()))
            if self.client.socket() is not None:
                self.client.loop(timeout=wait)      # the broker's traffic, at most until the deadline
            else:
                stop.wait(wait)
        if self.connected:
            self.client.publish(self.topics.bridge, "offline", qos=QOS, retain=True).wait_for_publish(2)
            self.client.disconnect()
        return 0


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("openseg")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openseg-mqtt", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the gateway's TOML config file")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        cfg = config_schema.load(args.config)
        if cfg.mqtt is None:
            raise StartupError(f"{args.config}: no [mqtt] section, so openseg-mqtt is off "
                               "(README: Home Assistant)")
        bridge = Bridge(cfg)
    except (config_schema.ConfigError, StartupError, GatewayError) as exc:
        print(f"openseg-mqtt: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return bridge.run(stop)


if __name__ == "__main__":
    sys.exit(main())
