"""ESPI LocalTimeParameters (usage.xsd TimeConfiguration) from an IANA time zone.

ESPI describes local time as a standard offset, a DST offset and two DstRuleType bit maps (usage.xsd):
bits 0-11 seconds, 12-16 hour, 17-19 weekday (Monday = 1), 20-24 day of month, 25-27 operator,
28-31 month; 0xFFFFFFFF means "no DST processing".

The rules are derived from the zone's actual transitions in the current year (zoneinfo), not from a
hand-kept table, so any zone tzdata knows works:
- exactly two transitions toggling between two offsets: tzOffset is the smaller offset (so Dublin's
  "negative DST" comes out the conventional way round), dstOffset the difference, and each rule names
  the transition's month, weekday and which occurrence of it ("last" when it falls in the month's
  final seven days), at the local wall-clock time just before the change (02:00 for the US start,
  03:00 for the EU end), as the ESPI samples encode them;
- no transition (UTC, Asia/Tokyo, America/Phoenix): tzOffset is the current offset, dstOffset 0 and
  both rules 0xFFFFFFFF, which usage.xsd defines as "DST correction disabled";
- anything else (a zone changing its standard offset this year): the current offset, no DST rules.
"""
from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

UTC = dt.timezone.utc
DST_DISABLED = 0xFFFFFFFF


@dataclass(frozen=True)
class LocalTime:
    tz_offset: int
    dst_offset: int
    dst_start_rule: int
    dst_end_rule: int

    @staticmethod
    def hex(rule: int) -> str:
        return f"{rule:08X}"


def encode_rule(*, month: int, operator: int, day_of_month: int = 0, weekday: int = 0,
                hour: int = 0, seconds: int = 0) -> int:
    if not (1 <= month <= 12 and 0 <= operator <= 7 and 0 <= day_of_month <= 31 and 0 <= weekday <= 7
            and 0 <= hour <= 23 and 0 <= seconds <= 3599):
        raise ValueError("DST rule field out of range")
    return (month << 28) | (operator << 25) | (day_of_month << 20) | (weekday << 17) | (hour << 12) | seconds


def _offset(zone: ZoneInfo, t: int) -> int:
    return int(dt.datetime.fromtimestamp(t, zone).utcoffset().total_seconds())


def _transitions(zone: ZoneInfo, year: int) -> list[tuple[int, int, int]]:
    """(utc epoch of the change, offset before, offset after) for each change within `year`."""
    start = calendar.timegm((year, 1, 1, 0, 0, 0))
    end = calendar.timegm((year + 1, 1, 1, 0, 0, 0))
    out = []
    t, before = start, _offset(zone, start)
    while t < end:
        nxt = min(t + 86400, end)
        after = _offset(zone, nxt)
        if after != before:
            lo, hi = t, nxt            # offset(lo) == before, offset(hi) != before
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(zone, mid) == before:
                    lo = mid
                else:
                    hi = mid
            out.append((hi, before, _offset(zone, hi)))
            before = _offset(zone, hi)
            # A day holding two changes is re-scanned from the first one.
            t = hi
            continue
        t = nxt
    return out


def _rule_for(t_utc: int, offset_before: int) -> int:
    wall = dt.datetime.fromtimestamp(t_utc + offset_before, UTC)   # local time just before the change
    days_in_month = calendar.monthrange(wall.year, wall.month)[1]
    if wall.day > days_in_month - 7:
        operator = 7                                   # last occurrence of that weekday
    else:
        operator = 1 + ((wall.day - 1) // 7 + 1)       # 2 = first ... 5 = fourth occurrence
    return encode_rule(month=wall.month, operator=operator, weekday=wall.isoweekday(),
                       hour=wall.hour, seconds=wall.minute * 60 + wall.second)


@lru_cache(maxsize=16)
def _for_year(zone_name: str, year: int, fallback_offset: int) -> LocalTime:
    zone = ZoneInfo(zone_name)
    changes = _transitions(zone, year)
    if len(changes) == 2:
        (t1, b1, a1), (t2, b2, a2) = changes
        if b1 == a2 and a1 == b2 and a1 != b1:
            low, high = min(b1, a1), max(b1, a1)
            start, end = ((t1, b1), (t2, b2)) if a1 == high else ((t2, b2), (t1, b1))
            return LocalTime(low, high - low, _rule_for(*start), _rule_for(*end))
    return LocalTime(fallback_offset, 0, DST_DISABLED, DST_DISABLED)


def local_time_parameters(zone_name: str, now: float) -> LocalTime:
    """LocalTimeParameters for `zone_name` in the UTC year containing `now`."""
    year = dt.datetime.fromtimestamp(now, UTC).year
    return _for_year(zone_name, year, _offset(ZoneInfo(zone_name), int(now)))
