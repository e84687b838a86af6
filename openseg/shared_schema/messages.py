"""The HAN -> LAN channel messages: one msgpack map per AF_UNIX datagram.

This module is the single definition both processes import. The HAN side calls `encode` (which
validates before packing, so a bug on the HAN side cannot put a malformed message on the wire); the
LAN side calls `decode` on every datagram, which bounds the unpacker before it allocates anything and
then checks every field against the tables below. Anything that fails raises `MessageError`, whose
text names the field and whose `fault` says which kind of failure it was, so the receiver can count
and log the drop.

The schema is data (FIELDS), not code, so a reviewer can read the whole contract in one screen.
Raw meter values travel unscaled together with the meter's own multiplier/divisor/unit, so the LAN
side can keep the meter's full resolution (ESPI powerOfTenMultiplier) instead of a rounded float.
"""
from __future__ import annotations

import enum
import math
from typing import Any

import msgpack

# The version changes only when a message that was valid would become invalid or change meaning; the
# LAN side then drops the other version's datagrams (counted as "version"). Adding an optional field
# keeps it: every message an older HAN sends stays valid (e.g. "received", added in place).
VERSION = 1
MAX_DATAGRAM = 2048          # a status message is ~400 bytes; anything larger is not ours


class Kind(enum.StrEnum):
    """What a message carries; its value is the `kind` field on the wire."""
    READING = "reading"
    GAP = "gap"
    STATUS = "status"
    CLOCK = "clock"


class HanState(enum.StrEnum):
    """The HAN states as INTERFACE.md names them; the value is the status message's `state`."""
    JOINING = "joining"
    DISCOVERING = "discovering"
    POLLING = "polling"
    METER_UNREACHABLE = "meter-unreachable"
    METER_ADDRESS_MISMATCH = "meter-address-mismatch"
    RADIO_DOWN = "radio-down"


class LostCause(enum.StrEnum):
    """Why a query that was sent produced no reading (a lost query)."""
    TIMEOUT = "timeout"
    TX_FAILED = "tx-failed"
    ZCL_STATUS = "zcl-status"
    MALFORMED = "malformed"


class SkipCause(enum.StrEnum):
    """Why a slot passed with no query sent at all."""
    NOT_POLLING = "not-polling"
    LATE = "late"


GapCause = LostCause | SkipCause    # a gap message's `cause`: either kind of slot without a reading

# The allowed values as the schema tables below check them (a str received from the wire compares
# equal to its member), made from the enums so there is one list of each.
KINDS = tuple(Kind)
HAN_STATES = tuple(HanState)
LOST_CAUSES = tuple(LostCause)
GAP_CAUSES = LOST_CAUSES + tuple(SkipCause)

UINT48_MAX = (1 << 48) - 1
INT24_MIN, INT24_MAX = -(1 << 23), (1 << 23) - 1
UINT24_MAX = (1 << 24) - 1
# What the LAN side stores must fit a SQLite integer (signed 64 bits), and a slot number must also
# survive JSON in a browser (a double holds integers exactly up to 2**53).
INT64_MAX = (1 << 63) - 1
SLOT_MAX = (1 << 53) - 1
MAX_GAP_RUN = 100_000        # slots one gap message may cover (8 days at the production poll)
TIME_MAX = 1e11              # epoch seconds (year 5138); SQLite holds it in ms with room to spare


class Fault(enum.StrEnum):
    """What is wrong with a refused datagram, so the receiver counts it without parsing the text."""
    UNDECODABLE = "undecodable"     # larger than MAX_DATAGRAM, or not msgpack within the bounds
    VERSION = "version"             # a map of another schema version (v), whatever else it carries
    INVALID = "invalid"             # of our version, or without one, and breaks the tables below


class MessageError(ValueError):
    """A datagram or message that does not match the schema; the text names the field."""

    def __init__(self, text: str, fault: Fault = Fault.INVALID):
        super().__init__(text)
        self.fault = fault


