"""deploy/install-gateway without installing anything: its argument errors (one line, exit 2, nothing
touched) and the udev rule it writes for a given adapter. tests/system/test_system_boot.py runs it for real,
twice, in a booted container."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "install-gateway"


def installer():
    loader = importlib.machinery.SourceFileLoader("install_gateway", str(SCRIPT))
    spec = importlib.util.spec_from_loader("install_gateway", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, needle", [
    ([], "--serial"),
    (["--serial"], "--serial"),
    (["--serial", "ttyUSB0"], "device path"),
    (["--serial", "/dev/openseg-no-such-radio"], "does not exist"),
    (["--serial", "/dev/openseg-xbee", "--bind", "gateway.local"], "--bind"),
    (["--serial", "/dev/openseg-xbee", "--bind", "0.0.0.0", "--extra"], "unrecognized"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, needle):
    result = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("install-gateway: ") and needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


SHIPPED = (SCRIPT.parent / "99-openseg-xbee.rules").read_text()


def actions(rule: str) -> str:
    [line] = [l for l in rule.splitlines() if l and not l.startswith("#")]
    return line[line.index("SYMLINK+="):]


def test_udev_rule_for_a_usb_adapter_matches_it_and_keeps_the_shipped_actions():
    rule = installer().udev_rule(SHIPPED, {"DEVNAME": "/dev/ttyUSB3", "ID_VENDOR_ID": "10c4",
                                           "ID_MODEL_ID": "ea60", "ID_SERIAL_SHORT": "0001A2B3"})
    [line] = [l for l in rule.splitlines() if l and not l.startswith("#")]
    assert line.startswith('ACTION=="add|change", SUBSYSTEM=="tty", ATTRS{idVendor}=="10c4", '
                           'ATTRS{idProduct}=="ea60", ATTRS{serial}=="0001A2B3", SYMLINK+="openseg-xbee"')
    assert actions(rule) == actions(SHIPPED)
    assert "ttyUSB3" not in line, "a USB adapter is matched by what it is, not by its number"


def test_udev_rule_for_a_built_in_uart_matches_its_kernel_name():
    rule = installer().udev_rule(SHIPPED, {"DEVNAME": "/dev/ttyAMA0"})
    assert re.search(r'SUBSYSTEM=="tty", KERNEL=="ttyAMA0", SYMLINK\+="openseg-xbee"', rule)
    assert actions(rule) == actions(SHIPPED)


def test_udev_rule_refuses_values_that_are_not_safe_in_a_rule():
    module = installer()
    with pytest.raises(module.Usage):
        module.udev_rule(SHIPPED, {"ID_VENDOR_ID": "0403", "ID_MODEL_ID": "6015", "ID_SERIAL_SHORT": 'x", RUN+="/bin/sh'})
