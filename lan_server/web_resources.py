"""Answers of the LAN process, as pure functions from the readings to a `Response`: ESPI Atom
(URL dispatch here, documents in espi_feed), and the JSON the in-home page polls. No web framework
is imported; the HTTP layer (app.py) authenticates and passes the user's subscription in.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlencode

from . import espi_feed as ef
from . import espi_query
from .readings import Gap, Reading, Readings, Snapshot, data_status
from .scaling import value_text

ATOM_TYPE = "application/atom+xml"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
NO_STORE = {"Cache-Control": "no-store"}


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, TEXT_TYPE, (message + "\n").encode(), {**NO_STORE, **(headers or {})})


def _atom(root) -> Response:
    return Response(200, ATOM_TYPE, ef.serialize(root), dict(NO_STORE))


class _Raw(str):
    """A JSON number already written out exactly (scaled meter values keep every digit)."""


def _dumps(obj: Any) -> str:
    if isinstance(obj, _Raw):
        return str(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{_dumps(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_dumps(v) for v in obj) + "]"
    if isinstance(obj, float) and not math.isfinite(obj):
        return "null"
    return json.dumps(obj)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(status, JSON_TYPE, _dumps(obj).encode(), dict(NO_STORE))


def iso_ms(t: float | None) -> str | None:
    if t is None:
        return None
    stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age(now: float, t: float | None) -> float | None:
    # Both clocks are this machine's wall clock; a small negative age is clock jitter, not news.
    return None if t is None else round(max(0.0, now - t), 3)


def _value(reading: Reading | None, quantity: str) -> _Raw | None:
    raw = None if reading is None else getattr(reading, quantity)
    return None if raw is None else _Raw(value_text(raw, reading.scaling))


# -- ESPI -------------------------------------------------------------------------------------------
def _retry_after(snap: Snapshot) -> str:
    interval = snap.poll_interval_s
    return str(max(1, math.ceil(interval if interval is not None else 10.0)))


def espi(readings: Readings, *, path: str, params: Mapping[str, str], subscription: str,
         base_url: str, time_zone: str) -> Response:
    """GET {base_url}/espi/1_1/resource/{path}. Checks in this order: another user's subscription
    (403), no such resource (404), bad parameter (400), no value yet for a current-value request
    (503), otherwise 200 with an Atom feed (collections) or entry (single resources)."""
    segs = path.strip("/").split("/") if path.strip("/") else []
    sub_at = 1 if segs[:1] == ["Subscription"] else 2 if segs[:2] == ["Batch", "Subscription"] else None
    if sub_at is not None and len(segs) > sub_at and segs[sub_at] != subscription:
        return _text(403, "not your subscription")
    route = _route(segs)
    if route is None:
        return _text(404, "no such ESPI resource")
    try:
        query = espi_query.parse(params)
    except espi_query.QueryError as exc:
        return _text(400, str(exc))
    snap = readings.snapshot()
    ctx = ef.Context(snap=snap, base_url=base_url, subscription=subscription, time_zone=time_zone,
                     query_string=("?" + urlencode(list(params.items()))) if params else "")
    kind, arg, ib = route
    if kind == "batch":
        return _atom(ef.batch_feed(ctx, query, usage_point=arg == "usage_point"))
    if kind == "usage_points":
        return _atom(ef.feed(ctx, path=ef.usage_points_path(subscription), title="Usage points",
                             entries=query.page([ef.usage_point_entry(ctx)])))
    if kind == "usage_point":
        return _atom(ef.usage_point_entry(ctx).element)
    if kind == "meter_readings":
        entries = [ef.meter_reading_entry(ctx, mr) for mr in ef.METER_READINGS.values()]
        return _atom(ef.feed(ctx, path=ef.meter_readings_path(subscription), title="Meter readings",
                             entries=query.page(entries)))
    if kind == "meter_reading":
        return _atom(ef.meter_reading_entry(ctx, ef.METER_READINGS[arg]).element)
    if kind == "reading_types":
        entries = [ef.reading_type_document(ctx, mr) for mr in ef.READING_TYPES.values()]
        return _atom(ef.feed(ctx, path="ReadingType", title="Reading types", entries=query.page(entries)))
    if kind == "reading_type":
        return _atom(ef.reading_type_document(ctx, ef.READING_TYPES[arg]).element)
    if kind == "local_times":
        return _atom(ef.feed(ctx, path="LocalTimeParameters", title="Local time parameters",
                             entries=query.page([ef.local_time_entry(ctx)])))
    if kind == "local_time":
        return _atom(ef.local_time_entry(ctx).element)
    if kind == "interval_blocks":
        root = ef.interval_blocks_feed(ctx, ef.METER_READINGS[arg], query)
        if root is None:
            return _text(503, "no meter value yet", {"Retry-After": _retry_after(snap)})
        return _atom(root)
    # kind == "interval_block"
    root = ef.interval_block_document(ctx, ef.METER_READINGS[arg], ib)
    if root is None:
        return _text(404, "no such interval block in the history held")
    return _atom(root)


def _route(segs: list[str]) -> tuple[str, str | None, str | None] | None:
    """(resource kind, MeterReading or ReadingType id, IntervalBlock id), or None for a 404.
    The subscription segment has already been checked by the caller."""
    n = len(segs)
    if segs[:2] == ["Batch", "Subscription"]:
        if n == 3:
            return ("batch", None, None)
        if n == 5 and segs[3] == "UsagePoint" and segs[4] == ef.USAGE_POINT_ID:
            return ("batch", "usage_point", None)
        return None
    if segs[:1] == ["ReadingType"]:
        if n == 1:
            return ("reading_types", None, None)
        if n == 2 and segs[1] in ef.READING_TYPES:
            return ("reading_type", segs[1], None)
        return None
    if segs[:1] == ["LocalTimeParameters"]:
        if n == 1:
            return ("local_times", None, None)
        if n == 2 and segs[1] == ef.LOCAL_TIME_ID:
            return ("local_time", None, None)
        return None
    if n < 3 or segs[0] != "Subscription" or segs[2] != "UsagePoint":
        return None
    if n == 3:
        return ("usage_points", None, None)
    if segs[3] != ef.USAGE_POINT_ID:
        return None
    if n == 4:
        return ("usage_point", None, None)
    if segs[4] != "MeterReading":
        return None
    if n == 5:
        return ("meter_readings", None, None)
    if segs[5] not in ef.METER_READINGS:
        return None
    if n == 6:
        return ("meter_reading", segs[5], None)
    if segs[6] != "IntervalBlock":
        return None
    if n == 7:
        return ("interval_blocks", segs[5], None)
    if n == 8:
        return ("interval_block", segs[5], segs[7])
    return None


# -- JSON -------------------------------------------------------------------------------------------
def current_json(readings: Readings) -> Response:
    """The latest reading: W and Wh exactly as the meter's scaling gives them (a quantity the meter
    flagged invalid in that reading is null), its time tag, its age and ok / stale / no-data."""
    snap = readings.snapshot(history=False)
    latest = snap.latest
    return _json({
        "demand_w": _value(latest, "demand"),
        "summation_wh": _value(latest, "summation"),
        "time": iso_ms(latest.time) if latest else None,
        "age_s": _age(snap.now, latest.time) if latest else None,
        "status": data_status(snap),
    })


def status_json(readings: Readings, channel_counters: dict, lan_started: float) -> Response:
    """What the HAN side last reported, how old that report is, whether the HAN has gone silent,
    the LAN side's own uptime and the channel receiver's counters."""
    snap = readings.snapshot(history=False)
    rep = snap.report
    last_age = _age(snap.now, snap.last_message_at)
    meter = None
    if rep is not None and rep.meter is not None:
        meter = {"ieee": rep.meter.ieee, "nwk": rep.meter.nwk, "nwk_hex": f"0x{rep.meter.nwk:04X}",
                 "endpoint": rep.meter.endpoint}
    return _json({
        "time": iso_ms(snap.now),
        "state": rep.state if rep else None,
        "detail": rep.detail if rep else "no report from the meter reader (HAN process) yet",
        "meter": meter,
        "radio_ieee": rep.radio_ieee if rep else None,
        "queries_total": rep.queries_total if rep else None,
        "queries_lost": rep.queries_lost if rep else None,
        "lost_by_cause": dict(rep.lost_by_cause) if rep else None,
        "frames_bad": rep.frames_bad if rep else None,
        "guard_refused": rep.guard_refused if rep else None,
        "channel_dropped": rep.channel_dropped if rep else None,
        "poll_interval_s": rep.poll_interval_s if rep else None,
        "han_started": iso_ms(rep.started) if rep else None,
        "han_uptime_s": _age(snap.now, rep.started) if rep else None,
        "report_time": iso_ms(rep.received) if rep else None,
        "report_age_s": _age(snap.now, rep.received) if rep else None,
        "last_message_age_s": last_age,
        "han_silent": last_age is None or last_age > snap.silent_after_s,
        "data_status": data_status(snap),
        "lan_started": iso_ms(lan_started),
        "lan_uptime_s": _age(snap.now, lan_started),
        "channel": channel_counters,
    })


HISTORY_DEFAULT_MIN = 60
HISTORY_MAX_MIN = 1440


def history_json(readings: Readings, params: Mapping[str, Any]) -> Response:
    """`minutes=N` (1-1440, default 60) of history for the page's chart: points and gaps in time
    order. Only what memory holds is returned (Readings.history_s), so the first point may be later
    than `from`; a gap is a slot the HAN could not read, never to be drawn as a line."""
    minutes = HISTORY_DEFAULT_MIN
    for name, value in params.items():
        if name != "minutes":
            return _text(400, f"query parameter {espi_query.shown_name(name)}: unknown parameter "
                              "(known: minutes)")
        if (not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 4
                or not 1 <= int(value) <= HISTORY_MAX_MIN):
            return _text(400, f"query parameter 'minutes': expected a whole number from 1 to "
                              f"{HISTORY_MAX_MIN}")
        minutes = int(value)
    snap = readings.snapshot()
    since = snap.now - minutes * 60
    points, gaps = [], []
    for e in snap.history:
        if e.time < since:
            continue
        if isinstance(e, Reading):
            points.append({"time": iso_ms(e.time), "slot": e.slot, "demand_w": _value(e, "demand"),
                           "summation_wh": _value(e, "summation")})
        elif isinstance(e, Gap):
            gaps.append({"slot": e.slot, "due": iso_ms(e.due), "cause": e.cause})
    return _json({"minutes": minutes, "from": iso_ms(since), "to": iso_ms(snap.now),
                  "poll_interval_s": snap.poll_interval_s, "points": points, "gaps": gaps})
