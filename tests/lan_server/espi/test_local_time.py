"""LocalTimeParameters from an IANA zone, checked against the Green Button samples' own encoding."""
import datetime as dt
import os
import zoneinfo

import pytest
from lxml import etree

from tests.support.channel_messages import T0, Clock
from tests.support.espi_schema import ESPI_DIR, assert_valid
from openseg.lan_server.http import web_resources
from openseg.lan_server.espi.local_time import DST_DISABLED, encode_rule, local_time_parameters
from openseg.lan_server.state.readings import Readings

ESPI = "{http://naesb.org/espi}"
SAMPLE = os.path.join(ESPI_DIR, "samples", "test_usage_data_01.xml")


def decode_rule(rule: int) -> dict:
    return {"seconds": rule & 0xFFF, "hour": (rule >> 12) & 0x1F, "weekday": (rule >> 17) & 7,
            "day": (rule >> 20) & 0x1F, "operator": (rule >> 25) & 7, "month": rule >> 28}


def test_new_york_matches_the_green_button_sample():
    # The GBA sample is US Eastern time: its four values are what our encoding must reproduce.
    sample = etree.parse(SAMPLE).find(f".//{ESPI}LocalTimeParameters")
    lt = local_time_parameters("America/New_York", T0)
    assert str(lt.tz_offset) == sample.findtext(f"{ESPI}tzOffset") == "-18000"
    assert str(lt.dst_offset) == sample.findtext(f"{ESPI}dstOffset")
    assert f"{lt.dst_start_rule:08X}" == sample.findtext(f"{ESPI}dstStartRule")
    assert f"{lt.dst_end_rule:08X}" == sample.findtext(f"{ESPI}dstEndRule")


def test_paris_is_last_sunday_of_march_and_october():
    lt = local_time_parameters("Europe/Paris", T0)
    assert (lt.tz_offset, lt.dst_offset) == (3600, 3600)
    assert decode_rule(lt.dst_start_rule) == {"seconds": 0, "hour": 2, "weekday": 7, "day": 0,
                                              "operator": 7, "month": 3}
    assert decode_rule(lt.dst_end_rule) == {"seconds": 0, "hour": 3, "weekday": 7, "day": 0,
                                            "operator": 7, "month": 10}


@pytest.mark.parametrize("zone, offset", [("UTC", 0), ("America/Phoenix", -25200),
                                          ("Asia/Kolkata", 19800)])
def test_zones_without_dst_disable_the_rules(zone, offset):
    lt = local_time_parameters(zone, T0)
    assert (lt.tz_offset, lt.dst_offset, lt.dst_start_rule, lt.dst_end_rule) == (
        offset, 0, DST_DISABLED, DST_DISABLED)


def _rule_date(rule: int, year: int) -> dt.datetime:
    """Evaluate a weekday-occurrence rule the way an ESPI client would."""
    f = decode_rule(rule)
    first = dt.date(year, f["month"], 1)
    days = [first + dt.timedelta(d) for d in range(31)
            if (first + dt.timedelta(d)).month == f["month"]
            and (first + dt.timedelta(d)).isoweekday() == f["weekday"]]
    day = days[-1] if f["operator"] == 7 else days[f["operator"] - 2]
    return dt.datetime(year, day.month, day.day, f["hour"], f["seconds"] // 60, f["seconds"] % 60)


@pytest.mark.parametrize("zone", ["America/New_York", "Europe/Paris", "Europe/London", "Australia/Sydney",
                                  "America/Santiago", "Pacific/Auckland", "Europe/Dublin"])
def test_rules_reproduce_the_zones_real_transitions(zone):
    tz = zoneinfo.ZoneInfo(zone)
    lt = local_time_parameters(zone, T0)
    year = dt.datetime.fromtimestamp(T0, dt.timezone.utc).year
    for rule, offset_before in ((lt.dst_start_rule, lt.tz_offset),
                                (lt.dst_end_rule, lt.tz_offset + lt.dst_offset)):
        wall = _rule_date(rule, year)
        utc = wall.replace(tzinfo=dt.timezone.utc) - dt.timedelta(seconds=offset_before)
        before = (utc - dt.timedelta(seconds=1)).astimezone(tz).utcoffset()
        after = utc.astimezone(tz).utcoffset()
        assert before.total_seconds() == offset_before
        assert after != before


def test_encode_rule_refuses_out_of_range_fields():
    with pytest.raises(ValueError):
        encode_rule(month=13, operator=7)
    with pytest.raises(ValueError):
        encode_rule(month=3, operator=8)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Europe/Paris", "Australia/Sydney",
                                  "Asia/Kolkata", "Pacific/Chatham"])
def test_local_time_parameters_document_validates(zone):
    readings = Readings(30.0, clock=Clock())
    resp = web_resources.espi(readings, path="LocalTimeParameters/1", params={}, subscription="s",
                              base_url="https://gw.example:8443", time_zone=zone)
    root = assert_valid(resp.body)
    lt = local_time_parameters(zone, T0)
    obj = root.find(f".//{ESPI}LocalTimeParameters")
    assert [c.tag.replace(ESPI, "") for c in obj] == ["dstEndRule", "dstOffset", "dstStartRule", "tzOffset"]
    assert obj.findtext(f"{ESPI}tzOffset") == str(lt.tz_offset)
    assert obj.findtext(f"{ESPI}dstStartRule") == f"{lt.dst_start_rule:08X}"
