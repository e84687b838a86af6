"""`openseg-han --check` on the fake radio: the plain diagnosis and its exit code; the firmware in words."""
import pytest

from openseg.han_reader import check
from openseg.han_reader.check import run_check
from tests.support.fake_radio import FakeClock, FakeRadio, Node, wire_radio
from tests.support.han_fixtures import HAN


def diagnose(hw):
    lines = []
    radio = wire_radio(hw, HAN["poll_interval_s"])
    code = run_check(hw, radio, HAN, hw.clock, out=lines.append)
    assert {f["class"] for f in hw.frame_log} <= {"at-query", "zdo-discovery", "zcl-read"}
    assert not hw.is_open, "the check closes the port"
    return code, "\n".join(lines)


def test_ready_gateway():
    code, text = diagnose(FakeRadio(FakeClock(), [Node(endpoint=0x0A)]))
    assert code == 0
    for expected in ["firmware: 0x3364 (Smart Energy router firmware)", "hardware: 0x1E46",
                     "api mode: AP=2 (API with escaping): OK", "explicit receive: AO=1",
                     "security: EE=1", "radio IEEE address: 00:13:a2:00:40:a1:b2:c3 (give it",
                     "join: AI=0x00: joined and authenticated", "radio network address: 0x4A2F",
                     "meter: answered from 0x0000 endpoint 10, IEEE 00:07:81:00:00:0a:bc:de",
                     "scaling: unit kW & kWh, multiplier 3, divisor 10000",
                     "result: READY: polling can start"]:
        assert expected in text
    assert "WARNING" not in text


def test_not_router_firmware_is_said_plainly_but_does_not_block():
    code, text = diagnose(FakeRadio(FakeClock(), vr=0x3164))
    assert code == 0
    assert "NOT Smart Energy router firmware" in text and "WARNING" in text


@pytest.mark.parametrize("setup, words", [
    (lambda hw: hw.settings.update(AI=0x23), "join: AI=0x23: valid PAN found but joining is not allowed"),
    (lambda hw: hw.settings.update(AP=1), "api mode: AP=1: WRONG"),
    (lambda hw: hw.settings.update(AO=0), "explicit receive: AO=0: WRONG"),
    (lambda hw: hw.meters.__setitem__(0, Node(nwk=0x1234)), "meter: METER-ADDRESS-MISMATCH: a Simple "
     "Metering server answered from 0x1234 endpoint 9"),
    (lambda hw: hw.meters.__setitem__(0, Node(powered=False)), "meter: METER-UNREACHABLE"),
    (lambda hw: hw.meters.__setitem__(0, Node(unit=0x02)), "scaling: refused"),
    (lambda hw: setattr(hw, "silent", True), "radio: NO ANSWER"),
    (lambda hw: setattr(hw, "present", False), "serial port: CANNOT OPEN"),
])
def test_not_ready(setup, words):
    hw = FakeRadio(FakeClock())
    setup(hw)
    code, text = diagnose(hw)
    assert code == 1
    assert words in text
    assert "result: NOT READY" in text


def test_waits_a_little_for_a_radio_still_scanning():
    hw = FakeRadio(FakeClock())
    hw.settings["AI"] = 0xFF
    hw.at(hw.clock.now + 4.0, lambda: hw.settings.update(AI=0x00))
    code, text = diagnose(hw)
    assert code == 0 and "join: AI=0x00" in text


def test_a_radio_that_never_joins_is_reported_after_the_wait():
    hw = FakeRadio(FakeClock())
    hw.settings["AI"] = 0xAF
    t0 = hw.clock.now
    code, text = diagnose(hw)
    assert code == 1 and 9.5 <= hw.clock.now - t0 <= 20
    assert "waiting up to 10 s" in text
    assert "join: AI=0xAF: secure join error: preconfigured link key does not match the utility's " \
           "(install code): NOT JOINED" in text
    assert "meter: not looked for (not joined)" in text


@pytest.mark.parametrize("vr, router, words", [
    (0x3364, True, "Smart Energy router firmware"), (0x3464, True, "wall router"),
    (0x3164, False, "NOT Smart Energy router firmware"), (0x3964, False, "end device"),
    (0x21A7, False, "NOT Smart Energy firmware"), (None, False, "unknown"),
])
def test_firmware_in_words(vr, router, words):
    text, is_router = check.describe_firmware(vr)
    assert is_router == router and words in text
