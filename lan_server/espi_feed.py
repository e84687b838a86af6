"""Green Button (ESPI 3.3) Atom documents, written with lxml. No I/O of its own and no clock (the
snapshot carries `now`): the data comes from a history source (history_source: the store, or memory
when history is off), so every document can be checked against usage.xsd in tests.

Resource space under {base}/espi/1_1/resource/ (ids are fixed; there is one meter):

    Subscription/{sub}/UsagePoint/1                                   the meter, ServiceCategory 0
        .../MeterReading/1  -> ReadingType/1                          instantaneous demand, W
        .../MeterReading/2  -> ReadingType/2                          energy delivered (register), Wh
        .../MeterReading/3  -> ReadingType/3                          energy per 15 minutes, Wh
                                                                      (only while history is kept)
        .../MeterReading/{1,2}/IntervalBlock/{hour}                   the readings taken in one UTC
                                                                      hour, {hour} = its epoch second
        .../MeterReading/3/IntervalBlock/{day}                        the intervals starting on one
                                                                      local day, {day} = its first second
    LocalTimeParameters/1                                             from the configured time zone
    Batch/Subscription/{sub}[/UsagePoint/1]                           all of the above

Links follow the Green Button pattern: every entry has `self` and `up` (its collection);
UsagePoint is `related` to its MeterReading collection and to LocalTimeParameters; each
MeterReading is `related` to its IntervalBlock collection and its ReadingType.

Entry ids are urn:uuid UUID v5 of ID_NAMESPACE + the resource path, so they are the same after a
restart, on every gateway serving that path, and never depend on the host name a client used.

IntervalReading of MeterReadings 1 and 2: timePeriod.start is the value's time tag (epoch s, rounded
down), duration the poll interval in force when the reading arrived (before the HAN's first status: the
slot spacing; 0 when unknown). MeterReading 3: one reading per complete quarter hour (interval_energy:
measured, or marked ReadingQuality 9 when interpolated across missed readings, or left out). `value` is
an integer in units of 10**powerOfTenMultiplier W or Wh (scaling.py); MeterReading 3 uses the exponent
of MeterReading 2, so its values are register differences in the register's own units.

Time parameters select by data time (espi_query): a reading is selected when its timePeriod.start is in
[since, until), and the selected readings are grouped into blocks as above, so every block returned
lies within the window. start-index and max-results page over IntervalBlock entries. Entry `published`
/ `updated` of an IntervalBlock are the starts of its first / last reading; the static resources carry
the time the LAN process started (the ReadingType: the first reading with the current scaling, if later).

Documents are written incrementally (etree.xmlfile), one entry at a time, so memory holds one block of
readings plus the output; an answer holds at most MAX_READINGS readings and then ends with a
`rel="next"` link (start-index of the first block left out), as GData paging does.

Download My Data (the Batch without parameters): the descriptive entries, every 15-minute interval held,
and the readings of MeterReadings 1 and 2 of the last BATCH_READINGS_S (24 hours); with parameters, all
three in the window. A 35-day Batch of 7-s readings would be ~100 MB that no Green Button tool wants;
parameters reach all of it, page by page.
"""
from __future__ import annotations

import datetime as dt
import functools
import io
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import quote, urlencode

from lxml import etree

from . import interval_energy as ie
from . import scaling as sc
from .local_time import LocalTime, local_time_parameters
from .readings import Snapshot

ATOM = "http://www.w3.org/2005/Atom"
ESPI = "http://naesb.org/espi"
RESOURCE_ROOT = "/espi/1_1/resource/"
ID_NAMESPACE = uuid.UUID("1130ef39-c849-483c-bc29-d66759748da0")

USAGE_POINT_ID = "1"
LOCAL_TIME_ID = "1"
BLOCK_SECONDS = 3600
MAX_READINGS = 60_000           # per answer (~7 MB of XML); more comes with rel="next"
BATCH_READINGS_S = 86_400
INTERVAL_CHUNK_S = 2 * 86_400   # of 15-minute energy computed at a time (~400 register samples)


