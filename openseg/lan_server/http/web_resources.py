"""Answers of the LAN process, as pure functions from the readings to a `Response`: ESPI Atom
(URL dispatch here, documents in espi.feed), and the JSON the in-home page polls. No web framework
is imported; the HTTP layer (app.py) authenticates and passes the user's subscription in.
"""
from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union
from urllib.parse import urlencode

from ..espi import feed as ef
from ..espi import query as espi_query
from . import metrics
from ..state.history_source import answer_source, open_store, store_exponent
from ..state.history_store import Row, file_bytes, t_ms_of
from .metrics import HistoryHealth
from ..state.readings import Gap, Reading, Readings, Snapshot, data_status
from ..espi.scaling import Scaling, decimal_text, resolution_exponent, scaled_int, value_text

ATOM_TYPE = "application/atom+xml"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True, eq=False)
class Response:
    """An answer. Frozen, and compared by identity: a memoised one is shared by every request it answers.

    `stands`, set on a memoised answer only: while it returns True, this same object is the answer to
    a GET or HEAD of the same path, without a query, by a user of the same subscription, naming the
    same Host; so the app keeps it for those requests and its wire form (app.LanApp._authorized,
    _prepared). An answer may have it only if it depends on nothing else of the request, and
    `stands` must check everything else it was built from."""
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    stands: Callable[[], bool] | None = None


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, TEXT_TYPE, (message + "\n").encode(), {**NO_STORE, **(headers or {})})


def _atom(body: bytes) -> Response:
    return Response(200, ATOM_TYPE, body, dict(NO_STORE))


class _Raw(str):
    """A JSON number already written out exactly (scaled meter values keep every digit)."""


@functools.lru_cache(maxsize=256)
def _key(k: Any) -> str:
    """A JSON object key; the same few dozen keys come in every answer."""
    return json.dumps(str(k))


def _dumps(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, _Raw):
        return str(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_key(k)}:{_dumps(v)}" for k, v in obj.items()) + "}"
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


# The current value's text, asked for by every open page each tick: worked out once per value.
_value_text = functools.lru_cache(maxsize=64)(value_text)


def _value(reading: Reading | None, quantity: str) -> _Raw | None:
    raw = None if reading is None else getattr(reading, quantity)
    return None if raw is None else _Raw(_value_text(raw, reading.scaling))


# -- ESPI -------------------------------------------------------------------------------------------
def _retry_after(poll_interval_s: float | None) -> str:
    wait = poll_interval_s if poll_interval_s is not None else 10.0
    return str(max(1, math.ceil(wait)))


class EspiResource(enum.Enum):
    """The ESPI resources this gateway answers (`_route` names one from the path)."""
    BATCH = enum.auto()                 # Batch/Subscription/{id}
    BATCH_USAGE_POINT = enum.auto()     # Batch/Subscription/{id}/UsagePoint/1
    READING_TYPES = enum.auto()         # ReadingType
    READING_TYPE = enum.auto()          # ReadingType/{rt}
    LOCAL_TIMES = enum.auto()           # LocalTimeParameters
    LOCAL_TIME = enum.auto()            # LocalTimeParameters/1
    USAGE_POINTS = enum.auto()          # Subscription/{id}/UsagePoint
    USAGE_POINT = enum.auto()           # .../UsagePoint/1
    METER_READINGS = enum.auto()        # .../UsagePoint/1/MeterReading
    METER_READING = enum.auto()         # .../MeterReading/{mr}
    INTERVAL_BLOCKS = enum.auto()       # .../MeterReading/{mr}/IntervalBlock
    INTERVAL_BLOCK = enum.auto()        # .../MeterReading/{mr}/IntervalBlock/{ib}


@dataclass(frozen=True)
class EspiRoute:
    """A routed request: the resource, the MeterReading or ReadingType id it names, the IntervalBlock id."""
    resource: EspiResource
    id: str | None = None
    block: str | None = None


@dataclass(frozen=True)
class _EspiRequest:
    """What an ESPI answer is built from, once routing, the query and the snapshot are through."""
    ctx: ef.Context
    query: espi_query.Query
    params: dict[str, str]
    route: EspiRoute


