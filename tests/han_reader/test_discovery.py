"""Power-up discovery against the fake radio: API modes, join words, where the meter is, scaling."""
import pytest

from openseg.han_reader import discovery
from openseg.han_reader.discovery import Found, Scaled
from openseg.han_reader.radio import RadioMisconfigured, RadioSilent
from tests.support.fake_radio import METER_IEEE, RADIO_IEEE, FakeClock, FakeRadio, Node, wire_radio

TIMEOUT = 2.0


def rig(meters=None, **kw):
    clock = FakeClock()
    hw = FakeRadio(clock, meters, **kw)
    radio = wire_radio(hw)
    hw.open()
    return hw, radio


def test_meter_found_at_the_coordinator_on_the_endpoint_it_names():
    hw, radio = rig([Node(nwk=0x0000, endpoint=0x0A)])
    found = discovery.find_meter(radio, TIMEOUT)
    assert found.outcome is Found.METER
    assert found.meter == discovery.Meter(METER_IEEE, 0x0000, 0x0A)     # never assumed to be 1
    assert [f["class"] for f in hw.frame_log] == ["zdo-discovery", "zdo-discovery"]


def test_other_simple_metering_servers_do_not_hide_the_meter():
    hw, radio = rig([Node(nwk=0x7A11, endpoint=1, ieee=0x42), Node(nwk=0x0000, endpoint=3)])
    found = discovery.find_meter(radio, TIMEOUT)
    assert found.outcome is Found.METER and found.meter.endpoint == 3
    assert found.others == ((0x7A11, (1,)),)


def test_a_meter_answering_only_from_another_address_is_a_mismatch():
    hw, radio = rig([Node(nwk=0x1234, endpoint=9)])
    found = discovery.find_meter(radio, TIMEOUT)
    assert found.outcome is Found.ELSEWHERE and found.meter is None
    assert "0x1234 endpoint 9" in found.detail and "0x0000" in found.detail


def test_nobody_answering_is_unreachable():
    hw, radio = rig([Node(powered=False)], coordinator_answers=False)
    found = discovery.find_meter(radio, TIMEOUT)
    assert found.outcome is Found.NOTHING
    assert "did not answer IEEE_addr_req" in found.detail


def test_a_coordinator_without_simple_metering_is_unreachable():
    hw, radio = rig([])
    found = discovery.find_meter(radio, TIMEOUT)
    assert found.outcome is Found.NOTHING and "Simple Metering" in found.detail


def test_discovery_waits_the_response_timeout_for_all_matches():
    hw, radio = rig()
    t0 = hw.clock.now
    discovery.find_meter(radio, TIMEOUT)
    # The Match_Desc goes one poll interval after the IEEE_addr_req (the pace law), then waits its
    # whole timeout for every node that may answer.
    ieee_req, match_req = [f for f in hw.frame_log if f["class"] == "zdo-discovery"]
    assert match_req["t"] - ieee_req["t"] == pytest.approx(radio.guard.interval_s)
    assert hw.clock.now - match_req["t"] == pytest.approx(TIMEOUT, abs=0.05)


def test_scaling_zero_multiplier_and_divisor_count_as_one():
    hw, radio = rig([Node(multiplier=0, divisor=0, endpoint=5)])
    meter = discovery.find_meter(radio, TIMEOUT).meter
    read = discovery.read_scaling(radio, meter, TIMEOUT)
    assert read.outcome is Scaled.OK
    assert (read.scaling.multiplier, read.scaling.divisor) == (1, 1)
    assert read.scaling.as_message() == {"multiplier": 1, "divisor": 1, "unit": 0,
                                         "summation_formatting": 0x33, "demand_formatting": 0x2B}


def test_scaling_keeps_real_factors_and_tolerates_missing_demand_formatting():
    hw, radio = rig([Node(multiplier=3, divisor=10000, unsupported={0x0304})])
    meter = discovery.find_meter(radio, TIMEOUT).meter
    read = discovery.read_scaling(radio, meter, TIMEOUT)
    assert (read.scaling.multiplier, read.scaling.divisor, read.scaling.demand_formatting) == (3, 10000, 0)


@pytest.mark.parametrize("node, words", [
    (Node(unit=0x01), "UnitOfMeasure 0x01 (m3 & m3/h), not kW/kWh"),
    (Node(device_type=1), "MeteringDeviceType 1 (gas)"),
])
def test_non_electric_meters_are_refused(node, words):
    hw, radio = rig([node])
    read = discovery.read_scaling(radio, discovery.find_meter(radio, TIMEOUT).meter, TIMEOUT)
    assert read.outcome is Scaled.REFUSED and read.scaling is None
    assert words in read.detail and "not polling" in read.detail


def test_a_meter_without_a_multiplier_cannot_be_scaled():
    hw, radio = rig([Node(unsupported={0x0301})])
    read = discovery.read_scaling(radio, discovery.find_meter(radio, TIMEOUT).meter, TIMEOUT)
    assert read.outcome is Scaled.UNUSABLE and "Multiplier (status 0x86)" in read.detail


def test_api_modes_accepted_and_refused():
    hw, radio = rig()
    assert discovery.check_api_modes(radio, TIMEOUT) == (2, 1)
    for settings, words in [({"AP": 1}, "AP=1"), ({"AO": 0}, "AO=0"), ({"AO": 2}, "AO=2")]:
        hw, radio = rig()
        hw.settings.update(settings)
        with pytest.raises(RadioMisconfigured, match=words):
            discovery.check_api_modes(radio, TIMEOUT)
    hw, radio = rig()
    hw.silent = True
    with pytest.raises(RadioSilent):
        discovery.check_api_modes(radio, TIMEOUT)


def test_join_state_and_identity_in_words():
    hw, radio = rig()
    assert discovery.radio_ieee(radio, TIMEOUT) == RADIO_IEEE
    hw.settings["AI"] = 0x23
    code = discovery.association(radio, TIMEOUT)
    assert discovery.describe_ai(code) == ("AI=0x23: valid PAN found but joining is not allowed (ask the "
                                           "utility to permit joining)")
    assert "did not answer" in discovery.describe_ai(None)
    assert "does not list" in discovery.describe_ai(0x99)
