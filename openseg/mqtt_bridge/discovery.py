"""What openseg-mqtt publishes, as pure functions of the gateway's JSON: Home Assistant MQTT discovery
configs and the states that go with them (home-assistant.io/integrations/mqtt, "MQTT Discovery" and
"MQTT Sensor").

Topics, for topic prefix P, discovery prefix D and node N (from the gateway's subscription id):
  D/sensor/N/<key>/config   the discovery config of each sensor (retained)
  P/N/<key>                 its state (retained), a plain number or word
  P/N/bridge                `online` while openseg-mqtt is connected and the gateway answers, else
                            `offline` (also the broker's last will, for a bridge that dies)
  P/N/data                  `online` while the gateway's data is fresh (status `ok`), else `offline`
The measurement sensors are available only when both say online; the diagnostic ones when the bridge
does, so a household still sees "meter unreachable" while the numbers are unavailable.

Energy totals are `total_increasing`: Home Assistant takes any decrease as a new meter cycle and books
the whole register as consumption, so a value below one already published is never published
(`NeverDown`). A quantity the gateway does not report (no value yet, or no export register) is not
published at all, never as 0.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable, Mapping

from openseg.shared_schema.messages import HAN_STATES

ONLINE, OFFLINE = "online", "offline"


@dataclass(frozen=True)
class Sensor:
    key: str
    name: str
    unit: str | None
    device_class: str
    state_class: str | None
    diagnostic: bool


POWER = Sensor("power", "Power", "W", "power", "measurement", False)
IMPORTED = Sensor("energy_imported", "Energy imported", "kWh", "energy", "total_increasing", False)
EXPORTED = Sensor("energy_exported", "Energy exported", "kWh", "energy", "total_increasing", False)
METER_LINK = Sensor("meter_link", "Meter link", None, "enum", None, True)
LAST_READING = Sensor("last_reading", "Last reading", None, "timestamp", None, True)
SENSORS = (POWER, IMPORTED, EXPORTED, METER_LINK, LAST_READING)


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool = True


@dataclass(frozen=True)
class Topics:
    discovery_prefix: str
    topic_prefix: str
    node: str

    def state(self, key: str) -> str:
        return f"{self.topic_prefix}/{self.node}/{key}"

    def config(self, key: str) -> str:
        return f"{self.discovery_prefix}/sensor/{self.node}/{key}/config"

    @property
    def bridge(self) -> str:
        return self.state("bridge")

    @property
    def data(self) -> str:
        return self.state("data")


def node_id(subscription: str) -> str:
    """A topic level and unique-id stem from the gateway's subscription id (letters, digits, _)."""
    return "openseg_" + re.sub(r"[^A-Za-z0-9_]", "_", subscription)[:48]


def config_message(topics: Topics, sensor: Sensor, gateway_url: str, version: str) -> Message:
    availability = [{"topic": topics.bridge}] + ([] if sensor.diagnostic else [{"topic": topics.data}])
    config: dict[str, Any] = {
        "name": sensor.name,
        "unique_id": f"{topics.node}_{sensor.key}",
        "state_topic": topics.state(sensor.key),
        "device_class": sensor.device_class,
        "availability": availability,
        "availability_mode": "all",
        "device": {"identifiers": [topics.node], "name": "OpenSEG meter gateway", "manufacturer": "OpenSEG",
                   "model": "ZigBee Smart Energy gateway", "sw_version": version,
                   "configuration_url": gateway_url},
        "origin": {"name": "openseg-mqtt", "sw_version": version},
    }
    if sensor.unit:
        config["unit_of_measurement"] = sensor.unit
    if sensor.state_class:
        config["state_class"] = sensor.state_class
    if sensor.diagnostic:
        config["entity_category"] = "diagnostic"
    if sensor is METER_LINK:
        config["options"] = list(HAN_STATES)
    return Message(topics.config(sensor.key), json.dumps(config, separators=(",", ":")))


class NeverDown:
    """The last energy total published per sensor; a lower one is held back (a meter exchange, or a
    register read wrongly), so Home Assistant never sees a total_increasing sensor go down."""

    def __init__(self):
        self.last: dict[str, Decimal] = {}
        self.held_back = 0

    def admit(self, key: str, value: Decimal) -> bool:
        if key in self.last and value < self.last[key]:
            self.held_back += 1
            return False
        self.last[key] = value
        return True


def _text(value: Decimal) -> str:
    return format(value, "f")       # the gateway's exact digits, never an exponent


def _kwh(wh: Any) -> Decimal | None:
    return None if wh is None else Decimal(wh).scaleb(-3)


def states(current: Mapping | None, status: Mapping | None, floor: NeverDown) -> dict[str, str]:
    """{sensor key, `bridge` or `data`: payload} for what the gateway answered (None: no answer)."""
    if current is None:
        return {"bridge": OFFLINE}
    out = {"bridge": ONLINE, "data": ONLINE if current.get("status") == "ok" else OFFLINE}
    if current.get("demand_w") is not None:
        out[POWER.key] = _text(Decimal(current["demand_w"]))
    for sensor, field in ((IMPORTED, "summation_wh"), (EXPORTED, "received_wh")):
        kwh = _kwh(current.get(field))
        if kwh is not None and floor.admit(sensor.key, kwh):
            out[sensor.key] = _text(kwh)
    if current.get("time"):
        out[LAST_READING.key] = current["time"]
    if status is not None and status.get("state") in HAN_STATES:
        out[METER_LINK.key] = status["state"]
    return out


def discovery_messages(topics: Topics, keys: Iterable[str], gateway_url: str, version: str) -> list[Message]:
    """The configs of the sensors among `keys` (those the gateway has given a value for)."""
    wanted = set(keys)
    return [config_message(topics, s, gateway_url, version) for s in SENSORS if s.key in wanted]


def state_messages(topics: Topics, values: Mapping[str, str]) -> list[Message]:
    return [Message(topics.state(key), payload) for key, payload in values.items()]
