"""The history's entries as the LAN process holds them: one per poll slot, a reading or a gap."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..espi.scaling import Scaling

CHANNEL_LOST = "channel-lost"    # a gap the LAN side records: the slot's message never arrived


@dataclass(frozen=True, slots=True)
class Reading:
    seq: int
    slot: int
    due: float
    time: float                  # the value's time tag: when the meter's reply arrived (HAN clock)
    rtt_s: float
    summation: int | None        # raw counts; None when the meter flagged the value invalid
    demand: int | None
    scaling: Scaling
    interval_s: float | None     # the poll interval in force when it was taken (see Readings.apply)
    received: int | None = None  # raw CurrentSummationReceived (energy exported); None: not reported


@dataclass(frozen=True, slots=True)
class Gap:
    seq: int
    slot: int
    due: float
    cause: str

    @property
    def time(self) -> float:
        return self.due


Entry = Union[Reading, Gap]