@dataclass(frozen=True)
class MeterReadingDef:
    id: str
    reading_type: str
    quantity: str           # "demand" or "summation" (a reading attribute), or "interval"
    title: str
    unit: str
    uom: int                # UnitSymbolKind
    accumulation: int       # AccumulationKind
    kind: int               # MeasurementKind
    flow: int | None        # FlowDirectionKind, None: not stated
    interval_length: int | None = None

    @property
    def register(self) -> str:
        """The reading attribute its values come from."""
        return "summation" if self.quantity == "interval" else self.quantity


METER_READINGS = {
    # InstantaneousDemand is signed (negative = exported): its flow is "net" (FlowDirectionKind 4),
    # but Green Button tools know only forward (1) and reverse (19) and refuse a whole feed naming 4
    # (greenbutton-objects does), so the direction is left unstated: the sign says it.
    "1": MeterReadingDef("1", "1", "demand", "Instantaneous demand", "W", uom=38, accumulation=12,
                         kind=37, flow=None),
    # CurrentSummationDelivered is the import register: bulkQuantity, forward.
    "2": MeterReadingDef("2", "2", "summation", "Energy delivered (meter register)", "Wh", uom=72,
                         accumulation=1, kind=12, flow=1),
    # Differences of that register over quarter hours: deltaData, intervalLength 900.
    "3": MeterReadingDef("3", "3", "interval", "Energy delivered per 15 minutes", "Wh", uom=72,
                         accumulation=4, kind=12, flow=1, interval_length=ie.INTERVAL_S),
}
READING_TYPES = {mr.reading_type: mr for mr in METER_READINGS.values()}


@dataclass(frozen=True, slots=True)
class Point:
    start: int
    duration: int
    value: int
    quality: int | None = None


@dataclass(frozen=True)
class Block:
    id: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Context:
    snap: Snapshot
    base_url: str
    subscription: str
    time_zone: str
    source: object                  # history_source.MemorySource or StoreSource
    query_string: str = ""          # appended to the `self` link of the requested document

    @property
    def meter_readings(self) -> list[MeterReadingDef]:
        return [mr for mr in METER_READINGS.values() if mr.quantity != "interval" or self.source.intervals]

    def offers(self, mr_id: str | None = None, rt_id: str | None = None) -> bool:
        return any(mr.id == mr_id or mr.reading_type == rt_id for mr in self.meter_readings)


# -- paths and ids -------------------------------------------------------------------------------
def sub_path(sub: str) -> str:
    return f"Subscription/{quote(sub, safe='')}"


def usage_points_path(sub: str) -> str:
    return f"{sub_path(sub)}/UsagePoint"


def usage_point_path(sub: str) -> str:
    return f"{usage_points_path(sub)}/{USAGE_POINT_ID}"


def meter_readings_path(sub: str) -> str:
    return f"{usage_point_path(sub)}/MeterReading"


def meter_reading_path(sub: str, mr: str) -> str:
    return f"{meter_readings_path(sub)}/{mr}"


def interval_blocks_path(sub: str, mr: str) -> str:
    return f"{meter_reading_path(sub, mr)}/IntervalBlock"


def interval_block_path(sub: str, mr: str, ib: str) -> str:
    return f"{interval_blocks_path(sub, mr)}/{ib}"


def reading_type_path(rt: str) -> str:
    return f"ReadingType/{rt}"


def local_time_path() -> str:
    return f"LocalTimeParameters/{LOCAL_TIME_ID}"


def batch_path(sub: str) -> str:
    return f"Batch/{sub_path(sub)}"


def urn(path: str) -> str:
    return f"urn:uuid:{uuid.uuid5(ID_NAMESPACE, path)}"


def href(ctx: Context, path: str) -> str:
    return f"{ctx.base_url.rstrip('/')}{RESOURCE_ROOT}{path}"


