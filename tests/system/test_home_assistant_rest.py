"""The README's Home Assistant `rest` recipe, read as Home Assistant reads it (YAML, with `!secret`;
Jinja2 templates with `value_json`) against a live gateway (emulator -> HAN -> LAN): one resource, the
fields its templates use exist or make the sensor unavailable, the totals never decrease, and each
device_class has a unit Home Assistant accepts for it."""
from __future__ import annotations

import json
import re
from decimal import Decimal

import jinja2.sandbox
import pytest
import yaml

from tests.support.readme_recipes import recipe
from tests.system.test_faults_witness import FaultStack

pytestmark = pytest.mark.integration
# device_class -> units Home Assistant's sensor integration accepts for it (the Energy dashboard's).
UNITS = {"power": {"W", "kW"}, "energy": {"Wh", "kWh", "MWh"}}


class _SecretLoader(yaml.SafeLoader):
    pass


_SecretLoader.add_constructor("!secret", lambda loader, node: f"secret:{loader.construct_scalar(node)}")


def load_recipe() -> dict:
    config = yaml.load(recipe("home-assistant-rest"), Loader=_SecretLoader)
    [rest] = config["rest"]
    return rest


def render(template: str, value_json: dict) -> str:
    # Home Assistant's templates are Jinja2 with a sandbox; an unknown field is undefined, not an error.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.Undefined)
    return env.from_string(template).render(value_json=value_json).strip()


def test_the_recipe_is_one_resource_with_basic_auth_and_sensible_sensors():
    rest = load_recipe()
    assert rest["resource"].startswith("https://") and rest["resource"].endswith("/api/v1/current")
    assert rest["authentication"] == "basic" and rest["verify_ssl"] is True
    assert rest["username"].startswith("secret:") and rest["password"].startswith("secret:")
    classes = {}
    for sensor in rest["sensor"]:
        assert sensor["unit_of_measurement"] in UNITS[sensor["device_class"]], sensor
        classes[sensor["unique_id"]] = (sensor["device_class"], sensor["state_class"])
    assert sorted(classes.values()) == [("energy", "total_increasing"), ("energy", "total_increasing"),
                                        ("power", "measurement")]


def test_the_recipe_against_a_live_gateway():
    rest = load_recipe()
    sensors = rest["sensor"]
    path = "/" + rest["resource"].split("/", 3)[3]
    with FaultStack(1.0, timeout=0.4) as s:
        s.until_polling(readings=2)
        answers = []
        for _ in range(4):
            seen = len(answers) and answers[-1]["time"]
            s.until(lambda: s.json(path)["time"] != seen, "a new reading")
            answers.append(json.loads(s.get(path)[2], parse_float=Decimal))
    fields = {f for sensor in sensors for f in re.findall(r"value_json\.(\w+)", sensor["value_template"])}
    for answer in answers:
        for field in fields:
            assert field in answer or field == "received_wh", f"the recipe reads {field}, the gateway has none"
    last: dict[str, Decimal] = {}
    shown: set[str] = set()
    for answer in answers:
        for sensor in sensors:
            available = render(sensor["availability"], answer)
            assert available in ("True", "False"), available
            if available == "False":
                # Only a field the gateway does not report may leave a sensor unavailable here.
                assert sensor["unique_id"] == "openseg_grid_energy_exported" and "received_wh" not in answer
                continue
            value = Decimal(render(sensor["value_template"], answer))
            field = re.search(r"value_json\.(\w+)", sensor["value_template"]).group(1)
            assert value == answer[field]
            shown.add(sensor["unique_id"])
            if sensor["state_class"] == "total_increasing":
                assert value >= last.get(sensor["unique_id"], value), (sensor["unique_id"], value)
                last[sensor["unique_id"]] = value
    assert {"openseg_grid_power", "openseg_grid_energy_imported"} <= shown
