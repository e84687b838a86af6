"""Power-up: is the radio set up right, has it joined, where is the meter, and how are its values scaled.

Each step is one function that asks the radio and returns what it learnt in plain words; the main loop
decides what to do with it (state, retry, backoff) and `--check` prints the same findings. The meter is
the Simple Metering server the coordinator (0x0000) offers — in Smart Energy the utility's meter is the
network's coordinator and trust centre — at whatever endpoint its Match_Desc response names.

A radio in the wrong API mode is a configuration error the process cannot fix by retrying, so it is
raised as `radio.RadioMisconfigured` (exit code 3). A meter that measures something other than
electricity is never polled: discovery keeps reporting the refusal in the status detail and retries
slowly, since the installer may yet pair the gateway with the right meter and should see why nothing is
read. Each outcome is an enum of its own (`Found`, `Scaled`); the loop and --check map it to a HAN
state (`STATE_WHEN`) rather than use it as one.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from openseg.shared_schema.messages import HanState

from . import xbee_frames, zcl
from .radio import Radio, RadioMisconfigured, RadioSilent

METER_NWK = 0x0000
API_MODE_ESCAPED = 2
AO_EXPLICIT_RX = 0x01
DEVICE_TYPE_ELECTRIC = 0x00
# MeteringDeviceType (SE 1.x): what a non-electric meter calls itself, for the refusal message.
DEVICE_TYPES = {0: "electric", 1: "gas", 2: "water", 3: "thermal", 4: "pressure", 5: "heat", 6: "cooling"}


# ---- the radio itself ---------------------------------------------------------------------------

def check_api_modes(radio: Radio, timeout: float) -> tuple[int, int]:
    """AP must be 2 (escaped API) and AO bit 0 set (explicit RX frames). Returns (AP, AO)."""
    ap_rsp = radio.at_query("AP", timeout)
    if ap_rsp is None:
        raise RadioSilent(f"the radio did not answer the AP query within {timeout:g} s (is it in API mode "
                          f"and at the configured baud rate?)")
    ao_rsp = radio.at_query("AO", timeout)
    if ao_rsp is None:
        raise RadioSilent(f"the radio did not answer the AO query within {timeout:g} s")
    ap, ao = ap_rsp.number, ao_rsp.number
    if ap != API_MODE_ESCAPED:
        raise RadioMisconfigured(
            f"radio API mode is AP={_show(ap)}, this gateway needs AP=2 (API with escaping); set it with "
            f"XCTU and write it to the radio")
    if ao is None or not ao & AO_EXPLICIT_RX:
        raise RadioMisconfigured(
            f"radio API options are AO={_show(ao)}, this gateway needs bit 0 set (explicit receive "
            f"indicator, frame 0x91); set AO=1 or AO=3 with XCTU and write it to the radio")
    return ap, ao


def _show(value: int | None) -> str:
    return "unreadable" if value is None else str(value)


def radio_ieee(radio: Radio, timeout: float) -> int | None:
    """The radio's own IEEE address (SH:SL): what the utility needs, with the install code, to admit it."""
    high, low = radio.at_number("SH", timeout), radio.at_number("SL", timeout)
    if high is None or low is None:
        return None
    return (high << 32) | low


def association(radio: Radio, timeout: float) -> int | None:
    """The AI code (0x00 = joined and authenticated), or None if the radio did not answer."""
    return radio.at_number("AI", timeout)


def describe_ai(code: int | None) -> str:
    if code is None:
        return "the radio did not answer the AI query"
    words = xbee_frames.AI_CODES.get(code, "an association state the XBee manual does not list")
    return f"AI=0x{code:02X}: {words}"


# ---- finding the meter --------------------------------------------------------------------------

@dataclass(frozen=True)
class Meter:
    ieee: int
    nwk: int
    endpoint: int

    def describe(self) -> str:
        return f"{xbee_frames.format_ieee(self.ieee)} at 0x{self.nwk:04X} endpoint {self.endpoint}"


class Found(enum.Enum):
    """What one discovery found."""
    METER = enum.auto()         # a Simple Metering server at the coordinator 0x0000: the meter
    ELSEWHERE = enum.auto()     # Simple Metering servers, but only at other nodes: not polled
    NOTHING = enum.auto()       # the coordinator did not answer, or no node offers Simple Metering


# The state the HAN reports while discovery keeps finding something other than the meter.
STATE_WHEN = {Found.ELSEWHERE: HanState.METER_ADDRESS_MISMATCH, Found.NOTHING: HanState.METER_UNREACHABLE}


@dataclass(frozen=True)
class Discovery:
    outcome: Found
    detail: str
    meter: Meter | None = None
    others: tuple[tuple[int, tuple[int, ...]], ...] = field(default=())   # (nwk, endpoints) not 0x0000


