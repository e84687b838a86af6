"""ESPI query parameters: parse and check them, or say exactly which one is wrong (HTTP 400).

ESPI (REQ.21) takes the GData-style parameters published-min/-max and updated-min/-max as UTC
`YYYY-MM-DDThh:mm:ssZ`, max-results (a positive integer: entries per answer) and start-index
(1-based). As in GData, a `-min` bound is inclusive and a `-max` bound exclusive. The page's
"download my data" switch (`download`) is the HTTP layer's (app.py takes it off before this parser
sees the query). Any other parameter is refused rather than silently ignored, so a client's typo shows up as an error instead of as an unfiltered answer.

What the bounds select (README, "Green Button data model"): published-min/-max the data time of a
reading (its timePeriod.start: "the readings of May"), updated-min/-max the time it became available at
the gateway (a raw reading when it was taken, a quarter hour when the reading after its end arrived),
so a client that remembers when it last asked gets exactly what arrived since.

`resume-at` (same time format) is this gateway's paging position, written into `rel="next"` links: the
walk continues with the blocks starting at or after it, inside the same window, and the descriptive
entries of the first page are not repeated. A position in time instead of a count to skip keeps every
page as cheap as the first however deep the walk, and keeps pages stable while new data arrives.
"""
from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Mapping

TIME_PARAMS = ("published-min", "published-max", "updated-min", "updated-max")
PAGE_PARAMS = ("max-results", "start-index")
RESUME_PARAM = "resume-at"
KNOWN = TIME_PARAMS + PAGE_PARAMS + (RESUME_PARAM,)

_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_INT = re.compile(r"[0-9]{1,10}")


class QueryError(ValueError):
    """A bad query parameter; `param` names it and str() is the whole message for the 400 body."""

    def __init__(self, param: str, reason: str):
        self.param = param
        super().__init__(f"query parameter {shown_name(param)}: {reason}")


def shown_name(name: Any) -> str:
    text = str(name)
    if len(text) > 40:
        text = text[:40] + "..."
    return repr(text) if text.isprintable() else repr(text.encode("unicode_escape").decode("ascii"))


@dataclass(frozen=True)
class Window:
    """Which readings an answer holds: data time in [since, until), availability in
    [available_since, available_until); None is unbounded."""
    since: int | None = None
    until: int | None = None
    available_since: int | None = None
    available_until: int | None = None

    def holds(self, start: int, available: int) -> bool:
        return ((self.since is None or start >= self.since) and (self.until is None or start < self.until)
                and (self.available_since is None or available >= self.available_since)
                and (self.available_until is None or available < self.available_until))


@dataclass(frozen=True)
class Query:
    published_min: int | None = None
    published_max: int | None = None
    updated_min: int | None = None
    updated_max: int | None = None
    max_results: int | None = None
    start_index: int = 1
    resume_at: int | None = None
    # True when any ESPI parameter was given: an IntervalBlock collection then answers from history
    # instead of with the current value (INTERFACE.md lists all six as switching to history).
    history: bool = False

    @property
    def window(self) -> Window:
        since = [b for b in (self.published_min, self.resume_at) if b is not None]
        return Window(max(since) if since else None, self.published_max, self.updated_min, self.updated_max)

    @property
    def continued(self) -> bool:
        """A later page of a walk: the descriptive entries were on the first."""
        return self.resume_at is not None

    def page(self, items: list) -> list:
        start = self.start_index - 1
        end = None if self.max_results is None else start + self.max_results
        return items[start:end]


def _epoch(name: str, value: str) -> int:
    m = _TIME.fullmatch(value)
    if not m:
        raise QueryError(name, "expected a UTC time as YYYY-MM-DDThh:mm:ssZ, e.g. 2024-05-01T00:00:00Z")
    try:
        stamp = dt.datetime(*(int(g) for g in m.groups()))
    except ValueError as exc:
        raise QueryError(name, f"not a valid date and time ({exc})") from None
    return calendar.timegm(stamp.timetuple())


def _positive(name: str, value: str) -> int:
    if not _INT.fullmatch(value) or int(value) < 1:
        raise QueryError(name, "expected a whole number of at least 1")
    return int(value)


def parse(params: Mapping[Any, Any]) -> Query:
    values: dict[str, Any] = {}
    for name, value in params.items():
        if name not in KNOWN:
            raise QueryError(name, f"unknown parameter (known: {', '.join(KNOWN)})")
        if isinstance(value, (list, tuple)):
            raise QueryError(name, "given more than once")
        if not isinstance(value, str):
            raise QueryError(name, "expected text")
        if name in TIME_PARAMS or name == RESUME_PARAM:
            values[name.replace("-", "_")] = _epoch(name, value)
        elif name in PAGE_PARAMS:
            values[name.replace("-", "_")] = _positive(name, value)
    for low, high in (("published-min", "published-max"), ("updated-min", "updated-max")):
        lo, hi = values.get(low.replace("-", "_")), values.get(high.replace("-", "_"))
        if lo is not None and hi is not None and hi < lo:
            raise QueryError(high, f"is before {low}")
    return Query(**values, history=bool(values))
