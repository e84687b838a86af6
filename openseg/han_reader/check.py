"""`openseg-han --check`: the installer's diagnosis, one plain line per finding, read-only.

It asks the same questions the service asks at power-up, through the same egress guard, and says in
words what each answer means: which firmware the radio runs, whether its API settings suit the gateway,
whether it has joined (the AI code explained), the radio's own IEEE address (which the utility needs,
with the install code, to let it join), and whether the meter answered, from which address and endpoint.
It exits 0 only when the service could start polling: right modes, joined, meter at 0x0000, scaling read.
"""
from __future__ import annotations

from typing import Callable

from . import discovery, xbee_frames
from .clock import Clock
from .link import LinkLost
from .radio import Radio, RadioReset

EXIT_READY = 0
EXIT_NOT_READY = 1


def run_check(link, radio: Radio, han: dict, clock: Clock, out: Callable[[str], None] = print,
              join_wait_s: float = 10.0) -> int:
    out(f"serial port: {link.port} at {link.baudrate} baud")
    try:
        link.open()
    except LinkLost as exc:
        out(f"serial port: CANNOT OPEN: {exc} (is the radio plugged in, or is openseg-han already running?)")
        out("result: NOT READY: the serial port cannot be opened")
        return EXIT_NOT_READY
    try:
        return _diagnose(radio, clock, han["response_timeout_s"], out, join_wait_s)
    except RadioReset as exc:
        out(f"result: NOT READY: the radio reset during the check ({exc}); run the check again")
    except LinkLost as exc:
        out(f"result: NOT READY: the serial port failed during the check ({exc})")
    finally:
        link.close()
    return EXIT_NOT_READY


def describe_firmware(vr: int | None) -> tuple[str, bool]:
    """Words for a VR value, and whether it is Smart Energy router firmware (what a gateway should run)."""
    if vr is None:
        return "unknown (the radio did not answer VR)", False
    family = vr >> 8
    kinds = {0x31: "Smart Energy coordinator", 0x33: "Smart Energy router", 0x34: "Smart Energy wall router",
             0x39: "Smart Energy end device"}
    if family in (0x33, 0x34):
        return f"0x{vr:04X} ({kinds[family]} firmware)", True
    if family in kinds:
        return f"0x{vr:04X} ({kinds[family]} firmware): NOT Smart Energy router firmware", False
    return f"0x{vr:04X}: NOT Smart Energy firmware (load an XBee SE router firmware with XCTU)", False


def _diagnose(radio: Radio, clock: Clock, timeout: float, out: Callable[[str], None],
              join_wait_s: float) -> int:
    problems: list[str] = []
    vr = radio.at_query("VR", timeout)
    if vr is None:
        out(f"radio: NO ANSWER to an AT query within {timeout:g} s (check the baud rate, and that the radio "
            f"is in API mode 2)")
        out("result: NOT READY: the radio does not answer")
        return EXIT_NOT_READY
    firmware, is_router = describe_firmware(vr.number)
    out(f"firmware: {firmware}")
    if not is_router:
        out("firmware: WARNING: a gateway radio should run XBee Smart Energy router firmware")
    hv = radio.at_number("HV", timeout)
    out(f"hardware: {'unknown' if hv is None else f'0x{hv:04X}'}")

    ap, ao = radio.at_number("AP", timeout), radio.at_number("AO", timeout)
    if ap == discovery.API_MODE_ESCAPED:
        out("api mode: AP=2 (API with escaping): OK")
    else:
        out(f"api mode: AP={ap if ap is not None else 'unreadable'}: WRONG, the gateway needs AP=2")
        problems.append("API mode")
    if ao is not None and ao & discovery.AO_EXPLICIT_RX:
        out(f"explicit receive: AO={ao} (explicit RX frames on): OK")
    else:
        out(f"explicit receive: AO={ao if ao is not None else 'unreadable'}: WRONG, the gateway needs "
            f"bit 0 set (AO=1)")
        problems.append("explicit receive")
    ee = radio.at_number("EE", timeout)
    out(f"security: {'EE=1 (encryption enabled)' if ee == 1 else f'EE={ee}: encryption NOT enabled'}")

    ieee = discovery.radio_ieee(radio, timeout)
    out(f"radio IEEE address: {xbee_frames.format_ieee(ieee) if ieee is not None else 'unreadable'} "
        f"(give it, with the radio's install code, to the utility to admit the gateway)")

    code = _wait_for_join(radio, clock, timeout, out, join_wait_s)
    joined = code == 0x00
    out(f"join: {discovery.describe_ai(code)}" + ("" if joined else ": NOT JOINED"))
    if not joined:
        problems.append("not joined")
    else:
        my = radio.at_number("MY", timeout)
        out(f"radio network address: {'unknown' if my is None else f'0x{my:04X}'}")

    if problems:
        out(f"meter: not looked for ({', '.join(problems)})")
        out(f"result: NOT READY: {', '.join(problems)}")
        return EXIT_NOT_READY

    found = discovery.find_meter(radio, timeout)
    if found.outcome is not discovery.Found.METER:
        state = discovery.STATE_WHEN[found.outcome]
        out(f"meter: {state.upper()}: {found.detail}")
        out(f"result: NOT READY: {state}")
        return EXIT_NOT_READY
    meter = found.meter
    out(f"meter: answered from 0x{meter.nwk:04X} endpoint {meter.endpoint}, IEEE "
        f"{xbee_frames.format_ieee(meter.ieee)}")
    read = discovery.read_scaling(radio, meter, timeout)
    if read.outcome is not discovery.Scaled.OK:
        out(f"scaling: {read.detail}")
        out(f"result: NOT READY: "
            f"{'meter refused' if read.outcome is discovery.Scaled.REFUSED else 'scaling read failed'}")
        return EXIT_NOT_READY
    out(f"scaling: {read.detail}")
    out("result: READY: polling can start")
    return EXIT_READY


def _wait_for_join(radio: Radio, clock: Clock, timeout: float, out: Callable[[str], None],
                   join_wait_s: float) -> int | None:
    """The AI code, asking again for up to join_wait_s while the radio is still scanning or joining."""
    deadline = clock.monotonic() + join_wait_s
    code = discovery.association(radio, timeout)
    if code != 0x00:
        out(f"join: {discovery.describe_ai(code)}; waiting up to {join_wait_s:g} s for the radio to join")
    while code != 0x00 and clock.monotonic() < deadline:
        radio.drain(min(deadline, clock.monotonic() + 0.5))
        code = discovery.association(radio, timeout)
    return code