def espi(readings: Readings, *, path: str, params: Mapping[str, str], subscription: str,
         base_url: str, time_zone: str, currency: int = ef.DEFAULT_CURRENCY) -> Response:
    """GET {base_url}/espi/1_1/resource/{path}. Checks in this order: another user's subscription
    (403), no such resource (404), bad parameter (400), no value yet for a current-value request
    (503), otherwise 200 with an Atom feed (collections) or entry (single resources), built by the
    resource's entry in ESPI_ANSWERS. One shortcut comes first: the parameterless IntervalBlock
    collection of a register or demand MeterReading (1, 2 or 5), the most requested answer, is
    ESPI_ANSWERS' INTERVAL_BLOCKS document served straight from the latest reading (`_current_value`)."""
    if not params:
        fast = _current_value(readings, path, subscription, base_url)
        if fast is not None:
            return fast
    segs = path.strip("/").split("/") if path.strip("/") else []
    sub_at = 1 if segs[:1] == ["Subscription"] else 2 if segs[:2] == ["Batch", "Subscription"] else None
    if sub_at is not None and len(segs) > sub_at and segs[sub_at] != subscription:
        return _text(403, "not your subscription")
    route = _route(segs)
    if route is None:
        return _no_resource()
    try:
        query = espi_query.parse(params)
    except espi_query.QueryError as exc:
        return _text(400, str(exc))
    snap, source = answer_source(readings)
    ctx = ef.Context(snap=snap, base_url=base_url, subscription=subscription, time_zone=time_zone,
                     source=source, query_string=("?" + urlencode(list(params.items()))) if params else "",
                     currency=currency)
    return ESPI_ANSWERS[route.resource](_EspiRequest(ctx, query, dict(params), route))


def _no_resource() -> Response:
    return _text(404, "no such ESPI resource")


def _batch(req: _EspiRequest) -> Response:
    return _atom(ef.batch_document(req.ctx, req.query, req.params, usage_point=False))


def _batch_usage_point(req: _EspiRequest) -> Response:
    return _atom(ef.batch_document(req.ctx, req.query, req.params, usage_point=True))


def _usage_points(req: _EspiRequest) -> Response:
    ctx = req.ctx
    return _atom(ef.feed_document(ctx, path=ef.usage_points_path(ctx.subscription), title="Usage points",
                                  entries=req.query.page([ef.usage_point_entry(ctx)])))


def _usage_point(req: _EspiRequest) -> Response:
    return _atom(ef.entry_document(ef.usage_point_entry(req.ctx)))


def _meter_readings(req: _EspiRequest) -> Response:
    ctx = req.ctx
    entries = [ef.meter_reading_entry(ctx, mr) for mr in ctx.meter_readings]
    return _atom(ef.feed_document(ctx, path=ef.meter_readings_path(ctx.subscription), title="Meter readings",
                                  entries=req.query.page(entries)))


def _offered_meter_reading(req: _EspiRequest) -> ef.MeterReadingDef | None:
    """The MeterReading the route names, or None when this meter does not offer it (a 404)."""
    mr_id = req.route.id
    return ef.METER_READINGS[mr_id] if mr_id is not None and req.ctx.offers(mr_id=mr_id) else None


def _meter_reading(req: _EspiRequest) -> Response:
    mr = _offered_meter_reading(req)
    if mr is None:
        return _no_resource()
    return _atom(ef.entry_document(ef.meter_reading_entry(req.ctx, mr)))


def _reading_types(req: _EspiRequest) -> Response:
    ctx = req.ctx
    with ctx.source.consistent():
        entries = [ef.reading_type_entry(ctx, mr) for mr in ctx.meter_readings]
    return _atom(ef.feed_document(ctx, path="ReadingType", title="Reading types", entries=req.query.page(entries)))


def _reading_type(req: _EspiRequest) -> Response:
    ctx, rt_id = req.ctx, req.route.id
    if rt_id is None or not ctx.offers(rt_id=rt_id):
        return _no_resource()
    with ctx.source.consistent():
        return _atom(ef.entry_document(ef.reading_type_entry(ctx, ef.READING_TYPES[rt_id])))


