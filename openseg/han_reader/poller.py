"""One slot's query: Read Attributes (CurrentSummationDelivered, CurrentSummationReceived,
InstantaneousDemand) -> a value or a cause.

The outcome is either raw values with the monotonic time the reply arrived (right after the read()
that completed it; the service turns it into a wall-clock tag on its one time base, time_base.py), with
the round trip kept so the tag's uncertainty is known, or exactly one of the
lost causes (`messages.LostCause`). Values stay raw: the meter's multiplier/divisor travel with them,
so the LAN side keeps the meter's full resolution.

A reply whose values are all unusable (each attribute refused, or each the type's "invalid" value,
which a meter sends when it has no measurement) is lost with cause "zcl-status": the meter answered, and
what it answered was "no value". A reply that has one usable value is a reading with only that value.
CurrentSummationReceived answered UNSUPPORTED_ATTRIBUTE is the normal answer of a meter that does not
measure export: the reading simply carries no export value, and that is not reported as a problem.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from openseg.shared_schema.messages import LostCause

from . import zcl
from .discovery import Meter
from .radio import Radio

UNREACHABLE_AFTER = 3   # consecutive lost queries before the state says meter-unreachable


@dataclass(frozen=True)
class PollOutcome:
    cause: LostCause | None           # None: a reading
    detail: str = ""
    summation: int | None = None
    demand: int | None = None
    received: int | None = None       # CurrentSummationReceived (energy exported), when the meter has it
    mono: float | None = None         # monotonic time the reply arrived
    rtt_s: float | None = None


def poll_once(radio: Radio, meter: Meter, timeout: float) -> PollOutcome:
    read = radio.zcl_read(meter, zcl.POLL_READ, timeout, on_grid=True)
    if read.cause is not None:
        return PollOutcome(read.cause, read.detail)
    asked = (("summation", zcl.CURRENT_SUMMATION_DELIVERED), ("received", zcl.CURRENT_SUMMATION_RECEIVED),
             ("demand", zcl.INSTANTANEOUS_DEMAND))
    results = {name: read.results.get(attr.id) for name, attr in asked}
    if all(r is None for r in results.values()):
        return PollOutcome(LostCause.MALFORMED, "the response carries no attribute that was asked for")
    values = {}
    problems = []
    for name, result in results.items():
        if name == "received" and result is not None and result.status == zcl.STATUS_UNSUPPORTED_ATTRIBUTE:
            continue        # a meter without export measurement: no value, nothing wrong
        if result is None:
            problems.append(f"{name} missing")
        elif result.status != zcl.STATUS_SUCCESS:
            problems.append(f"{name} status 0x{result.status:02x}")
        elif result.value is None:
            problems.append(f"{name} invalid")
        else:
            values[name] = result.value
    if not values:
        return PollOutcome(LostCause.ZCL_STATUS, ", ".join(problems))
    reply = read.reply
    return PollOutcome(None, ", ".join(problems), values.get("summation"), values.get("demand"),
                       values.get("received"), mono=reply.mono, rtt_s=max(0.0, reply.mono - read.sent_mono))


@dataclass
class Counters:
    queries_total: int = 0
    queries_lost: int = 0
    lost_by_cause: dict[LostCause, int] = field(default_factory=lambda: dict.fromkeys(LostCause, 0))
    consecutive_lost: int = 0

    def count(self, outcome: PollOutcome) -> None:
        self.queries_total += 1
        if outcome.cause is None:
            self.consecutive_lost = 0
            return
        self.queries_lost += 1
        self.lost_by_cause[outcome.cause] += 1
        self.consecutive_lost += 1
