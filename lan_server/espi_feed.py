"""Green Button (ESPI 3.3) Atom documents, built with lxml from a readings snapshot. Pure: no I/O,
no clock (the snapshot carries `now`), so every document can be checked against usage.xsd in tests.

Resource space under {base}/espi/1_1/resource/ (ids are fixed; there is one meter):

    Subscription/{sub}/UsagePoint/1                                   the meter, ServiceCategory 0
        .../MeterReading/1  -> ReadingType/1                          instantaneous demand, W
        .../MeterReading/2  -> ReadingType/2                          energy delivered (register), Wh
        .../MeterReading/{mr}/IntervalBlock/{hour}                    the readings taken in one UTC
                                                                      hour, {hour} = its epoch second
    LocalTimeParameters/1                                             from the configured time zone
    Batch/Subscription/{sub}[/UsagePoint/1]                           all of the above, history held

Links follow the Green Button pattern: every entry has `self` and `up` (its collection);
UsagePoint is `related` to its MeterReading collection and to LocalTimeParameters; each
MeterReading is `related` to its IntervalBlock collection and its ReadingType.

Entry ids are urn:uuid UUID v5 of ID_NAMESPACE + the resource path, so they are the same after a
restart, on every gateway serving that path, and never depend on the host name a client used.

IntervalReading: timePeriod.start is the value's time tag (epoch s, rounded down), duration the poll
interval the HAN reported when the reading arrived (before its first status: the slot spacing; 0
when unknown). `value` is an integer in units of 10**powerOfTenMultiplier W or Wh (scaling.py).
Entry `published` / `updated` of an IntervalBlock are the time tags of its first / last reading;
the static resources carry the time the LAN process started (the ReadingType: the first reading
with the current scaling, if later).
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from urllib.parse import quote

from lxml import etree

from . import scaling as sc
from .local_time import LocalTime, local_time_parameters
from .readings import Reading, Snapshot

ATOM = "http://www.w3.org/2005/Atom"
ESPI = "http://naesb.org/espi"
RESOURCE_ROOT = "/espi/1_1/resource/"
ID_NAMESPACE = uuid.UUID("1130ef39-c849-483c-bc29-d66759748da0")

USAGE_POINT_ID = "1"
LOCAL_TIME_ID = "1"
BLOCK_SECONDS = 3600


@dataclass(frozen=True)
class MeterReadingDef:
    id: str
    reading_type: str
    quantity: str           # the Reading attribute: "demand" or "summation"
    title: str
    unit: str
    uom: int                # UnitSymbolKind
    accumulation: int       # AccumulationKind
    kind: int               # MeasurementKind
    flow: int               # FlowDirectionKind


METER_READINGS = {
    # InstantaneousDemand is signed (negative = exported), hence flowDirection 4 "net".
    "1": MeterReadingDef("1", "1", "demand", "Instantaneous demand", "W", uom=38, accumulation=12,
                         kind=37, flow=4),
    # CurrentSummationDelivered is the import register: bulkQuantity, forward.
    "2": MeterReadingDef("2", "2", "summation", "Energy delivered (meter register)", "Wh", uom=72,
                         accumulation=1, kind=12, flow=1),
}
READING_TYPES = {mr.reading_type: mr for mr in METER_READINGS.values()}


@dataclass(frozen=True)
class Point:
    start: int
    duration: int
    value: int


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
    query_string: str = ""     # appended to the `self` link of the requested document


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


# -- data -------------------------------------------------------------------------------------------
def series(snap: Snapshot, mr: MeterReadingDef) -> list[Reading]:
    """The readings carrying this MeterReading's quantity, history plus the latest, in time order."""
    out = [e for e in snap.history
           if isinstance(e, Reading) and getattr(e, mr.quantity) is not None]
    latest = snap.latest_demand if mr.quantity == "demand" else snap.latest_summation
    if latest is not None and all(r is not latest for r in out):
        out.append(latest)
        out.sort(key=lambda r: r.time)
    return out


def exponent(readings: list[Reading], quantity: str) -> int:
    largest: dict[sc.Scaling, int] = {}
    for r in readings:
        raw = abs(getattr(r, quantity))
        if raw >= largest.get(r.scaling, -1):
            largest[r.scaling] = raw
    p = sc.espi_exponent(largest)
    return 0 if p is None else p