def _local_times(req: _EspiRequest) -> Response:
    ctx = req.ctx
    return _atom(ef.feed_document(ctx, path="LocalTimeParameters", title="Local time parameters",
                                  entries=req.query.page([ef.local_time_entry(ctx)])))


def _local_time(req: _EspiRequest) -> Response:
    return _atom(ef.entry_document(ef.local_time_entry(req.ctx)))


def _interval_blocks(req: _EspiRequest) -> Response:
    mr = _offered_meter_reading(req)
    if mr is None:
        return _no_resource()
    body = ef.interval_blocks_document(req.ctx, mr, req.query, req.params)
    if body is None:
        return _text(503, "no meter value yet", {"Retry-After": _retry_after(req.ctx.snap.poll_interval_s)})
    return _atom(body)


def _interval_block(req: _EspiRequest) -> Response:
    mr = _offered_meter_reading(req)
    if mr is None or req.route.block is None:
        return _no_resource()
    body = ef.interval_block_document(req.ctx, mr, req.route.block)
    if body is None:
        return _text(404, "no such interval block in the history held")
    return _atom(body)


# The ESPI answers, one per resource `_route` names (and `_current_value`, the INTERVAL_BLOCKS
# shortcut `espi` tries first).
ESPI_ANSWERS: dict[EspiResource, Callable[[_EspiRequest], Response]] = {
    EspiResource.BATCH: _batch,
    EspiResource.BATCH_USAGE_POINT: _batch_usage_point,
    EspiResource.READING_TYPES: _reading_types,
    EspiResource.READING_TYPE: _reading_type,
    EspiResource.LOCAL_TIMES: _local_times,
    EspiResource.LOCAL_TIME: _local_time,
    EspiResource.USAGE_POINTS: _usage_points,
    EspiResource.USAGE_POINT: _usage_point,
    EspiResource.METER_READINGS: _meter_readings,
    EspiResource.METER_READING: _meter_reading,
    EspiResource.INTERVAL_BLOCKS: _interval_blocks,
    EspiResource.INTERVAL_BLOCK: _interval_block,
}


@functools.lru_cache(maxsize=16)
def _current_value_paths(subscription: str) -> dict[str, ef.MeterReadingDef]:
    return {f"Subscription/{subscription}/UsagePoint/{ef.USAGE_POINT_ID}/MeterReading/{mr.id}/IntervalBlock": mr
            for mr in ef.METER_READINGS.values() if mr.quantity != "interval"}


# (subscription, MeterReading id, base URL) -> (latest reading, the store's maxima, the answer): the
# answer stands while both are the same objects (each new reading is a new object, and the maxima are
# replaced when a value outgrows them), so the request that hits it builds and allocates nothing; its
# `stands` also checks that the store is the same (answers come from memory, with an exponent of their
# own, once a damaged store is closed), and so holds the store while the entry is kept. The hit is
# checked against the caller's reading and maxima, not by `stands`, which checks the Readings the
# answer was built from: the key does not name the Readings (one in the LAN process, one per test).
# Holding them keeps their ids from being reused. Bounded: emptied when full (the base URL follows the
# Host a client names).
CURRENT_ANSWERS = 64
_current_answers: dict[tuple[str, str, str], tuple[Reading, object, Response]] = {}
_SHARED_HEADERS = types.MappingProxyType(dict(NO_STORE))    # read-only: one answer serves every request


