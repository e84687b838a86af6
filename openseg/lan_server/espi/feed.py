"""Green Button (ESPI 3.3) Atom documents, written with lxml. No I/O of its own and no clock (the
snapshot carries `now`): the data comes from a history source (state.history_source: the store, or memory
when history is off), so every document can be checked against usage.xsd in tests.

Resource space under {base}/espi/1_1/resource/ (ids are fixed; there is one meter):

    Subscription/{sub}/UsagePoint/1                                   the meter, ServiceCategory 0
        .../MeterReading/1  -> ReadingType/1                          instantaneous demand, W
        .../MeterReading/2  -> ReadingType/2                          energy delivered (register), Wh
        .../MeterReading/3  -> ReadingType/3                          energy per 15 minutes, Wh
                                                                      (only while history is kept)
        .../MeterReading/4  -> ReadingType/4                          energy exported per 15 minutes
        .../MeterReading/5  -> ReadingType/5                          energy received (export register)
                                                                      (4 and 5 while the meter reports
                                                                      CurrentSummationReceived)
        .../MeterReading/{1,2}/IntervalBlock/{hour}                   the readings taken in one UTC
                                                                      hour, {hour} = its epoch second
        .../MeterReading/3/IntervalBlock/{day}                        the intervals starting on one
                                                                      local day, {day} = its first second
        .../MeterReading/{1,2,3}/IntervalBlock/current                the current value (one reading)
    LocalTimeParameters/1                                             from the configured time zone
    Batch/Subscription/{sub}[/UsagePoint/1]                           Download My Data (below)

Links follow the Green Button pattern: every entry has `self` and `up` (its collection);
UsagePoint is `related` to its MeterReading collection and to LocalTimeParameters; each
MeterReading is `related` to its IntervalBlock collection and its ReadingType.

Entry ids are urn:uuid UUID v5 of ID_NAMESPACE + the resource path, so they are the same after a
restart, on every gateway serving that path, and never depend on the host name a client used. Each
content has its own path: the current value is the `current` block, never an hour or day block.

The data model (README, "Green Button data model", says why):
- MeterReadings 3 (import) and 4 (export, flowDirection 19) are what a tariff tool sums: clock-aligned
  quarter hours of energy, deltaData (ReadingType
  accumulationBehaviour 4, intervalLength 900), one reading per complete quarter hour (interval_energy:
  measured, ReadingQuality 9 when interpolated across missed readings, or left out). Its `current`
  block is the quarter hour in progress up to the newest sample (interval_energy.in_progress), so the
  intervals plus the current value add up to every Wh the register counted, from the first minute on.
- MeterReadings 1, 2 and 5 hold the raw 7-s samples (demand, the import and the export register, a
  bulkQuantity). Summing them means nothing, so Download My Data carries only their current value;
  every sample is under their IntervalBlock collections with parameters, and in their hour blocks.
- An IntervalBlock collection without parameters answers exactly one reading, the current value.

IntervalReading of MeterReadings 1 and 2: timePeriod.start is the value's time tag (epoch s, rounded
down), duration the poll interval in force when the reading arrived (0 when unknown). `value` is an
integer in units of 10**powerOfTenMultiplier W or Wh (scaling.py); MeterReading 3 uses the exponent of
MeterReading 2, so its values are register differences in the register's own units.

Time: a reading has a data time (timePeriod.start) and an availability time (when the gateway had it:
a raw sample's time tag; the time tag of the sample that completed a quarter hour). published-min/-max
select by data time, updated-min/-max by availability (query.Window); an IntervalBlock entry's
`published` / `updated` are the availability of its first / last reading. Every window is clamped to
the data held, so no parameters make an answer walk empty years.

Paging: max-results counts entries (Atom/GData). An answer holds at most MAX_READINGS readings; when
max-results or that budget leaves blocks out, it ends with a `rel="next"` link carrying the same window
and `resume-at` = the start of the first block left out: a position in time, so every page costs what the
first did. The first page of the Batch holds the descriptive entries (at least one block always follows,
so a walk progresses); later pages hold only blocks.
"""
from __future__ import annotations