def find_meter(radio: Radio, timeout: float) -> Discovery:
    """IEEE_addr_req to the coordinator, then a Match_Desc broadcast for Simple Metering servers.

    The two requests go out one poll interval apart (the pace law; `Radio` waits for it). Once found,
    the radio is aimed at the meter: the guard lets ZCL reads go to it and nowhere else.
    """
    radio.aim_at(None)
    ieee, ieee_problem = radio.coordinator_ieee(timeout)
    matches = radio.match_simple_metering(timeout)
    at_coordinator = [eps for nwk, eps in matches if nwk == METER_NWK]
    others = tuple((nwk, eps) for nwk, eps in matches if nwk != METER_NWK)
    if ieee is not None and at_coordinator:
        meter = Meter(ieee, METER_NWK, at_coordinator[0][0])
        radio.aim_at(meter)
        return Discovery(Found.METER, f"meter {meter.describe()}", meter, others)
    if others and not at_coordinator:
        where = ", ".join(f"0x{nwk:04X} endpoint {'/'.join(map(str, eps))}" for nwk, eps in others)
        return Discovery(Found.ELSEWHERE,
                         f"a Simple Metering server answered from {where}, not from the coordinator 0x0000; "
                         f"not polling it", None, others)
    if ieee is None:
        return Discovery(Found.NOTHING, f"the coordinator 0x0000 {ieee_problem}", None, others)
    return Discovery(Found.NOTHING, "the coordinator 0x0000 answered IEEE_addr_req but no node offers "
                     "Simple Metering (0x0702) on the Smart Energy profile", None, others)


# ---- scaling ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scaling:
    unit: int
    multiplier: int
    divisor: int
    summation_formatting: int
    demand_formatting: int
    device_type: int

    def as_message(self) -> dict:
        return {"multiplier": self.multiplier, "divisor": self.divisor, "unit": self.unit,
                "summation_formatting": self.summation_formatting,
                "demand_formatting": self.demand_formatting}

    def describe(self) -> str:
        return (f"unit {zcl.UNITS.get(self.unit, hex(self.unit))}, multiplier {self.multiplier}, divisor "
                f"{self.divisor}, summation formatting 0x{self.summation_formatting:02X}, demand formatting "
                f"0x{self.demand_formatting:02X}")


class Scaled(enum.Enum):
    """How the scaling read went."""
    OK = enum.auto()
    UNUSABLE = enum.auto()      # no answer, or one without an attribute the values need
    REFUSED = enum.auto()       # the meter answered: it is not an electricity meter in kW/kWh


@dataclass(frozen=True)
class ScalingRead:
    scaling: Scaling | None
    outcome: Scaled
    detail: str


# Attributes a meter must report for its values to mean anything; DemandFormatting is optional in SE 1.x.
_REQUIRED = (zcl.UNIT_OF_MEASURE, zcl.MULTIPLIER, zcl.DIVISOR, zcl.SUMMATION_FORMATTING,
             zcl.METERING_DEVICE_TYPE)


def read_scaling(radio: Radio, meter: Meter, timeout: float) -> ScalingRead:
    read = radio.zcl_read(meter, zcl.SCALING_READ, timeout)
    if read.cause is not None:
        return ScalingRead(None, Scaled.UNUSABLE, f"meter found but the scaling read failed "
                           f"({read.cause}: {read.detail})")
    values: dict[int, int] = {}
    for attr in zcl.SCALING_READ:
        result = read.results.get(attr.id)
        if result is not None and result.status == zcl.STATUS_SUCCESS and result.value is not None:
            values[attr.id] = result.value
        elif attr in _REQUIRED:
            status = "missing" if result is None else f"status 0x{result.status:02x}"
            return ScalingRead(None, Scaled.UNUSABLE,
                               f"meter did not report {attr.name} ({status}); cannot scale its values")
    unit, device_type = values[zcl.UNIT_OF_MEASURE.id], values[zcl.METERING_DEVICE_TYPE.id]
    if device_type != DEVICE_TYPE_ELECTRIC:
        return ScalingRead(None, Scaled.REFUSED, f"refused: the meter reports MeteringDeviceType "
                           f"{device_type} ({DEVICE_TYPES.get(device_type, 'not electric')}), not an electricity meter; "
                           f"not polling it")
    if unit != zcl.UNIT_KW_KWH:
        return ScalingRead(None, Scaled.REFUSED, f"refused: the meter reports UnitOfMeasure 0x{unit:02X} "
                           f"({zcl.UNITS.get(unit, 'unknown unit')}), not kW/kWh; not polling it")
    scaling = Scaling(
        unit=unit,
        # A zero multiplier or divisor means "not set" on meters in the field; as a factor it would
        # zero every value or divide by zero, so it counts as 1 (docs/han-protocol.md).
        multiplier=values[zcl.MULTIPLIER.id] or 1,
        divisor=values[zcl.DIVISOR.id] or 1,
        summation_formatting=values[zcl.SUMMATION_FORMATTING.id],
        demand_formatting=values.get(zcl.DEMAND_FORMATTING.id, 0),
        device_type=device_type)
    return ScalingRead(scaling, Scaled.OK, scaling.describe())