def _current_value(readings: Readings, path: str, subscription: str, base_url: str) -> Response | None:
    """ESPI_ANSWERS' INTERVAL_BLOCKS answer for the parameterless IntervalBlock collection of
    a register or demand MeterReading (1, 2 or 5) with history on, straight from the latest reading:
    the same document `_interval_blocks` would build (the same memoised builder), without routing,
    snapshot, query parsing or Context, and the same Response object for every request until the
    reading or the store's maxima change (`stands` says whether it does: the app keeps it too). None:
    take the table's path (another resource, history off, or no value yet: the 503 is
    `_interval_blocks`')."""
    mr = _current_value_paths(subscription).get(path.strip("/"))
    store = open_store(readings)
    if mr is None or store is None:
        return None
    latest = readings.latest_of(mr.quantity)
    if latest is None:
        return None
    maxima = store.maxima()
    key = (subscription, mr.id, base_url)
    held = _current_answers.get(key)
    if held is not None and held[0] is latest and held[1] is maxima:
        return held[2]
    body = ef.current_value_document(subscription, base_url, "", mr, latest,
                                     store_exponent(store, mr.register, latest))

    def stands() -> bool:
        """What this answer was built from, besides the request, is all still current."""
        return (open_store(readings) is store and readings.latest_of(mr.quantity) is latest
                and store.maxima() is maxima)

    reply = Response(200, ATOM_TYPE, body, _SHARED_HEADERS, stands=stands)
    if len(_current_answers) >= CURRENT_ANSWERS:
        _current_answers.clear()
    _current_answers[key] = (latest, maxima, reply)
    return reply


def _route(segs: list[str]) -> EspiRoute | None:
    """The resource the path names, or None for a 404. The subscription segment has already been
    checked by the caller."""
    n = len(segs)
    if segs[:2] == ["Batch", "Subscription"]:
        if n == 3:
            return EspiRoute(EspiResource.BATCH)
        if n == 5 and segs[3] == "UsagePoint" and segs[4] == ef.USAGE_POINT_ID:
            return EspiRoute(EspiResource.BATCH_USAGE_POINT)
        return None
    if segs[:1] == ["ReadingType"]:
        if n == 1:
            return EspiRoute(EspiResource.READING_TYPES)
        if n == 2 and segs[1] in ef.READING_TYPES:
            return EspiRoute(EspiResource.READING_TYPE, segs[1])
        return None
    if segs[:1] == ["LocalTimeParameters"]:
        if n == 1:
            return EspiRoute(EspiResource.LOCAL_TIMES)
        if n == 2 and segs[1] == ef.LOCAL_TIME_ID:
            return EspiRoute(EspiResource.LOCAL_TIME)
        return None
    if n < 3 or segs[0] != "Subscription" or segs[2] != "UsagePoint":
        return None
    if n == 3:
        return EspiRoute(EspiResource.USAGE_POINTS)
    if segs[3] != ef.USAGE_POINT_ID:
        return None
    if n == 4:
        return EspiRoute(EspiResource.USAGE_POINT)
    if segs[4] != "MeterReading":
        return None
    if n == 5:
        return EspiRoute(EspiResource.METER_READINGS)
    if segs[5] not in ef.METER_READINGS:
        return None
    if n == 6:
        return EspiRoute(EspiResource.METER_READING, segs[5])
    if segs[6] != "IntervalBlock":
        return None
    if n == 7:
        return EspiRoute(EspiResource.INTERVAL_BLOCKS, segs[5])
    if n == 8:
        return EspiRoute(EspiResource.INTERVAL_BLOCK, segs[5], segs[7])
    return None


# -- JSON -------------------------------------------------------------------------------------------
def current_json(readings: Readings) -> Response:
    """The latest reading: W and Wh exactly as the meter's scaling gives them (a quantity the meter
    flagged invalid in that reading is null, and so is `received_wh` from a meter that does not report
    energy exported), its time tag, its age and ok / stale / no-data."""
    snap = readings.snapshot(history=False)
    latest = snap.latest
    return _json({
        "demand_w": _value(latest, "demand"),
        "summation_wh": _value(latest, "summation"),
        "received_wh": _value(latest, "received"),
        "time": iso_ms(latest.time) if latest else None,
        "age_s": _age(snap.now, latest.time) if latest else None,
        "status": data_status(snap),
    })