def point(r: Reading, quantity: str, p: int) -> Point:
    duration = max(0, round(r.interval_s)) if r.interval_s is not None else 0
    return Point(int(r.time // 1), duration, sc.scaled_int(getattr(r, quantity), r.scaling, p))


def blocks(points: list[Point]) -> list[Block]:
    """Group points (in time order) into one block per UTC hour."""
    grouped: dict[int, list[Point]] = {}
    for pt in points:
        grouped.setdefault(pt.start - pt.start % BLOCK_SECONDS, []).append(pt)
    return [Block(str(hour), tuple(pts)) for hour, pts in grouped.items()]


@dataclass(frozen=True)
class Series:
    """One MeterReading's data as ESPI shows it: the exponent and the points, all at that exponent."""
    mr: MeterReadingDef
    p: int
    readings: tuple[Reading, ...]

    @classmethod
    def of(cls, snap: Snapshot, mr: MeterReadingDef) -> "Series":
        readings = series(snap, mr)
        return cls(mr, exponent(readings, mr.quantity), tuple(readings))

    def points(self, keep=lambda start: True) -> list[Point]:
        out = []
        for r in self.readings:
            pt = point(r, self.mr.quantity, self.p)
            if keep(pt.start):
                out.append(pt)
        return out

    def latest_point(self) -> Point | None:
        if not self.readings:
            return None
        latest = max(self.readings, key=lambda r: r.time)
        return point(latest, self.mr.quantity, self.p)


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


def reading_type_entry(ctx: Context, mr: MeterReadingDef, p: int) -> Entry:
    snap = ctx.snap
    updated = max(snap.created, snap.scaling_since or snap.created)
    entry, obj = _entry(ctx, path=reading_type_path(mr.reading_type), up="ReadingType", related=[],
                        title=f"{mr.title}, {mr.unit}", published=snap.created, updated=updated,
                        content="ReadingType")
    # Element order is the xs:sequence order of usage.xsd ReadingType.
    _e(obj, "accumulationBehaviour", mr.accumulation)
    _e(obj, "commodity", 1)
    _e(obj, "flowDirection", mr.flow)
    _e(obj, "kind", mr.kind)
    _e(obj, "powerOfTenMultiplier", p)
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
    entry, obj = _entry(ctx, path=interval_block_path(sub, mr.id, block.id),
                        up=interval_blocks_path(sub, mr.id), related=[],
                        title=f"{mr.title}, hour from {atom_time(int(block.id))}",
                        published=first.start, updated=last.start, content="IntervalBlock")
    end = max(pt.start + pt.duration for pt in block.points)
    interval = _e(obj, "interval")
    _e(interval, "duration", end - first.start)
    _e(interval, "start", first.start)
    for pt in block.points:
        reading = _e(obj, "IntervalReading")
        period = _e(reading, "timePeriod")
        _e(period, "duration", pt.duration)
        _e(period, "start", pt.start)
        _e(reading, "value", pt.value)
    return entry


def feed(ctx: Context, *, path: str, title: str, entries: list[Entry]) -> etree._Element:
    root = etree.Element(f"{{{ATOM}}}feed", nsmap={None: ATOM})
    _a(root, "id", urn(path))
    _a(root, "title", title)
    _a(root, "updated", atom_time(max((e.updated for e in entries), default=ctx.snap.now)))
    _a(root, "link", rel="self", href=href(ctx, path) + ctx.query_string)
    for e in entries:
        root.append(e.element)
    return root


def serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


# -- documents --------------------------------------------------------------------------------------
def history_blocks(ctx: Context, mr: MeterReadingDef, query) -> list[Entry]:
    s = Series.of(ctx.snap, mr)
    return [interval_block_entry(ctx, mr, b) for b in blocks(s.points(query.in_window))]


def current_block(ctx: Context, mr: MeterReadingDef) -> Entry | None:
    """The block holding only the current value, or None when the meter has sent none yet."""
    s = Series.of(ctx.snap, mr)
    pt = s.latest_point()
    if pt is None:
        return None
    return interval_block_entry(ctx, mr, Block(str(pt.start - pt.start % BLOCK_SECONDS), (pt,)))


def interval_blocks_feed(ctx: Context, mr: MeterReadingDef, query) -> etree._Element | None:
    """No ESPI parameter: the current value only (None if there is none yet, the caller's 503).
    With parameters: the history held, within the time window, paged by start-index/max-results."""
    path = interval_blocks_path(ctx.subscription, mr.id)
    if not query.history:
        entry = current_block(ctx, mr)
        if entry is None:
            return None
        return feed(ctx, path=path, title=f"{mr.title}: current value", entries=[entry])
    return feed(ctx, path=path, title=f"{mr.title}: recent history",
                entries=query.page(history_blocks(ctx, mr, query)))


def interval_block_document(ctx: Context, mr: MeterReadingDef, ib: str) -> etree._Element | None:
    """One hour block as held now, or None (404) when history holds nothing for that hour."""
    if not ib.isascii() or not ib.isdigit() or len(ib) > 12 or int(ib) % BLOCK_SECONDS:
        return None
    s = Series.of(ctx.snap, mr)
    hour = int(ib)
    pts = s.points(lambda start: hour <= start < hour + BLOCK_SECONDS)
    if not pts:
        return None
    return interval_block_entry(ctx, mr, Block(ib, tuple(pts))).element


def reading_type_document(ctx: Context, mr: MeterReadingDef) -> Entry:
    return reading_type_entry(ctx, mr, Series.of(ctx.snap, mr).p)


def batch_feed(ctx: Context, query, *, usage_point: bool = False) -> etree._Element:
    """Download My Data: UsagePoint, LocalTimeParameters, then each MeterReading with its
    ReadingType and IntervalBlocks. Parameters select and page the IntervalBlocks only: the
    descriptive entries are always there, since the values mean nothing without them."""
    entries: list[Entry] = [usage_point_entry(ctx), local_time_entry(ctx)]
    block_entries: list[tuple[int, Entry]] = []
    static: list[tuple[int, list[Entry]]] = []
    for n, mr in enumerate(METER_READINGS.values()):
        s = Series.of(ctx.snap, mr)
        static.append((n, [meter_reading_entry(ctx, mr), reading_type_entry(ctx, mr, s.p)]))
        for b in blocks(s.points(query.in_window)):
            block_entries.append((n, interval_block_entry(ctx, mr, b)))
    kept = {id(e) for _, e in query.page(block_entries)}
    for n, described in static:
        entries.extend(described)
        entries.extend(e for m, e in block_entries if m == n and id(e) in kept)
    path = batch_path(ctx.subscription) + (f"/UsagePoint/{USAGE_POINT_ID}" if usage_point else "")
    return feed(ctx, path=path, title="OpenSEG Green Button data", entries=entries)
