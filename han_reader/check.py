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
from .link import LinkLost
from .radio import Radio, RadioReset

EXIT_READY = 0
EXIT_NOT_READY = 1


def _int(rsp) -> int | None:
    if rsp is None or rsp.status != 0 or not rsp.value:
        return None
    return int.from_bytes(rsp.value, "big")


def run_check(link, radio: Radio, han: dict, out: Callable[[str], None] = print,
              join_wait_s: float = 10.0) -> int:
    out(f"serial port: {link.port} at {link.baudrate} baud")
    try:
        link.open()
    except LinkLost as exc:
        out(f"serial port: CANNOT OPEN: {exc} (is the radio plugged in, or is openseg-han already running?)")
        out("result: NOT READY: the serial port cannot be opened")
        return EXIT_NOT_READY
    try:
        return _diagnose(radio, han["response_timeout_s"], out, join_wait_s)
    except RadioReset as exc:
        out(f"result: NOT READY: the radio reset during the check ({exc}); run the check again")
    except LinkLost as exc:
        out(f"result: NOT READY: the serial port failed during the check ({exc})")
    finally:
        link.close()
    return EXIT_NOT_READY


def _diagnose(radio: Radio, timeout: float, out: Callable[[str], None], join_wait_s: float) -> int:
    problems: list[str] = []
    vr = radio.at_query("VR", timeout)
    if vr is None:
        out(f"radio: NO ANSWER to an AT query within {timeout:g} s (check the baud rate, and that the radio "
            f"is in API mode 2)")
        out("result: NOT READY: the radio does not answer")
        return EXIT_NOT_READY
    firmware, is_router = discovery.describe_firmware(_int(vr))
    out(f"firmware: {firmware}")
    if not is_router:
        out("firmware: WARNING: a gateway radio should run XBee Smart Energy router firmware")
    hv = _int(radio.at_query("HV", timeout))
    out(f"hardware: {'unknown' if hv is None else f'0x{hv:04X}'}")

    ap, ao = _int(radio.at_query("AP", timeout)), _int(radio.at_query("AO", timeout))
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
    ee = _int(radio.at_query("EE", timeout))
    out(f"security: {'EE=1 (encryption enabled)' if ee == 1 else f'EE={ee}: encryption NOT enabled'}")

    ieee = discovery.radio_ieee(radio, timeout)
    out(f"radio IEEE address: {xbee_frames.format_ieee(ieee) if ieee is not None else 'unreadable'} "
        f"(give it, with the radio's install code, to the utility to admit the gateway)")

    code = _wait_for_join(radio, timeout, out, join_wait_s)
    joined = code == 0x00
    out(f"join: {discovery.describe_ai(code)}" + ("" if joined else ": NOT JOINED"))
    if not joined:
        problems.append("not joined")
    else:
        my = _int(radio.at_query("MY", timeout))
        out(f"radio network address: {'unknown' if my is None else f'0x{my:04X}'}")

    if problems:
        out(f"meter: not looked for ({', '.join(problems)})")
        out(f"result: NOT READY: {', '.join(problems)}")
        return EXIT_NOT_READY

    found = discovery.find_meter(radio, timeout)
    if found.outcome != "found":
        out(f"meter: {found.outcome.upper()}: {found.detail}")
        out(f"result: NOT READY: {found.outcome}")
        return EXIT_NOT_READY
    meter = found.meter
    out(f"meter: answered from 0x{meter.nwk:04X} endpoint {meter.endpoint}, IEEE "
        f"{xbee_frames.format_ieee(meter.ieee)}")
    read = discovery.read_scaling(radio, meter, timeout)
    if read.outcome != "ok":
        out(f"scaling: {read.detail}")
        out(f"result: NOT READY: {'meter refused' if read.outcome == 'refused' else 'scaling read failed'}")
        return EXIT_NOT_READY
    out(f"scaling: {read.detail}")
    out("result: READY: polling can start")
    return EXIT_READY


def _wait_for_join(radio: Radio, timeout: float, out: Callable[[str], None], join_wait_s: float) -> int | None:
    """The AI code, asking again for up to join_wait_s while the radio is still scanning or joining."""
    deadline = radio.clock.monotonic() + join_wait_s
    code = discovery.association(radio, timeout)
    if code != 0x00:
        out(f"join: {discovery.describe_ai(code)}; waiting up to {join_wait_s:g} s for the radio to join")
    while code != 0x00 and radio.clock.monotonic() < deadline:
        radio.drain(min(deadline, radio.clock.monotonic() + 0.5))
        code = discovery.association(radio, timeout)
    return code