def status_json(readings: Readings, channel_counters: dict, lan_started: float) -> Response:
    """What the HAN side last reported, how old that report is, whether the HAN has gone silent,
    the LAN side's own uptime and the channel receiver's counters."""
    snap = readings.snapshot(history=False)
    rep, q = snap.report, snap.queries
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
        # Up to date with the readings and gaps received since the report (readings.QueryCounts).
        "queries_total": q.total if q else None,
        "queries_lost": q.lost if q else None,
        "lost_by_cause": dict(q.lost_by_cause) if q else None,
        "frames_bad": rep.frames_bad if rep else None,
        "guard_refused": rep.guard_refused if rep else None,
        "channel_dropped": rep.channel_dropped if rep else None,
        "poll_interval_s": rep.poll_interval_s if rep else None,
        # When it started on this machine's clock (its own `started` may be from before NTP set it).
        "han_started": iso_ms(snap.now - _han_uptime(snap)) if rep else None,
        "han_uptime_s": _han_uptime(snap),
        "report_time": iso_ms(rep.received) if rep else None,
        "report_age_s": _age(snap.now, rep.received) if rep else None,
        "last_message_age_s": last_age,
        "han_silent": last_age is None or last_age > snap.silent_after_s,
        "data_status": data_status(snap),
        "lan_started": iso_ms(lan_started),
        "lan_uptime_s": round(snap.uptime_s, 3),
        "channel": {**channel_counters, "lost_slots": snap.observed.channel_lost},
        "history": _history_status(readings),
        "clock": _clock_status(snap),
        "meter_changes": snap.observed.meter_changes,
        "register_breaks": snap.observed.register_breaks,
        "meter_event": ({"time": iso_ms(snap.observed.meter_event.time), "detail": snap.observed.meter_event.detail}
                        if snap.observed.meter_event else None),
        "power_bound_w": snap.power_bound_w,
    })


def _han_uptime(snap: Snapshot) -> float | None:
    """From the HAN's monotonic uptime plus the LAN's monotonic time since the report: a wall-clock
    step on either side changes neither (a HAN too old to report it: wall-clock difference)."""
    rep = snap.report
    if rep is None:
        return None
    if rep.uptime_s is None:
        return _age(snap.now, rep.started)
    return round(rep.uptime_s + max(0.0, snap.now_mono - rep.received_mono), 3)


def _clock_status(snap: Snapshot) -> dict:
    """The HAN's clock as it reported it, and what the LAN side did about it (README "Time")."""
    rep, seen = snap.report, snap.observed
    plausible = rep.clock_plausible if rep else None
    return {"plausible": plausible, "steps": rep.clock_steps if rep else None,
            "last_step_s": rep.clock_last_step_s if rep else None,
            "held": rep.clock_held if rep else None, "held_dropped": rep.clock_held_dropped if rep else None,
            "moves": seen.clock_moves, "was_wrong": seen.clock_wrong or plausible is False}


def _history_health(readings: Readings) -> HistoryHealth | None:
    """The persistent history's counters and bounds; None when history is off."""
    store = open_store(readings)
    if store is None:
        return None
    st = store.stats()
    with store.reading() as reader, reader.snapshot():
        oldest, newest = reader.oldest_ms(), reader.newest_ms()
    return HistoryHealth(st, None if oldest is None else oldest / 1000,
                         None if newest is None else newest / 1000)


def _history_status(readings: Readings) -> dict:
    """The persistent history: its health (`ok`, `failing`: open, writes refused and queued;
    `unavailable`: not open, answers come from memory) with the reason and since when, how much the
    file holds, its bounds, and what could not be stored."""
    history = readings.history
    if history is None:
        return {"enabled": False}
    store = history.open_store()
    state, problem, since = history.health()
    out = {"enabled": True, "health": state.value, "problem": problem,
           "problem_since": iso_ms(since) if since is not None else None}
    lost, errors = history.lost, history.write_errors
    if store is None:
        return {**out, "retention_days": history.retention_days, "rows": None, "oldest": None, "newest": None,
                "file_bytes": file_bytes(history.path), "queued": history.queued, "write_errors": errors,
                "lost": lost}
    st = store.stats()
    with store.reading() as reader, reader.snapshot():
        oldest, newest = reader.oldest_ms(), reader.newest_ms()
    return {**out, "retention_days": st.retention_days, "rows": st.rows,
            "oldest": iso_ms(oldest / 1000) if oldest is not None else None,
            "newest": iso_ms(newest / 1000) if newest is not None else None,
            "file_bytes": st.file_bytes, "bound_bytes": st.bound_bytes, "bound_rows": st.bound_rows,
            "queued": st.queued, "not_stored": st.skipped, "write_errors": st.write_errors + errors,
            "lost": st.dropped + lost, "behind": st.behind, "moved": st.moved, "replaced": st.replaced}


