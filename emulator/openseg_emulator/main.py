"""`openseg-emulator`: the command line, and one plain loop that runs the emulated radio and meter.

The loop, top to bottom, each time round:
  1. act on signals (the handlers only queue them): stop, radio reset, meter power, load re-read;
  2. let the radio's own timer run (joining);
  3. hand every reply whose time has come to the UART (meter reads are sampled and faults applied
     here, at the moment the meter answers);
  4. let the UART write what its pacing allows, and log what completed;
  5. wait, at most until the next thing is due, for host bytes or a signal;
  6. decode host bytes, log and classify each frame, and let the radio answer it.

Time: one monotonic clock, in seconds since start, drives the radio, the replies, the pacing and the
meter model (so the register never runs backwards if the wall clock is stepped). Frame-log times are
wall-clock epoch seconds, taken when the event happened.
"""
from __future__ import annotations

import argparse
import collections
import heapq
import itertools
import os
import random
import select
import signal
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from . import api_frames as af
from . import metering, register_state
from .classify import classify
from .faults import CORRUPT, DROP, FaultInjector
from .frame_log import FrameLog
from .household import HouseholdProfile
from .load_file import LoadFile, LoadFileError, parse_watts
from .meter_model import MeterModel, SteppedLoad
from .network import Network
from .pty_link import LinkError, PtyLink, Sent, UartWriter
from .radio import Radio, RadioConfig, Reply

MAX_WAIT_S = 0.5
ABSENT_WAIT_S = 0.05           # how quickly we notice the host opening the port
SOLAR_PEAK_W = 4000
MAX_ZCL_REPLY = 80             # a meter splits nothing: it answers what fits its radio payload


def log(message: str) -> None:
    print(f"emulator: {message}", file=sys.stderr, flush=True)


# ---- command line --------------------------------------------------------------------------------

def _int_in(name: str, lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer (decimal or 0x hex), not {text!r}")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be within {lo:#x}-{hi:#x} ({lo}-{hi}), not {text}")
        return v
    return parse