def atom_time(t: float) -> str:
    return dt.datetime.fromtimestamp(int(t // 1), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- data: readings and intervals as ESPI points, grouped into blocks ----------------------------------
def _raw_points(ctx: Context, mr: MeterReadingDef, p: int, since, until) -> Iterator[Point]:
    quantity = mr.quantity
    for r in ctx.source.readings(quantity, since, until):
        interval_s = r.interval_s
        duration = max(0, round(interval_s)) if interval_s is not None else 0
        yield Point(int(r.time // 1), duration, sc.scaled_int(getattr(r, quantity), r.scaling, p))


def _hour_blocks(points: Iterable[Point]) -> Iterator[Block]:
    hour, current = None, []
    for pt in points:
        h = pt.start - pt.start % BLOCK_SECONDS
        if h != hour and current:
            yield Block(str(hour), tuple(current))
            current = []
        hour = h
        current.append(pt)
    if current:
        yield Block(str(hour), tuple(current))


def _interval_points(run: Iterable[ie.Interval], p: int) -> Iterator[Point]:
    for iv, value in ie.espi_values(run, p):
        yield Point(iv.start, ie.INTERVAL_S, value, ie.ESTIMATED if iv.estimated else None)


def _day_blocks(points: Iterable[Point], zone: str) -> Iterator[Block]:
    start = end = None
    current: list[Point] = []
    for pt in points:
        if end is None or not start <= pt.start < end:
            if current:
                yield Block(str(start), tuple(current))
            start = ie.day_start(pt.start, zone)
            end = ie.next_day_start(start, zone)
            current = []
        current.append(pt)
    if current:
        yield Block(str(start), tuple(current))


def exponent(ctx: Context, mr: MeterReadingDef) -> int:
    return ctx.source.exponent(mr.register)


def blocks(ctx: Context, mr: MeterReadingDef, since: int | None, until: int | None) -> Iterator[Block]:
    """The blocks of one MeterReading whose readings start in [since, until), in time order."""
    p = exponent(ctx, mr)
    if mr.quantity != "interval":
        return _hour_blocks(_raw_points(ctx, mr, p, since, until))
    return _day_blocks(_interval_points(_intervals(ctx.source, since, until), p), ctx.time_zone)


def _intervals(source, since: int | None, until: int | None) -> Iterator[ie.Interval]:
    """The intervals starting in [since, until), computed INTERVAL_CHUNK_S at a time: the register
    query for a window brackets its own edges, so chunks join exactly, and memory holds one chunk's
    register samples whatever the length of the history."""
    lo = since if since is not None else source.oldest()
    newest = source.newest()
    hi = until if until is not None else (None if newest is None else int(newest // 1) + 1)
    if lo is None or hi is None:
        return
    lo = int(lo // 1)
    while lo < hi:
        end = min(hi, lo + INTERVAL_CHUNK_S)
        for iv in ie.intervals(source.register(lo, end)):
            if lo <= iv.start < end:
                yield iv
        lo = end


def current_block(ctx: Context, mr: MeterReadingDef) -> Block | None:
    """The block holding only the current value (the newest complete interval for MeterReading 3),
    or None when there is none yet."""
    p = exponent(ctx, mr)
    if mr.quantity == "interval":
        last = ctx.source.latest_interval()
        if last is None:
            return None
        (pt,) = _interval_points([last], p)
        return Block(str(ie.day_start(pt.start, ctx.time_zone)), (pt,))
    latest = ctx.snap.latest_demand if mr.quantity == "demand" else ctx.snap.latest_summation
    return None if latest is None else _latest_block(mr, latest, p)


def _latest_block(mr: MeterReadingDef, latest, p: int) -> Block:
    duration = max(0, round(latest.interval_s)) if latest.interval_s is not None else 0
    pt = Point(int(latest.time // 1), duration, sc.scaled_int(getattr(latest, mr.quantity), latest.scaling, p))
    return Block(str(pt.start - pt.start % BLOCK_SECONDS), (pt,))


# -- lxml building blocks ----------------------------------------------------------------------------
def _a(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
    if text is not None:
        el.text = text
    return el


def _e(parent: etree._Element, tag: str, text: object = None) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ESPI}}}{tag}")
    if text is not None:
        el.text = str(text)
    return el


@dataclass
class Entry:
    element: etree._Element
    updated: float


def _entry(ctx: Context, *, path: str, up: str, related: list[str], title: str, published: float,
           updated: float, content: str) -> tuple[Entry, etree._Element]:
    entry = etree.Element(f"{{{ATOM}}}entry", nsmap={None: ATOM})
    _a(entry, "id", urn(path))
    _a(entry, "link", rel="self", href=href(ctx, path))
    _a(entry, "link", rel="up", href=href(ctx, up))
    for rel_path in related:
        _a(entry, "link", rel="related", href=href(ctx, rel_path))
    _a(entry, "title", title)
    holder = _a(entry, "content")
    obj = etree.SubElement(holder, f"{{{ESPI}}}{content}", nsmap={None: ESPI})
    _a(entry, "published", atom_time(published))
    _a(entry, "updated", atom_time(updated))
    return Entry(entry, updated), obj


def usage_point_entry(ctx: Context) -> Entry:
    sub, snap = ctx.subscription, ctx.snap
    entry, obj = _entry(ctx, path=usage_point_path(sub), up=usage_points_path(sub),
                        related=[meter_readings_path(sub), local_time_path()],
                        title="Electricity meter (ZigBee Smart Energy)",
                        published=snap.created, updated=snap.created, content="UsagePoint")
    _e(_e(obj, "ServiceCategory"), "kind", 0)
    return entry


def meter_reading_entry(ctx: Context, mr: MeterReadingDef) -> Entry:
    sub, snap = ctx.subscription, ctx.snap
    entry, _ = _entry(ctx, path=meter_reading_path(sub, mr.id), up=meter_readings_path(sub),
                      related=[interval_blocks_path(sub, mr.id), reading_type_path(mr.reading_type)],
                      title=mr.title, published=snap.created, updated=snap.created,
                      content="MeterReading")
    return entry


def reading_type_entry(ctx: Context, mr: MeterReadingDef) -> Entry:
    snap = ctx.snap
    updated = max(snap.created, snap.scaling_since or snap.created)
    entry, obj = _entry(ctx, path=reading_type_path(mr.reading_type), up="ReadingType", related=[],
                        title=f"{mr.title}, {mr.unit}", published=snap.created, updated=updated,
                        content="ReadingType")
    # Element order is the xs:sequence order of usage.xsd ReadingType.
    _e(obj, "accumulationBehaviour", mr.accumulation)
    _e(obj, "commodity", 1)
    if mr.flow is not None:
        _e(obj, "flowDirection", mr.flow)
    if mr.interval_length is not None:
        _e(obj, "intervalLength", mr.interval_length)
    _e(obj, "kind", mr.kind)
    _e(obj, "powerOfTenMultiplier", exponent(ctx, mr))
    _e(obj, "timeAttribute", 0)
    _e(obj, "uom", mr.uom)
    return entry


def local_time_entry(ctx: Context) -> Entry:
    lt: LocalTime = local_time_parameters(ctx.time_zone, ctx.snap.now)
    entry, obj = _entry(ctx, path=local_time_path(), up="LocalTimeParameters", related=[],
                        title=f"Local time: {ctx.time_zone}", published=ctx.snap.created,
                        updated=ctx.snap.created, content="LocalTimeParameters")
    _e(obj, "dstEndRule", LocalTime.hex(lt.dst_end_rule))
    _e(obj, "dstOffset", lt.dst_offset)
    _e(obj, "dstStartRule", LocalTime.hex(lt.dst_start_rule))
    _e(obj, "tzOffset", lt.tz_offset)
    return entry


def interval_block_entry(ctx: Context, mr: MeterReadingDef, block: Block) -> Entry:
    sub = ctx.subscription
    first, last = block.points[0], block.points[-1]
    span = "local day" if mr.quantity == "interval" else "hour"
    entry, obj = _entry(ctx, path=interval_block_path(sub, mr.id, block.id),
                        up=interval_blocks_path(sub, mr.id), related=[],
                        title=f"{mr.title}, {span} from {atom_time(int(block.id))}",
                        published=first.start, updated=last.start, content="IntervalBlock")
    end = max(pt.start + pt.duration for pt in block.points)
    interval = _e(obj, "interval")
    _e(interval, "duration", end - first.start)
    _e(interval, "start", first.start)
    sub_el, espi = etree.SubElement, f"{{{ESPI}}}"
    reading_tag, quality_tag, q_tag = espi + "IntervalReading", espi + "ReadingQuality", espi + "quality"
    period_tag, duration_tag, start_tag, value_tag = (espi + "timePeriod", espi + "duration", espi + "start",
                                                      espi + "value")
    for pt in block.points:
        reading = sub_el(obj, reading_tag)
        if pt.quality is not None:
            sub_el(sub_el(reading, quality_tag), q_tag).text = str(pt.quality)
        period = sub_el(reading, period_tag)
        sub_el(period, duration_tag).text = str(pt.duration)
        sub_el(period, start_tag).text = str(pt.start)
        sub_el(reading, value_tag).text = str(pt.value)
    return entry


# -- writing documents -------------------------------------------------------------------------------
def entry_document(entry: Entry) -> bytes:
    return etree.tostring(entry.element, xml_declaration=True, encoding="UTF-8")


class _Feed:
    """An Atom feed written as it is produced. `updated` must be known first: Green Button clients read
    the feed's head before its entries."""

    def __init__(self, ctx: Context, xf, *, path: str, title: str, updated: float):
        self.ctx, self.xf, self.path = ctx, xf, path
        head = etree.Element(f"{{{ATOM}}}feed", nsmap={None: ATOM})
        _a(head, "id", urn(path))
        _a(head, "title", title)
        _a(head, "updated", atom_time(updated))
        _a(head, "link", rel="self", href=href(ctx, path) + ctx.query_string)
        for child in head:
            xf.write(child)

    def write(self, entry: Entry) -> None:
        self.xf.write(entry.element)

    def next_link(self, params: dict[str, str]) -> None:
        link = etree.Element(f"{{{ATOM}}}link", rel="next",
                             href=href(self.ctx, self.path) + "?" + urlencode(params))
        self.xf.write(link)


def _write(build) -> bytes:
    out = io.BytesIO()
    with etree.xmlfile(out, encoding="UTF-8") as xf:
        xf.write_declaration()
        with xf.element(f"{{{ATOM}}}feed", nsmap={None: ATOM}):
            build(xf)
    return out.getvalue()


def feed_document(ctx: Context, *, path: str, title: str, entries: list[Entry]) -> bytes:
    updated = max((e.updated for e in entries), default=None)
    if updated is None:
        updated = ctx.snap.now

    def build(xf):
        f = _Feed(ctx, xf, path=path, title=title, updated=updated)
        for e in entries:
            f.write(e)
    return _write(build)


class Pager:
    """start-index / max-results over IntervalBlock entries, plus the per-answer reading budget."""

    def __init__(self, query, max_readings: int | None = None):
        self.query = query
        self.skip = query.start_index - 1
        self.left = query.max_results
        self.budget = MAX_READINGS if max_readings is None else max_readings
        self.emitted = 0
        self.cut = False            # a block was left out for max-results or the budget

    def take(self, block: Block) -> bool:
        if self.cut:
            return False
        if self.skip:
            self.skip -= 1
            return False
        if self.left == 0 or (self.emitted and len(block.points) > self.budget):
            self.cut = True
            return False
        self.emitted += 1
        self.budget -= len(block.points)
        if self.left is not None:
            self.left -= 1
        return True

    def next_params(self, params: dict[str, str]) -> dict[str, str]:
        return {**params, "start-index": str(self.query.start_index + self.emitted)}


def _updated(ctx: Context, since, until, static: float | None = None) -> float:
    newest = ctx.source.newest(since, until)
    times = [t for t in (newest, static) if t is not None]
    return max(times) if times else ctx.snap.now


@functools.lru_cache(maxsize=64)
def _current_value_document(subscription: str, base_url: str, query_string: str, mr: MeterReadingDef, latest,
                            p: int) -> bytes:
    """The parameterless IntervalBlock answer of MeterReading 1 or 2. It depends on exactly these
    arguments (nothing else reaches it: no snapshot, no store), so it is built once per reading and per
    base URL instead of once per request: at load, building it with lxml among the server's threads was
    half the LAN process's CPU (bench/RESULTS.md). Bounded: 64 small documents."""
    ctx = Context(snap=None, base_url=base_url, subscription=subscription, time_zone="", source=None,
                  query_string=query_string)
    entry = interval_block_entry(ctx, mr, _latest_block(mr, latest, p))
    return feed_document(ctx, path=interval_blocks_path(subscription, mr.id), title=f"{mr.title}: current value",
                         entries=[entry])


def interval_blocks_document(ctx: Context, mr: MeterReadingDef, query, params: dict[str, str]) -> bytes | None:
    """No ESPI parameter: the current value only (None if there is none yet, the caller's 503).
    With parameters: the history held in the window, paged."""
    path = interval_blocks_path(ctx.subscription, mr.id)
    if not query.history and mr.quantity != "interval":
        # From memory only (the latest reading, the store's running maxima): no read transaction.
        latest = ctx.snap.latest_demand if mr.quantity == "demand" else ctx.snap.latest_summation
        if latest is None:
            return None
        return _current_value_document(ctx.subscription, ctx.base_url, ctx.query_string, mr, latest,
                                       exponent(ctx, mr))
    with ctx.source.consistent():
        if not query.history:
            block = current_block(ctx, mr)
            if block is None:
                return None
            return feed_document(ctx, path=path, title=f"{mr.title}: current value",
                                 entries=[interval_block_entry(ctx, mr, block)])
        since, until = query.since, query.until
        updated = _updated(ctx, since, until)

        def build(xf):
            f = _Feed(ctx, xf, path=path, title=f"{mr.title}: history", updated=updated)
            pager = Pager(query)
            for block in blocks(ctx, mr, since, until):
                if pager.take(block):
                    f.write(interval_block_entry(ctx, mr, block))
                elif pager.cut:
                    f.next_link(pager.next_params(params))
                    break
        return _write(build)


def interval_block_document(ctx: Context, mr: MeterReadingDef, ib: str) -> bytes | None:
    """One block as held now, or None (404) when history holds nothing for it."""
    if not ib.isascii() or not ib.isdigit() or len(ib) > 12:
        return None
    start = int(ib)
    if mr.quantity == "interval":
        if not ie.is_day_start(start, ctx.time_zone):
            return None
        end = ie.next_day_start(start, ctx.time_zone)
    else:
        if start % BLOCK_SECONDS:
            return None
        end = start + BLOCK_SECONDS
    with ctx.source.consistent():
        found = [b for b in blocks(ctx, mr, start, end) if b.id == ib]
        if not found:
            return None
        return entry_document(interval_block_entry(ctx, mr, found[0]))


def batch_document(ctx: Context, query, params: dict[str, str], *, usage_point: bool = False) -> bytes:
    """Download My Data: UsagePoint, LocalTimeParameters, then each MeterReading with its
    ReadingType and IntervalBlocks. Parameters select and page the IntervalBlocks only: the
    descriptive entries are always there, since the values mean nothing without them."""
    path = batch_path(ctx.subscription) + (f"/UsagePoint/{USAGE_POINT_ID}" if usage_point else "")
    snap = ctx.snap
    with ctx.source.consistent():
        if query.history:
            windows = {mr.id: (query.since, query.until) for mr in ctx.meter_readings}
        else:
            recent = int(snap.now // 1) - BATCH_READINGS_S
            windows = {mr.id: (None, None) if mr.quantity == "interval" else (recent, None)
                       for mr in ctx.meter_readings}
        static = max(snap.created, snap.scaling_since or snap.created)
        updated = max(_updated(ctx, since, until, static) for since, until in windows.values())

        def build(xf):
            f = _Feed(ctx, xf, path=path, title="OpenSEG Green Button data", updated=updated)
            f.write(usage_point_entry(ctx))
            f.write(local_time_entry(ctx))
            pager = Pager(query)
            for mr in ctx.meter_readings:
                f.write(meter_reading_entry(ctx, mr))
                f.write(reading_type_entry(ctx, mr))
                if pager.cut:
                    continue
                for block in blocks(ctx, mr, *windows[mr.id]):
                    if pager.take(block):
                        f.write(interval_block_entry(ctx, mr, block))
                    elif pager.cut:
                        break
            if pager.cut:
                f.next_link(pager.next_params(params))
        return _write(build)
