"""Builders for valid channel messages (openseg.shared_schema.messages), for the LAN-side tests."""
from __future__ import annotations

T0 = 1_700_000_000.0          # a fixed wall-clock origin (2023-11-14T22:13:20Z), so runs are repeatable

SCALING_3_10000 = {"multiplier": 3, "divisor": 10000, "unit": 0, "summation_formatting": 0x33,
                   "demand_formatting": 0x24}
SCALING_1_1000 = {"multiplier": 1, "divisor": 1000, "unit": 0, "summation_formatting": 0x33,
                  "demand_formatting": 0x24}


def reading(seq: int, slot: int, t: float, *, summation: int | None = 123456789,
            demand: int | None = 1500, scaling: dict = SCALING_3_10000, received: int | None = None) -> dict:
    msg = {"v": 1, "seq": seq, "kind": "reading", "sent": t + 0.01, "slot": slot, "due": t - 0.2,
           "time": t, "rtt_s": 0.2, "scaling": dict(scaling)}
    if summation is not None:
        msg["summation"] = summation
    if demand is not None:
        msg["demand"] = demand
    if received is not None:
        msg["received"] = received
    return msg


def gap(seq: int, slot: int, due: float, cause: str = "timeout") -> dict:
    return {"v": 1, "seq": seq, "kind": "gap", "sent": due + 3.0, "slot": slot, "due": due,
            "cause": cause}


def status(seq: int, t: float, *, state: str = "polling", started: float | None = None,
           poll_interval_s: float = 7.0, meter: bool = True, queries_total: int = 10,
           queries_lost: int = 1) -> dict:
    msg = {"v": 1, "seq": seq, "kind": "status", "sent": t, "state": state, "detail": "polling the meter",
           "queries_total": queries_total, "queries_lost": queries_lost,
           "lost_by_cause": {"timeout": queries_lost, "tx-failed": 0, "zcl-status": 0, "malformed": 0},
           "frames_bad": 2, "guard_refused": 0, "channel_dropped": 0,
           "started": T0 - 100.0 if started is None else started, "poll_interval_s": poll_interval_s,
           "radio_ieee": "00:13:a2:00:40:0a:01:02"}
    if meter:
        msg["meter"] = {"ieee": "00:0d:6f:00:0a:bc:de:f0", "nwk": 0x1234, "endpoint": 9}
    return msg


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        self.t += dt
        return self.t