def metrics_text(readings: Readings, channel_counters: dict, lan_started: float) -> Response:
    """GET /metrics: Prometheus text exposition (metrics.render)."""
    body = metrics.render(readings.snapshot(history=False), channel_counters, _history_health(readings),
                          lan_started)
    return Response(200, metrics.CONTENT_TYPE, body.encode(), dict(NO_STORE))


HISTORY_DEFAULT_MIN = 60
HISTORY_MAX_MIN = 1440
HISTORY_MAX_STEP_S = 3600
HISTORY_PARAMS = ("minutes", "after", "step", "limit")


class _HistoryQuery:
    """The parameters of /api/v1/history, checked; `error` is the 400 text when one is wrong."""

    def __init__(self, params: Mapping[str, Any]):
        self.minutes, self.after, self.step, self.limit = HISTORY_DEFAULT_MIN, None, None, None
        self.error: str | None = None
        for name, value in params.items():
            if name not in HISTORY_PARAMS:
                self.error = (f"query parameter {espi_query.shown_name(name)}: unknown parameter "
                              f"(known: {', '.join(HISTORY_PARAMS)})")
            elif name == "after":
                self.after = _iso_time(value)
                if self.after is None:
                    self.error = "query parameter 'after': expected a time like 2026-11-24T13:30:00.000Z"
            else:
                top = {"minutes": HISTORY_MAX_MIN, "step": HISTORY_MAX_STEP_S, "limit": 100_000}[name]
                if (not isinstance(value, str) or not value.isascii() or not value.isdigit()
                        or len(value) > 6 or not 1 <= int(value) <= top):
                    self.error = f"query parameter {name!r}: expected a whole number from 1 to {top}"
                else:
                    setattr(self, name, int(value))
            if self.error:
                return