# Field tables. Each entry: name -> (type, constraint, required).
#   type: "uint" (int >= 0), "int", "float" (int or finite float), "str", "bool", "map", "enum"
#   constraint: (lo, hi) for numbers, max length for str, allowed tuple for enum, sub-table for map
COMMON = {
    "v": ("uint", (VERSION, VERSION), True),
    "seq": ("uint", (0, INT64_MAX), True),
    "kind": ("enum", KINDS, True),
    "sent": ("float", (0.0, TIME_MAX), True),          # wall clock (epoch s) when the HAN sent it
}

METER = {
    "ieee": ("str", 23, True),                      # "00:13:a2:00:40:0a:01:02"
    "nwk": ("uint", (0, 0xFFFF), True),
    "endpoint": ("uint", (1, 240), True),
}

SCALING = {
    "multiplier": ("uint", (1, UINT24_MAX), True),  # the HAN already maps a zero to 1
    "divisor": ("uint", (1, UINT24_MAX), True),
    "unit": ("uint", (0, 0xFF), True),              # ZCL UnitOfMeasure; 0 = kW & kWh
    "summation_formatting": ("uint", (0, 0xFF), True),
    "demand_formatting": ("uint", (0, 0xFF), True),
}

FIELDS: dict[Kind, dict[str, tuple]] = {
    Kind.READING: {
        "slot": ("uint", (0, SLOT_MAX), True),
        "due": ("float", (0.0, TIME_MAX), True),    # wall time the slot was due
        "time": ("float", (0.0, TIME_MAX), True),      # wall time the reply arrived: the value's time tag
        "rtt_s": ("float", (0.0, 3600.0), True),    # request -> reply, so the tag's uncertainty is known
        "summation": ("uint", (0, UINT48_MAX), False),   # raw CurrentSummationDelivered, absent if invalid
        # raw CurrentSummationReceived (energy exported); absent if invalid or the meter does not have it
        "received": ("uint", (0, UINT48_MAX), False),
        "demand": ("int", (INT24_MIN + 1, INT24_MAX), False),  # raw InstantaneousDemand, absent if invalid
        "scaling": ("map", SCALING, True),
    },
    Kind.GAP: {
        "slot": ("uint", (0, SLOT_MAX), True),
        "due": ("float", (0.0, TIME_MAX), True),
        "cause": ("enum", GAP_CAUSES, True),
        # A run of slots with one cause (a stall's catch-up): slot, slot + 1, ... slot + count - 1,
        # due every_s apart. One datagram for the run, so a burst cannot overflow the socket's queue.
        "count": ("uint", (1, MAX_GAP_RUN), False),
        "every_s": ("float", (0.001, 86400.0), False),
    },
    # The HAN's wall clock stepped: every reading and gap it tagged from..to (inclusive) on the clock
    # it had before is shift_s off; the LAN side moves them, so the history keeps one time line.
    Kind.CLOCK: {
        "shift_s": ("float", (-TIME_MAX, TIME_MAX), True),
        "from": ("float", (0.0, TIME_MAX), True),
        "to": ("float", (0.0, TIME_MAX), True),
    },
    Kind.STATUS: {
        "state": ("enum", HAN_STATES, True),
        "detail": ("str", 200, True),               # plain words, e.g. the AI code explained
        "meter": ("map", METER, False),             # absent until discovery found it
        "radio_ieee": ("str", 23, False),
        "queries_total": ("uint", (0, INT64_MAX), True),
        "queries_lost": ("uint", (0, INT64_MAX), True),
        "lost_by_cause": ("map", {c: ("uint", (0, INT64_MAX), True) for c in LOST_CAUSES}, True),
        "frames_bad": ("uint", (0, INT64_MAX), True),       # corrupt frames read from the radio
        "guard_refused": ("uint", (0, INT64_MAX), True),    # frames the egress guard stopped
        "channel_dropped": ("uint", (0, INT64_MAX), True),  # messages the sender could not deliver
        "started": ("float", (0.0, TIME_MAX), True),         # wall time the HAN process started
        "poll_interval_s": ("float", (0.001, 86400.0), True),
        # Its time model (README "Time"): seconds since start on the monotonic clock; wall-clock
        # steps seen (a counter), the last one's size; whether the wall clock is plausible (while it
        # is not, readings and gaps are held, clock_held of them now).
        "uptime_s": ("float", (0.0, TIME_MAX), False),
        "clock_steps": ("uint", (0, INT64_MAX), False),
        "clock_last_step_s": ("float", (-TIME_MAX, TIME_MAX), False),
        "clock_plausible": ("bool", None, False),
        "clock_held": ("uint", (0, INT64_MAX), False),
        "clock_held_dropped": ("uint", (0, INT64_MAX), False),   # the hold was full: oldest let go
    },
}


