"""openseg-mqtt's discovery configs and states as pure functions (openseg/mqtt_bridge/discovery.py); the real
process against a real broker is tests/system/test_mqtt_bridge.py."""
import json
from decimal import Decimal

from openseg.mqtt_bridge import discovery

TOPICS = discovery.Topics("homeassistant", "openseg", "openseg_sub1")


def test_discovery_configs_follow_home_assistants_conventions():
    by_key = {json.loads(m.payload)["unique_id"]: (m, json.loads(m.payload)) for m in
              discovery.discovery_messages(TOPICS, [s.key for s in discovery.SENSORS], "https://gw:8443", "1.0")}
    msg, power = by_key["openseg_sub1_power"]
    assert msg.topic == "homeassistant/sensor/openseg_sub1/power/config" and msg.retain
    assert (power["device_class"], power["state_class"], power["unit_of_measurement"]) == ("power", "measurement", "W")
    assert power["state_topic"] == "openseg/openseg_sub1/power"
    assert power["availability"] == [{"topic": "openseg/openseg_sub1/bridge"}, {"topic": "openseg/openseg_sub1/data"}]
    assert power["availability_mode"] == "all" and power["device"]["identifiers"] == ["openseg_sub1"]
    for key in ("energy_imported", "energy_exported"):
        _, energy = by_key[f"openseg_sub1_{key}"]
        assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == \
            ("energy", "total_increasing", "kWh")
    _, link = by_key["openseg_sub1_meter_link"]
    assert link["entity_category"] == "diagnostic" and link["device_class"] == "enum"
    assert "polling" in link["options"] and link["availability"] == [{"topic": "openseg/openseg_sub1/bridge"}]


def test_states_are_exact_absent_when_unknown_and_never_go_down():
    floor = discovery.NeverDown()
    current = {"demand_w": Decimal("-2.1"), "summation_wh": Decimal("12345678.3"), "time": "2026-12-01T00:00:00.000Z",
               "age_s": 1, "status": "ok"}
    got = discovery.states(current, {"state": "polling"}, floor)
    assert got == {"bridge": "online", "data": "online", "power": "-2.1", "energy_imported": "12345.6783",
                   "last_reading": "2026-12-01T00:00:00.000Z", "meter_link": "polling"}
    assert "energy_exported" not in got                   # the gateway reports no export: nothing, not 0
    got = discovery.states({**current, "summation_wh": 12345000, "received_wh": 5, "status": "stale"}, None, floor)
    assert "energy_imported" not in got and floor.held_back == 1      # lower than published: held back
    assert got["energy_exported"] == "0.005" and got["data"] == "offline" and "meter_link" not in got
    assert discovery.states({**current, "demand_w": None, "summation_wh": None, "time": None,
                             "status": "no-data"}, None, floor) == {"bridge": "online", "data": "offline"}
    assert discovery.states(None, None, floor) == {"bridge": "offline"}