def _iso_time(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 time with a zone (as iso_ms writes them), or None."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40 or not value.isascii():
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return None if t.tzinfo is None else t.timestamp()


def history_json(readings: Readings, params: Mapping[str, Any]) -> Response:
    """The page's chart data: the last `minutes` (1-1440, default 60) of history, in time order, from
    the history store (or, with history off, what memory holds: Readings.history_s, so the first
    point may then be later than `from`). Each reading is a point and each slot the HAN could not
    read a gap, never to be drawn as a line.
      after=T   only what is later than T (an ISO time; the page passes the newest time it holds),
                so a page that keeps what it has fetches only what is new
      step=S    S-second buckets instead of single readings (aligned on the epoch): a point per bucket
                with the lowest and highest demand, the last register values and how many readings,
                and a gap entry per bucket with how many slots were missed; 24 hours at step=60 is
                1440 points, what a chart can show, instead of 12 000 at the production poll
      limit=N   at most N points (the earliest), and only the gaps before the last of them"""
    q = _HistoryQuery(params)
    if q.error:
        return _text(400, q.error)
    snap, source = answer_source(readings)
    since = snap.now - q.minutes * 60
    text = _ValueText()
    with source.consistent():
        if q.after is None:
            entries = source.entries(since)
        else:
            # Read from `after` on (the store reads only those rows), then drop what is not later.
            after_ms = t_ms_of(q.after)
            entries = (e for e in source.entries(max(since, after_ms / 1000))
                       if t_ms_of(e.time) > after_ms)
        points, gaps = (_buckets(entries, q.step, text) if q.step else _singles(entries, text))
    if q.limit is not None and len(points) > q.limit:
        points = points[:q.limit]
        last = _point_time(points[-1])
        gaps = [g for g in gaps if g["due"] < last]
    body = {"minutes": q.minutes, "from": iso_ms(since), "to": iso_ms(snap.now),
            "poll_interval_s": snap.poll_interval_s, "points": points, "gaps": gaps}
    if q.step:
        body["step_s"] = q.step
    return _json(body)


# What /api/v1/history reads: memory's readings and gaps (MemorySource), or the store's rows
# (StoreSource), each row a reading or a gap.
HistoryEntry = Union[Reading, Gap, Row]


def _lost_cause(e: HistoryEntry) -> str | None:
    """Why the slot was lost; None for a reading (a Reading, or a Row without a gap)."""
    return e.cause if isinstance(e, (Gap, Row)) else None


# A point is its JSON text alone, "time" first. It once carried its time string as an attribute too,
# which gave each point a __dict__: 900 bytes a point held while the answer was built, 3.2 MB for the
# hour at 1-s polls, and the allocators kept that high-water mark (bench/RESULTS.md, issue 16).
_TIME_AT = len('{"time":"')


def _point_time(point: str) -> str:
    """The time of a point, read back from its text (for `limit`)."""
    return point[_TIME_AT:point.index('"', _TIME_AT)]


def _singles(entries, text: "_ValueText") -> tuple[list, list]:
    points, gaps = [], []
    for e in entries:
        cause = _lost_cause(e)
        if cause is None:
            # Written out directly: the 24-hour view is ~12 000 points at the production poll.
            t = iso_ms(e.time)
            points.append(_Raw(f'{{"time":"{t}","slot":{e.slot},'
                               f'"demand_w":{text(e.demand, e.scaling)},'
                               f'"summation_wh":{text(e.summation, e.scaling)},'
                               f'"received_wh":{text(e.received, e.scaling)}}}'))
        else:
            gaps.append({"slot": e.slot, "due": iso_ms(e.time), "cause": cause})
    return points, gaps


def _buckets(entries, step: int, text: "_ValueText") -> tuple[list, list]:
    """Readings and gaps gathered per `step` seconds. Demands are compared in W (a change of scaling
    inside a bucket must not compare raw counts of different units) and written out exactly."""
    points, gaps = [], []
    watts: dict[Scaling, float] = {}
    bucket = lo = hi = last = last_received = None
    n = 0
    missed: dict[str, int] = {}

    def close():
        if bucket is None:
            return
        t = iso_ms(bucket)
        if n:
            points.append(_Raw(f'{{"time":"{t}","readings":{n},'
                               f'"demand_min_w":{lo[1] if lo else "null"},'
                               f'"demand_max_w":{hi[1] if hi else "null"},'
                               f'"summation_wh":{last},"received_wh":{last_received}}}'))
        if missed:
            cause = max(missed, key=missed.get)
            gaps.append({"due": t, "missed": sum(missed.values()), "cause": cause})

    for e in entries:
        b = e.time // step * step
        if b != bucket:
            close()
            bucket, lo, hi, last, last_received, n, missed = b, None, None, "null", "null", 0, {}
        cause = _lost_cause(e)
        if cause is not None:
            missed[cause] = missed.get(cause, 0) + 1
            continue
        n += 1
        if e.demand is not None:
            per = watts.get(e.scaling)
            if per is None:
                per = watts[e.scaling] = float(e.scaling.step)
            w = e.demand * per
            if lo is None or w < lo[0]:
                lo = (w, text(e.demand, e.scaling))
            if hi is None or w > hi[0]:
                hi = (w, text(e.demand, e.scaling))
        if e.summation is not None:
            last = text(e.summation, e.scaling)
        if e.received is not None:
            last_received = text(e.received, e.scaling)
    close()
    return points, gaps


class _ValueText:
    """scaling.value_text with the exponent worked out once per scaling."""

    def __init__(self):
        self._p: dict[Scaling, int] = {}

    def __call__(self, raw: int | None, scaling: Scaling) -> str:
        if raw is None:
            return "null"
        p = self._p.get(scaling)
        if p is None:
            p = self._p[scaling] = resolution_exponent(scaling)
        return decimal_text(scaled_int(raw, scaling, p), p)