import datetime as dt
import functools
import heapq
import io
import itertools
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import quote, urlencode

from lxml import etree

from . import interval_energy as ie
from . import scaling as sc
from .local_time import LocalTime, local_time_parameters
from .query import Window
from .inputs import RAW_VALUE, HistorySource, Moment, Sample

ATOM = "http://www.w3.org/2005/Atom"
ESPI = "http://naesb.org/espi"
RESOURCE_ROOT = "/espi/1_1/resource/"
ID_NAMESPACE = uuid.UUID("1130ef39-c849-483c-bc29-d66759748da0")

USAGE_POINT_ID = "1"
LOCAL_TIME_ID = "1"
BLOCK_SECONDS = 3600
MAX_READINGS = 20_000           # per answer (~2.5 MB of XML, ~0.3 s of CPU); more comes with rel="next"
INTERVAL_CHUNK_S = 2 * 86_400   # of 15-minute energy computed at a time (~400 register samples)
CURRENT = "current"             # the IntervalBlock id of a MeterReading's current value
DEFAULT_CURRENCY = 840          # ISO 4217 numeric (USD), as Green Button feeds carry; [lan] currency
# ReadingType fields every MeterReading shares, as utility feeds carry them (README).
COMMODITY_ELECTRICITY = 1
PHASE_ALL = 224                 # PhaseCodeKind "involving all phases": the meter measures the service
DATA_QUALIFIER_NORMAL = 12
QUALITY_VALID = 0               # defaultQuality; readings that differ carry their own ReadingQuality


@dataclass(frozen=True)
class MeterReadingDef:
    id: str
    reading_type: str
    quantity: str           # "demand", "summation", "received" (a reading attribute), or "interval"
    title: str
    unit: str
    uom: int                # UnitSymbolKind
    accumulation: int       # AccumulationKind
    kind: int               # MeasurementKind
    flow: int               # FlowDirectionKind
    interval_length: int    # seconds: the quarter hour, or the poll interval of raw samples
    register: str = ""      # the reading attribute its values come from (default: `quantity`)

    def __post_init__(self):
        if not self.register:
            object.__setattr__(self, "register", self.quantity)

    @property
    def exported(self) -> bool:
        return self.register == "received"


METER_READINGS = {
    # InstantaneousDemand is signed (negative = exported), a "net" flow (FlowDirectionKind 4), but
    # Green Button tools know only forward (1) and reverse (19): greenbutton-objects refuses a whole feed
    # naming 4, a tariff tool drops a ReadingType without one, and the GBA's demand test (FB_06) looks
    # for forward. So it is stated forward, and a negative value is power flowing back.
    "1": MeterReadingDef("1", "1", "demand", "Instantaneous demand", "W", uom=38, accumulation=12,
                         kind=37, flow=1, interval_length=int(ie.DEFAULT_POLL_S)),
    # CurrentSummationDelivered is the import register: bulkQuantity, forward.
    "2": MeterReadingDef("2", "2", "summation", "Energy delivered (meter register)", "Wh", uom=72,
                         accumulation=1, kind=12, flow=1, interval_length=int(ie.DEFAULT_POLL_S)),
    # Differences of that register over quarter hours: deltaData, intervalLength 900.
    "3": MeterReadingDef("3", "3", "interval", "Energy delivered per 15 minutes", "Wh", uom=72,
                         accumulation=4, kind=12, flow=1, interval_length=ie.INTERVAL_S, register="summation"),
    # CurrentSummationReceived, the export register, and its quarter hours: reverse (19). Offered while
    # the meter reports it (a meter without it answers UNSUPPORTED_ATTRIBUTE: no export MeterReadings).
    "4": MeterReadingDef("4", "4", "interval", "Energy received (exported) per 15 minutes", "Wh", uom=72,
                         accumulation=4, kind=12, flow=19, interval_length=ie.INTERVAL_S, register="received"),
    "5": MeterReadingDef("5", "5", "received", "Energy received (meter register)", "Wh", uom=72,
                         accumulation=1, kind=12, flow=19, interval_length=int(ie.DEFAULT_POLL_S)),
}
READING_TYPES = {mr.reading_type: mr for mr in METER_READINGS.values()}