READING_VALUES = ("summation", "received", "demand")


def _check(table: dict[str, tuple], msg: Any, where: str) -> None:
    if not isinstance(msg, dict):
        raise MessageError(f"{where or 'message'}: not a map")
    for key in msg:
        if key not in table:
            raise MessageError(f"{where}{key}: unknown field")
    for key, (typ, con, required) in table.items():
        if key not in msg:
            if required:
                raise MessageError(f"{where}{key}: missing")
            continue
        val = msg[key]
        name = where + key
        if typ in ("uint", "int"):
            if not isinstance(val, int) or isinstance(val, bool) or not con[0] <= val <= con[1]:
                raise MessageError(f"{name}: expected integer in [{con[0]}, {con[1]}]")
        elif typ == "float":
            if (not isinstance(val, (int, float)) or isinstance(val, bool) or not math.isfinite(val)
                    or not con[0] <= val <= con[1]):
                raise MessageError(f"{name}: expected number in [{con[0]}, {con[1]}]")
        elif typ == "bool":
            if not isinstance(val, bool):
                raise MessageError(f"{name}: expected true or false")
        elif typ == "str":
            if not isinstance(val, str) or len(val) > con:
                raise MessageError(f"{name}: expected text of at most {con} characters")
        elif typ == "enum":
            if val not in con:
                raise MessageError(f"{name}: expected one of {', '.join(con)}")
        elif typ == "map":
            _check(con, val, name + ".")


def validate(msg: Any) -> dict:
    """Return msg unchanged if it is a valid message of any kind; raise MessageError otherwise."""
    if not isinstance(msg, dict):
        raise MessageError("message: not a map")
    kind = msg.get("kind")
    if not isinstance(kind, str) or kind not in FIELDS:     # a list or map is not hashable
        raise MessageError(f"kind: expected one of {', '.join(KINDS)}")
    _check({**COMMON, **FIELDS[kind]}, msg, "")
    if kind == Kind.READING and not any(k in msg for k in READING_VALUES):
        raise MessageError("reading: carries no value (summation, received or demand)")
    if kind == Kind.GAP and msg.get("count", 1) > 1 and "every_s" not in msg:
        raise MessageError("every_s: missing (required when count > 1)")
    if kind == Kind.GAP and msg["slot"] + msg.get("count", 1) - 1 > SLOT_MAX:
        raise MessageError(f"count: the run ends beyond slot {SLOT_MAX}")
    if kind == Kind.CLOCK and msg["from"] > msg["to"]:
        raise MessageError("from: later than to")
    return msg


def gap_slots(msg: dict) -> list[tuple[int, float]]:
    """(slot, due) of every slot a valid gap message covers: one, or a run of `count`."""
    count = msg.get("count", 1)
    every = msg.get("every_s", 0.0)
    return [(msg["slot"] + i, msg["due"] + i * every) for i in range(count)]


def encode(msg: dict) -> bytes:
    validate(msg)
    data = msgpack.packb(msg, use_bin_type=True)
    if len(data) > MAX_DATAGRAM:
        raise MessageError(f"message: {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode(data: bytes) -> dict:
    """Unpack one datagram with every msgpack size bounded, then validate it. A refusal's `fault`
    says whether it was undecodable, of another version, or invalid."""
    if len(data) > MAX_DATAGRAM:
        raise MessageError(f"datagram: {len(data)} bytes exceeds {MAX_DATAGRAM}", Fault.UNDECODABLE)
    try:
        msg = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=256, max_bin_len=0,
            max_array_len=0, max_map_len=32, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MessageError(f"datagram: not a msgpack map ({type(exc).__name__})", Fault.UNDECODABLE) from None
    try:
        return validate(msg)
    except MessageError as exc:
        if isinstance(msg, dict) and "v" in msg and msg["v"] != VERSION:
            raise MessageError(str(exc), Fault.VERSION) from None
        raise