def _float_in(name: str, lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, not {text!r}")
        if not lo <= v <= hi:           # also refuses nan
            raise argparse.ArgumentTypeError(f"{name} must be within [{lo:g}, {hi:g}], not {text}")
        return v
    return parse


def _watts(text: str) -> Fraction:
    try:
        return parse_watts(text)
    except LoadFileError as e:
        raise argparse.ArgumentTypeError(f"--load-w: {e}")


def _kwh(name: str):
    def parse(text: str) -> Fraction:
        try:
            v = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{name} must be a number of kWh, not {text!r}")
        if v < 0:
            raise argparse.ArgumentTypeError(f"{name} must be >= 0")
        return v
    return parse


def _time_of_day(text: str) -> int:
    try:
        hours, minutes = text.split(":")
        h, m = int(hours), int(minutes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--time-of-day must be HH:MM, not {text!r}")
    if not (0 <= h < 24 and 0 <= m < 60):
        raise argparse.ArgumentTypeError(f"--time-of-day must be HH:MM within 00:00-23:59, not {text!r}")
    return h * 3600 + m * 60


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="openseg-emulator",
        description="Emulate a Digi XBee SE router radio (API mode 2, escaped) joined to a ZigBee Smart "
                    "Energy meter, on a pseudo-terminal symlinked at --link. Signals: SIGUSR1 radio reset, "
                    "SIGUSR2 meter power off/on, SIGHUP re-read --load-file, SIGTERM/SIGINT exit 0.")
    p.add_argument("--link", required=True, metavar="PATH", help="symlink to create to the pty slave")
    p.add_argument("--frame-log", metavar="FILE", help="append JSON lines: every host frame, meter answers, faults")
    g = p.add_argument_group("network")
    g.add_argument("--meter-address", type=_int_in("--meter-address", 0, 0xFFF7), default=0x0000,
                   metavar="0xNNNN", help="meter's network address; 0x0000 = the meter is the coordinator")
    g.add_argument("--meter-endpoint", type=_int_in("--meter-endpoint", 1, 240), default=9, metavar="N",
                   help="the meter's Smart Energy endpoint (default 9, deliberately not 1)")
    g.add_argument("--no-aps-encryption", action="store_true", help="replies lack RX option 0x20")
    g.add_argument("--join-delay-s", type=_float_in("--join-delay-s", 0, 3600), default=0.5, metavar="S",
                   help="from power-up or reset until joined (default 0.5)")
    r = p.add_argument_group("radio identity")
    r.add_argument("--api-mode", type=_int_in("--api-mode", 0, 255), default=2, metavar="N",
                   help="value AP reports (the emulator always speaks mode 2)")
    r.add_argument("--api-options", type=_int_in("--api-options", 0, 255), default=1, metavar="N",
                   help="value AO reports (default 1: explicit RX indicator)")
    r.add_argument("--firmware", type=_int_in("--firmware", 0, 0xFFFF), default=0x3362, metavar="0xNNNN",
                   help="VR (default 0x3362, an SE router)")
    r.add_argument("--hardware", type=_int_in("--hardware", 0, 0xFFFF), default=0x1A42, metavar="0xNNNN",
                   help="HV (default 0x1A42)")
    m = p.add_argument_group("meter")
    m.add_argument("--multiplier", type=_int_in("--multiplier", 0, 0xFFFFFF), default=1, metavar="N",
                   help="Multiplier attribute (default 1)")
    m.add_argument("--divisor", type=_int_in("--divisor", 0, 0xFFFFFF), default=1000, metavar="N",
                   help="Divisor attribute (default 1000: raw units of 1 Wh and 1 W)")
    m.add_argument("--unit", type=_int_in("--unit", 0, 255), default=0, metavar="N",
                   help="UnitOfMeasure (0 = kW/kWh)")
    m.add_argument("--device-type", type=_int_in("--device-type", 0, 255), default=0, metavar="N",
                   help="MeteringDeviceType (0 = electric)")
    m.add_argument("--start-kwh", type=_kwh("--start-kwh"), default=Fraction("12345.678"), metavar="X",
                   help="summation register (energy imported) at start, kWh (default 12345.678)")
    m.add_argument("--start-received-kwh", type=_kwh("--start-received-kwh"), default=Fraction(0), metavar="X",
                   help="CurrentSummationReceived register (energy exported) at start, kWh (default 0)")
    m.add_argument("--no-export", action="store_true",
                   help="a meter without export measurement: CurrentSummationReceived (0x0001) is answered "
                        "UNSUPPORTED_ATTRIBUTE")
    m.add_argument("--state-file", metavar="FILE",
                   help="keep the registers across runs: start from FILE when it exists (instead of "
                        "--start-kwh and --start-received-kwh), rewrite it after every answer")
    load = m.add_mutually_exclusive_group()
    load.add_argument("--load-w", type=_watts, metavar="W", help="constant load in watts (negative = export)")
    load.add_argument("--load-file", metavar="FILE",
                      help="file holding the load in watts, re-read when it changes and on SIGHUP")
    m.add_argument("--solar", action="store_true",
                   help=f"the household has solar panels ({SOLAR_PEAK_W} W peak): demand goes negative around "
                        "midday and the meter's received register counts the export")
    m.add_argument("--time-of-day", type=_time_of_day, metavar="HH:MM",
                   help="local time of day the household profile starts at (default: now)")
    f = p.add_argument_group("faults and timing")
    f.add_argument("--drop-rate", type=_float_in("--drop-rate", 0, 1), default=0.0, metavar="P",
                   help="probability that an answer to a poll read (0x0000/0x0400) is lost (default 0)")
    f.add_argument("--corrupt-rate", type=_float_in("--corrupt-rate", 0, 1), default=0.0, metavar="P",
                   help="probability that a poll answer not dropped arrives with a bad checksum (default 0)")
    f.add_argument("--reply-delay-ms", type=_float_in("--reply-delay-ms", 0, 60000), default=0.0, metavar="N",
                   help="extra latency of the meter's ZCL answers (default 0)")
    f.add_argument("--pace-baud", type=_int_in("--pace-baud", 0, 4_000_000), default=0, metavar="N",
                   help="write like a UART at N baud, 10 bits a byte (0 = no pacing)")
    f.add_argument("--seed", type=_int_in("--seed", 0, 2**63 - 1), metavar="N",
                   help="seed for faults and the household (default: random, logged)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    link = Path(args.link)
    if not link.parent.is_dir():
        parser.error(f"--link: directory {link.parent} does not exist")
    if (link.exists() or link.is_symlink()) and not link.is_symlink():
        parser.error(f"--link: {link} exists and is not a symlink")
    if args.frame_log and not Path(args.frame_log).parent.is_dir():
        parser.error(f"--frame-log: directory {Path(args.frame_log).parent} does not exist")
    if args.meter_address == RadioConfig.nwk:
        parser.error(f"--meter-address: 0x{args.meter_address:04x} is the radio's own address")
    if args.load_file:
        try:
            args.load_source = LoadFile(args.load_file)
        except LoadFileError as e:
            parser.exit(2, f"{parser.prog}: --load-file: {e}\n")     # one line, no usage: a file fault
    else:
        args.load_source = None
    if args.state_file:
        try:
            saved = register_state.load(Path(args.state_file))
        except register_state.StateFileError as e:
            parser.error(f"--state-file: {e}")
        if saved is not None:
            args.start_kwh, args.start_received_kwh = saved
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


# ---- what runs ------------------------------------------------------------------------------------

class Signals:
    """Signal handlers only queue the signal and wake the loop; the loop does the work."""

    HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)

    def __init__(self):
        self.queue: collections.deque[int] = collections.deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in self.HANDLED:
            signal.signal(sig, lambda signum, frame: self.queue.append(signum))

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        os.close(self.wake_r)
        os.close(self.wake_w)


class Schedule:
    """Replies waiting for their time, in order of time and then of creation (TX status first)."""

    def __init__(self):
        self._heap: list[tuple[float, int, Reply]] = []
        self._counter = itertools.count()

    def add(self, now: float, replies: list[Reply]) -> None:
        for r in replies:
            heapq.heappush(self._heap, (now + r.delay_s, next(self._counter), r))

    def due(self, now: float) -> list[Reply]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def cancel(self, source: str | None = None) -> None:
        """Forget the replies from `source`, or all of them."""
        self._heap = [item for item in self._heap if source is not None and item[2].source != source]
        heapq.heapify(self._heap)


@dataclass(frozen=True)
class Outgoing:
    """A frame handed to the UART: the frame data as meant (before any corruption), and for a poll
    answer the facts its "answer" log line records once the last byte is out."""
    frame: bytes
    facts: dict | None = None
    corrupted: bool = False


class Emulator:
    """Everything the loop touches, wired from the command line."""

    def __init__(self, args: argparse.Namespace, clock=time.monotonic):
        self.args = args
        self._t0 = clock()
        self._clock = clock
        self.frame_log = FrameLog(args.frame_log)
        self.load_source: LoadFile | None = args.load_source
        if self.load_source is not None:
            self.load = SteppedLoad(self.load_source.watts)
            load_desc = {"profile": "file", "w": float(self.load_source.watts), "file": str(args.load_file)}
        elif args.load_w is not None:
            self.load = SteppedLoad(args.load_w)
            load_desc = {"profile": "constant", "w": float(args.load_w)}
        else:
            tod = args.time_of_day if args.time_of_day is not None else _local_time_of_day()
            self.load = HouseholdProfile(args.seed, tod, SOLAR_PEAK_W if args.solar else 0)
            load_desc = {"profile": "household", "w": float(self.load.demand_w(0)), "start_time_of_day_s": tod,
                         "solar_peak_w": self.load.solar_peak_w}
        self.model = MeterModel(self.load, args.start_kwh, args.multiplier, args.divisor, args.start_received_kwh)
        self.state_file = Path(args.state_file) if args.state_file else None
        summation_fmt, demand_fmt = self.model.formatting()
        self.meter_settings = metering.MeterSettings(args.unit, args.device_type, args.multiplier, args.divisor,
                                                     summation_fmt, demand_fmt, export=not args.no_export)
        self.network = Network(args.meter_address, args.meter_endpoint)
        self.radio = Radio(RadioConfig(api_mode=args.api_mode, api_options=args.api_options,
                                       firmware=args.firmware, hardware=args.hardware,
                                       join_delay_s=args.join_delay_s, reply_delay_s=args.reply_delay_ms / 1000,
                                       aps_encryption=not args.no_aps_encryption), self.network, 0.0)
        self.faults = FaultInjector(random.Random(args.seed), args.drop_rate, args.corrupt_rate)
        self.decoder = af.StreamDecoder()
        self.schedule = Schedule()
        self.link = PtyLink(args.link)
        self.uart = UartWriter(self.link, args.pace_baud)
        self.host_present = False
        self.frame_log.write("start", pid=os.getpid(), link=str(args.link), pty=self.link.slave_name,
                             seed=args.seed, meter_address=f"0x{args.meter_address:04x}",
                             meter_endpoint=args.meter_endpoint, meter_ieee=f"{self.network.meter.ieee:016x}",
                             load=load_desc)

    def now(self) -> float:
        return self._clock() - self._t0

    # -- 1. signals --
    def on_signal(self, sig: int, now: float) -> bool:
        """Act on one signal; False means stop."""
        if sig in (signal.SIGTERM, signal.SIGINT):
            log(f"{signal.Signals(sig).name}: exiting")
            return False
        if sig == signal.SIGUSR1:
            # A reset radio loses what it was about to send, mid-frame included, and its UART input.
            self.schedule.cancel()
            self._log_lost(self.uart.clear(now), "radio reset")
            self.decoder.reset()
            self.schedule.add(now, self.radio.reset(now))
            self.frame_log.write("reset")
            log("radio hardware reset (SIGUSR1); rejoining")
        elif sig == signal.SIGUSR2:
            meter = self.network.meter
            meter.powered = not meter.powered
            if not meter.powered:
                self.schedule.cancel(meter.name)
            self.frame_log.write("meter-power", on=meter.powered)
            log(f"meter power {'on' if meter.powered else 'off'} (SIGUSR2)")
        elif sig == signal.SIGHUP:
            if self.load_source is None:
                log("SIGHUP ignored: no --load-file to re-read")
            self.check_load_file(now, force=True)
        return True

    def check_load_file(self, now: float, force: bool = False) -> None:
        if self.load_source is None:
            return
        watts, problem = self.load_source.check(force)
        if problem:
            log(f"--load-file: {problem}")
        if watts is not None:
            self.load.set_w(now, watts)
            self.frame_log.write("load", w=float(watts), profile="file")
            log(f"load now {float(watts):g} W")

    # -- 2. the radio's timer --
    def tick(self, now: float) -> None:
        was_joined = self.radio.joined
        self.schedule.add(now, self.radio.tick(now))
        if self.radio.joined and not was_joined:
            self.frame_log.write("joined")
            log("joined the network")

    # -- 3. replies whose time has come --
    def send_due(self, now: float) -> None:
        for reply in self.schedule.due(now):
            if reply.read is None:
                self.uart.send(af.encode(reply.frame), now, Outgoing(reply.frame))
            else:
                self.send_meter_answer(reply, now)

    def send_meter_answer(self, reply: Reply, now: float) -> None:
        # The meter samples its registers when it answers, after any reply delay, not when asked.
        self.check_load_file(now)
        sample = self.model.sample(now)
        t_sample = time.time()
        if self.state_file is not None:
            register_state.save(self.state_file, sample.kwh, sample.received_kwh)
        values = metering.attribute_values(self.meter_settings, sample.summation_raw, sample.demand_raw,
                                           sample.received_raw)
        frame = reply.frame + metering.read_attributes_response(reply.read, values, MAX_ZCL_REPLY)
        if not reply.read.is_poll:
            self.uart.send(af.encode(frame), now, Outgoing(frame))
            return
        facts = {"zcl_seq": reply.read.seq,
                 "attrs": {f"0x{a:04x}": values[a] for a in reply.read.attributes if a in values},
                 "kwh": float(sample.kwh), "kw": float(sample.kw),
                 "kwh_exact": str(sample.kwh), "kw_exact": str(sample.kw), "t_sample": t_sample}
        if self.meter_settings.export:
            facts["received_kwh_exact"] = str(sample.received_kwh)
        fault = self.faults.decide()
        if fault == DROP:
            self.frame_log.write("fault", fault=DROP, **facts)
            log(f"fault: dropped the answer to ZCL read seq {reply.read.seq}")
        elif fault == CORRUPT:
            data, noise = self.faults.corrupt(frame)
            self.frame_log.write("fault", fault=CORRUPT, garbage=noise, **facts)
            log(f"fault: corrupted the answer to ZCL read seq {reply.read.seq}"
                f"{' after line noise' if noise else ''}")
            self.uart.send(data, now, Outgoing(frame, corrupted=True))
        else:
            self.uart.send(af.encode(frame), now, Outgoing(frame, facts))

    # -- 4. the UART --
    def pump_uart(self, now: float) -> None:
        self.uart.pump(now, self._on_sent)

    def _on_sent(self, sent: Sent) -> None:
        out: Outgoing = sent.tag
        if not sent.complete:
            self._log_lost([sent], "host not reading" if self.link.host_present() else "port closed")
            return
        extra = {"corrupted": True} if out.corrupted else {}
        self.frame_log.write("tx", t=sent.t_end, type=f"0x{out.frame[0]:02x}", hex=out.frame.hex(), **extra)
        if out.facts is not None:
            self.frame_log.write("answer", t=sent.t_end, t_start=sent.t_start, **out.facts)

    def _log_lost(self, lost: list[Sent], reason: str) -> None:
        for sent in lost:
            out: Outgoing = sent.tag
            extra = {"zcl_seq": out.facts["zcl_seq"]} if out.facts is not None else {}
            self.frame_log.write("tx-lost", type=f"0x{out.frame[0]:02x}", hex=out.frame.hex(), reason=reason,
                                 **extra)
            log(f"frame 0x{out.frame[0]:02x} lost: {reason}")

    # -- 5. waiting --
    def wait(self, now: float, signals: Signals) -> bytes:
        present = self.link.host_present()
        if present != self.host_present:
            self.host_present = present
            self.frame_log.write("link", open=present)
            log("host opened the port" if present else "host closed the port")
        deadlines = [d for d in (self.schedule.next_due(), self.uart.next_due(), self.radio.next_event())
                     if d is not None]
        timeout = min([MAX_WAIT_S if present else ABSENT_WAIT_S] + [d - now for d in deadlines])
        poller = select.poll()
        poller.register(signals.wake_r, select.POLLIN)
        if present:
            # While nobody has the slave open the master polls as "hung up" at once: leave it out.
            poller.register(self.link.master, select.POLLIN)
        ready = dict(poller.poll(max(0, int(timeout * 1000) + (1 if timeout > 0 else 0))))
        if signals.wake_r in ready:
            signals.drain_wakeups()
        if ready.get(self.link.master, 0) & select.POLLIN:
            return self.link.read()
        return b""

    # -- 6. host frames --
    def on_bytes(self, data: bytes, now: float) -> None:
        for item in self.decoder.feed(data):
            if isinstance(item, af.Damaged):
                fields = {"dropped": item.dropped} if item.dropped else {}
                self.frame_log.write("rx-bad", hex=item.raw.hex(), reason=item.reason, **fields)
                log(f"rx-bad ({item.reason}): {item.raw[:32].hex()}{'...' if len(item.raw) > 32 else ''}")
                continue
            kind, detail = classify(item.data)
            self.frame_log.write("rx", type=f"0x{item.data[0]:02x}", hex=item.data.hex(), **{"class": kind},
                                 detail=detail)
            self.tick(now)
            handled = self.radio.handle(item.data, now)
            log(f"rx 0x{item.data[0]:02x} {kind}" + "".join(f"; {n}" for n in handled.notes))
            self.schedule.add(now, handled.replies)

    def close(self) -> None:
        self.link.close()
        self.frame_log.write("stop")
        self.frame_log.close()


def _local_time_of_day() -> int:
    lt = time.localtime()
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec


def run(args: argparse.Namespace) -> int:
    signals = Signals()
    try:
        emu = Emulator(args)
    except (LinkError, OSError) as e:
        signals.close()
        print(f"openseg-emulator: error: {e}", file=sys.stderr)
        return 1
    try:
        emu.schedule.add(0.0, emu.radio.reset(0.0))     # power-up: modem status 0x00, then join
        emu.link.publish()
        log(f"ready on {args.link}")
        running = True
        while running:
            now = emu.now()
            while signals.queue and running:
                running = emu.on_signal(signals.queue.popleft(), now)
            if not running:
                break
            emu.tick(now)
            emu.send_due(now)
            emu.pump_uart(now)
            data = emu.wait(now, signals)
            if data:
                emu.on_bytes(data, emu.now())
    except LinkError as e:
        print(f"openseg-emulator: error: {e}", file=sys.stderr)
        return 1
    finally:
        emu.close()
        signals.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