@dataclass(frozen=True, slots=True)
class Point:
    start: int
    duration: int
    value: int
    quality: int | None = None
    available: int = 0          # epoch s when the gateway had it (a raw sample: its own time tag)


@dataclass(frozen=True)
class Block:
    id: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Context:
    snap: Moment
    base_url: str
    subscription: str
    time_zone: str
    source: HistorySource           # history_source.MemorySource or StoreSource
    query_string: str = ""          # appended to the `self` link of the requested document
    currency: int = DEFAULT_CURRENCY

    @property
    def meter_readings(self) -> list[MeterReadingDef]:
        exports = self.snap.latest_received is not None
        return [mr for mr in METER_READINGS.values()
                if (mr.quantity != "interval" or self.source.intervals) and (exports or not mr.exported)]

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
    quantity = mr.register
    raw = RAW_VALUE[quantity]
    for r in ctx.source.readings(quantity, since, until):
        interval_s = r.interval_s
        duration = max(0, round(interval_s)) if interval_s is not None else 0
        start = int(r.time // 1)
        yield Point(start, duration, sc.scaled_int(raw(r), r.scaling, p), None, start)


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
        yield Point(iv.start, iv.duration_s, value, ie.ESTIMATED if iv.estimated else None,
                    iv.available_ms // 1000)


def _day_blocks(points: Iterable[Point], zone: str) -> Iterator[Block]:
    return (Block(str(start), tuple(day)) for start, day in ie.day_blocks(points, zone))


def exponent(ctx: Context, mr: MeterReadingDef) -> int:
    return ctx.source.exponent(mr.register)


def _clamp(lo: int | None, hi: int | None, oldest: float | None, newest: float | None) -> tuple[int, int] | None:
    """[lo, hi) narrowed to the data held, or None when they do not meet: what keeps a window of
    0001..9999 as cheap as the history it actually covers."""
    if oldest is None or newest is None:
        return None
    lo = int(oldest // 1) if lo is None else max(lo, int(oldest // 1))
    hi = int(newest // 1) + 1 if hi is None else min(hi, int(newest // 1) + 1)
    return (lo, hi) if lo < hi else None


def blocks(ctx: Context, mr: MeterReadingDef, window: Window, skip: int = 0) -> Iterator[Block]:
    """The history blocks of one MeterReading holding the readings in `window`, in time order, less
    the first `skip` of them."""
    p = exponent(ctx, mr)
    source = ctx.source
    if mr.quantity != "interval":
        # A raw sample is available at its own time tag: both bounds narrow the same data time.
        lo = max((b for b in (window.since, window.available_since) if b is not None), default=None)
        hi = min((b for b in (window.until, window.available_until) if b is not None), default=None)
        span = _clamp(lo, hi, source.oldest(), source.newest())
        if span is not None and skip:
            # One hour a block: the store finds where the skipped hours end without reading them.
            hour = source.nth_hour(mr.register, *span, skip)
            span = None if hour is None else (max(span[0], hour), span[1])
        if span is None:
            return iter(())
        return _hour_blocks(_raw_points(ctx, mr, p, *span))
    if skip:
        return itertools.islice(blocks(ctx, mr, window), skip, None)
    # A quarter hour becomes available when the sample after its end arrives: at most MAX_ESTIMATE_S
    # and one interval after its start, so updated-min narrows the data time searched to that much.
    lo = window.since
    if window.available_since is not None:
        earliest = window.available_since - ie.MAX_ESTIMATE_S - 2 * ie.INTERVAL_S
        lo = earliest if lo is None else max(lo, earliest)
    hi = min((b for b in (window.until, window.available_until) if b is not None), default=None)
    oldest = source.oldest()
    span = _clamp(lo, hi, None if oldest is None else oldest - ie.INTERVAL_S, source.newest())
    if span is None:
        return iter(())
    run = (iv for iv in _intervals(source, *span, mr.register, ctx.snap.power_bound_w)
           if window.holds(iv.start, iv.available_ms // 1000))
    return _day_blocks(_interval_points(run, p), ctx.time_zone)


def _intervals(source: HistorySource, lo: int, hi: int, register: str, bound_w: float) -> Iterator[ie.Interval]:
    """The complete intervals starting in [lo, hi), computed INTERVAL_CHUNK_S at a time: the register
    query for a window brackets its own edges, so chunks join exactly, and memory holds one chunk's
    register samples whatever the length of the history."""
    while lo < hi:
        end = min(hi, lo + INTERVAL_CHUNK_S)
        for iv in ie.intervals(source.register(lo, end, register), bound_w):
            if lo <= iv.start < end:
                yield iv
        lo = end


def current_point(ctx: Context, mr: MeterReadingDef) -> Point | None:
    """The current value: the latest reading (MeterReadings 1, 2) or the quarter hour in progress
    (MeterReading 3); None when there is none yet."""
    p = exponent(ctx, mr)
    if mr.quantity == "interval":
        newest = ctx.source.newest()
        if newest is None:
            return None
        boundary = int(newest // 1) // ie.INTERVAL_S * ie.INTERVAL_S
        iv = ie.in_progress(ctx.source.register(boundary, None, mr.register), ctx.snap.power_bound_w)
        return None if iv is None else next(_interval_points([iv], p))
    latest = ctx.snap.latest_with(mr.register)
    return None if latest is None else _latest_point(mr, latest, p)


def _latest_point(mr: MeterReadingDef, latest: Sample, p: int) -> Point:
    duration = max(0, round(latest.interval_s)) if latest.interval_s is not None else 0
    start = int(latest.time // 1)
    return Point(start, duration, sc.scaled_int(RAW_VALUE[mr.register](latest), latest.scaling, p), None, start)


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
    interval_length = mr.interval_length
    if mr.quantity != "interval" and snap.poll_interval_s is not None:
        interval_length = max(1, round(snap.poll_interval_s))     # what the samples are spaced by
    # Element order is the xs:sequence order of usage.xsd ReadingType.
    _e(obj, "accumulationBehaviour", mr.accumulation)
    _e(obj, "commodity", COMMODITY_ELECTRICITY)
    _e(obj, "currency", ctx.currency)
    _e(obj, "dataQualifier", DATA_QUALIFIER_NORMAL)
    _e(obj, "defaultQuality", QUALITY_VALID)
    _e(obj, "flowDirection", mr.flow)
    _e(obj, "intervalLength", interval_length)
    _e(obj, "kind", mr.kind)
    _e(obj, "phase", PHASE_ALL)
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
    first = block.points[0]
    if block.id == CURRENT:
        title = f"{mr.title}: current value"
    else:
        span = "local day" if mr.quantity == "interval" else "hour"
        title = f"{mr.title}, {span} from {atom_time(int(block.id))}"
    entry, obj = _entry(ctx, path=interval_block_path(sub, mr.id, block.id),
                        up=interval_blocks_path(sub, mr.id), related=[], title=title,
                        published=min(pt.available for pt in block.points),
                        updated=max(pt.available for pt in block.points), content="IntervalBlock")
    end = max(pt.start + pt.duration for pt in block.points)
    # The readings are integers only, so their XML is written as text and parsed once by libxml2:
    # building five lxml elements per reading from Python was most of the cost of a long export.
    parts = [f'<IntervalBlock xmlns="{ESPI}"><interval><duration>{end - first.start}</duration>'
             f"<start>{first.start}</start></interval>"]
    parts += [(f"<IntervalReading><ReadingQuality><quality>{pt.quality}</quality></ReadingQuality>"
               if pt.quality is not None else "<IntervalReading>")
              + f"<timePeriod><duration>{pt.duration}</duration><start>{pt.start}</start></timePeriod>"
                f"<value>{pt.value}</value></IntervalReading>" for pt in block.points]
    parts.append("</IntervalBlock>")
    obj.getparent().replace(obj, etree.fromstring("".join(parts)))
    return entry


# -- writing documents -------------------------------------------------------------------------------
def entry_document(entry: Entry) -> bytes:
    return etree.tostring(entry.element, xml_declaration=True, encoding="UTF-8")


class _Feed:
    """An Atom feed written as it is produced. `updated` must be known first: Green Button clients read
    the feed's head before its entries. The head's children are written inside the feed element, so
    they inherit its namespace instead of each declaring it again (a JavaScript parser read such a
    head's `updated` as Invalid Date)."""

    def __init__(self, ctx: Context, xf, *, path: str, title: str, updated: float):
        self.ctx, self.xf, self.path = ctx, xf, path
        for tag, text in (("id", urn(path)), ("title", title), ("updated", atom_time(updated))):
            with xf.element(f"{{{ATOM}}}{tag}"):
                xf.write(text)
        with xf.element(f"{{{ATOM}}}link", rel="self", href=href(ctx, path) + ctx.query_string):
            pass

    def write(self, entry: Entry) -> None:
        self.xf.write(entry.element)

    def next_link(self, params: dict[str, str], resume_at: int) -> None:
        params = {k: v for k, v in params.items() if k != "start-index"}
        params["resume-at"] = atom_time(resume_at)
        with self.xf.element(f"{{{ATOM}}}link", rel="next", href=href(self.ctx, self.path) + "?" + urlencode(params)):
            pass


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
    """max-results over entries (`used`: those already on the page), start-index over blocks (GData
    clients), and the per-answer reading budget; `resume_at` is where the next page starts."""

    def __init__(self, query, used: int = 0):
        self.skip = query.start_index - 1
        self.left = None if query.max_results is None else max(1, query.max_results - used)
        self.budget = MAX_READINGS
        self.emitted = 0
        self.last_id: str | None = None
        self.resume_at: int | None = None     # set when a block was left out

    def take(self, block: Block) -> bool:
        if self.resume_at is not None:
            return False
        if self.skip:
            self.skip -= 1
            return False
        # Blocks of one time (the Batch's import and export of a day) stay on one page: the next
        # page starts at a time, so it must not hold half of one.
        if block.id != self.last_id and (self.left == 0 or (self.emitted and len(block.points) > self.budget)):
            self.resume_at = int(block.id)
            return False
        self.last_id = block.id
        self.emitted += 1
        self.budget -= len(block.points)
        if self.left is not None:
            self.left = max(0, self.left - 1)
        return True


def _walk(ctx: Context, f: _Feed, mr_blocks, pager: Pager, params: dict[str, str]) -> None:
    for mr, block in mr_blocks:
        if pager.take(block):
            f.write(interval_block_entry(ctx, mr, block))
        elif pager.resume_at is not None:
            f.next_link(params, pager.resume_at)
            return


def _updated(ctx: Context, window: Window, static: float | None = None) -> float:
    """The feed's `updated`: when the newest data in the window arrived (clamped like the data)."""
    lo = max((b for b in (window.since, window.available_since) if b is not None), default=None)
    hi = min((b for b in (window.until, window.available_until) if b is not None), default=None)
    newest = ctx.source.newest(lo, hi)
    times = [t for t in (newest, static) if t is not None]
    return max(times) if times else ctx.snap.now


@functools.lru_cache(maxsize=64)
def current_value_document(subscription: str, base_url: str, query_string: str, mr: MeterReadingDef, latest: Sample,
                            p: int) -> bytes:
    """The parameterless IntervalBlock answer of a register or demand MeterReading (1, 2 or 5). It
    depends on exactly these arguments (nothing else reaches it: no snapshot, no store), so it is built
    once per reading and per base URL instead of once per request: at load, building it with lxml among
    the server's threads was half the LAN process's CPU (bench/RESULTS.md). Bounded: 64 small documents."""
    ctx = Context(snap=None, base_url=base_url, subscription=subscription, time_zone="", source=None,
                  query_string=query_string)
    entry = interval_block_entry(ctx, mr, Block(CURRENT, (_latest_point(mr, latest, p),)))
    return feed_document(ctx, path=interval_blocks_path(subscription, mr.id), title=f"{mr.title}: current value",
                         entries=[entry])


def current_entry(ctx: Context, mr: MeterReadingDef) -> Entry | None:
    pt = current_point(ctx, mr)
    return None if pt is None else interval_block_entry(ctx, mr, Block(CURRENT, (pt,)))


def interval_blocks_document(ctx: Context, mr: MeterReadingDef, query, params: dict[str, str]) -> bytes | None:
    """No ESPI parameter: the current value only (None when the meter has given no value yet, the
    caller's 503; an empty feed while MeterReading 3 has no sample yet). With parameters: the history
    held in the window, paged."""
    path = interval_blocks_path(ctx.subscription, mr.id)
    if not query.history and mr.quantity != "interval":
        # From memory only (the latest reading, the store's running maxima): no read transaction.
        latest = ctx.snap.latest_with(mr.register)
        if latest is None:
            return None
        return current_value_document(ctx.subscription, ctx.base_url, ctx.query_string, mr, latest,
                                       exponent(ctx, mr))
    with ctx.source.consistent():
        if not query.history:
            if ctx.snap.latest_with(mr.register) is None:
                return None
            entry = current_entry(ctx, mr)
            return feed_document(ctx, path=path, title=f"{mr.title}: current value",
                                 entries=[] if entry is None else [entry])
        window = query.window
        updated = _updated(ctx, window)

        def build(xf):
            f = _Feed(ctx, xf, path=path, title=f"{mr.title}: history", updated=updated)
            pager = Pager(query)
            skip, pager.skip = pager.skip, 0
            _walk(ctx, f, _labelled(mr, blocks(ctx, mr, window, skip)), pager, params)
        return _write(build)


def interval_block_document(ctx: Context, mr: MeterReadingDef, ib: str) -> bytes | None:
    """One block as held now, or None (404) when history holds nothing for it."""
    with ctx.source.consistent():
        if ib == CURRENT:
            entry = current_entry(ctx, mr)
            return None if entry is None else entry_document(entry)
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
        found = [b for b in blocks(ctx, mr, Window(start, end)) if b.id == ib]
        if not found:
            return None
        return entry_document(interval_block_entry(ctx, mr, found[0]))


def _labelled(mr: MeterReadingDef, mr_blocks: Iterable[Block]) -> Iterator[tuple[MeterReadingDef, Block]]:
    for block in mr_blocks:
        yield mr, block


def _interval_meter_readings(ctx: Context) -> list[MeterReadingDef]:
    return [mr for mr in ctx.meter_readings if mr.quantity == "interval"]


def batch_document(ctx: Context, query, params: dict[str, str], *, usage_point: bool = False) -> bytes:
    """Download My Data. First page: UsagePoint, LocalTimeParameters, each MeterReading with its
    ReadingType and its current value (when in the window); then the quarter-hour blocks of the
    window, day by day. Parameters select and page the blocks only: the descriptive entries are always
    on the first page, since the values mean nothing without them."""
    path = batch_path(ctx.subscription) + (f"/UsagePoint/{USAGE_POINT_ID}" if usage_point else "")
    snap = ctx.snap
    window = query.window
    with ctx.source.consistent():
        head: list[Entry] = []
        if not query.continued:
            head += [usage_point_entry(ctx), local_time_entry(ctx)]
            for mr in ctx.meter_readings:
                head += [meter_reading_entry(ctx, mr), reading_type_entry(ctx, mr)]
                pt = current_point(ctx, mr)
                if pt is not None and window.holds(pt.start, pt.available):
                    head.append(interval_block_entry(ctx, mr, Block(CURRENT, (pt,))))
        static = max(snap.created, snap.scaling_since or snap.created)
        updated = max([_updated(ctx, window, static)] + [e.updated for e in head])

        def build(xf):
            f = _Feed(ctx, xf, path=path, title="OpenSEG Green Button data", updated=updated)
            for e in head:
                f.write(e)
            mrs = _interval_meter_readings(ctx)
            # Day by day, each interval MeterReading's block of that day (they share the day grid).
            streams = [_labelled(mr, blocks(ctx, mr, window)) for mr in mrs]
            merged = heapq.merge(*streams, key=lambda pair: int(pair[1].id))
            _walk(ctx, f, merged, Pager(query, used=len(head)), params)
        return _write(build)
