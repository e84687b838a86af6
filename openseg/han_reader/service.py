"""The HAN process's one loop: open the port, check the radio, join, find the meter, poll slot by slot.

    run():  open port ─▶ check AP/AO ─▶ join (AI) ─▶ find meter + read scaling ─▶ poll every slot
              ▲                                                                        │
              └──── RadioReset (modem status) / LinkLost (port gone) / RadioSilent ◀───┘

One thread. Every wait — for a reply, a retry or the next slot — reads the port (`Radio.wait`), so a
modem status is never missed, and also runs the housekeeping (periodic status, gaps for slots that pass
while not polling). Nothing from the radio can end the loop: bad bytes are counted, resets and lost
ports lead back to the top. It ends only on SIGTERM/SIGINT (exit 0) or a radio in the wrong API mode
(exit 3), which no amount of retrying fixes.

States (INTERFACE.md), each sent to the LAN side as a status message when it or its detail changes:
  radio-down              the port cannot be opened, was lost, or the radio does not answer AT queries
  joining                 port open; checking AP/AO, then asking AI until the radio has joined
  discovering             joined; looking for the meter, or the meter found is refused (not electric)
  meter-address-mismatch  only nodes other than the coordinator 0x0000 offer Simple Metering
  meter-unreachable       discovery or the scaling read got no answer; or, while polling, the last
                          UNREACHABLE_AFTER queries were all lost (polling goes on every slot)
  polling                 the meter answers

Under systemd (Type=notify): READY=1 once the radio has answered the API-mode check the first time (the
service is up and doing its job even while the meter is away), STATUS= with every state change, and
WATCHDOG=1 from this one loop's housekeeping in every state, so a loop that stops turning is restarted.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable

from openseg.shared_schema import sd_notify
from openseg.shared_schema.messages import FIELDS, MAX_GAP_RUN, GapCause, HanState, Kind, SkipCause

from . import discovery, poller, xbee_frames
from .channel_sender import ChannelSender
from .clock import Clock
from .discovery import Found, Meter, Scaled, Scaling
from .egress_guard import EgressGuard, EgressRefused
from .link import LinkLost, Stopping
from .radio import Radio, RadioMisconfigured, RadioReset, RadioSilent
from .schedule import Backoff, Schedule
from .time_base import PLAUSIBLE_FLOOR, TimeBase

log = logging.getLogger("openseg.han")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RADIO_MISCONFIGURED = 3
DETAIL_MAX = FIELDS[Kind.STATUS]["detail"][1]      # the schema's longest detail text
MAX_HELD = 10_000       # readings/gaps held while the wall clock is implausible (19 h at the 7-s poll)


BACKOFF_CAP_S = 300.0   # the longest wait between discovery attempts: a few minutes
BACKOFF_CAP_INTERVALS = 32


def retry_timing(poll_interval_s: float) -> tuple[float, float]:
    """(first retry delay, longest retry delay) for the port and the AI query, which stay on the serial
    line: 1 s doubling to 60 s at the production interval, scaled down with a lab's short interval."""
    return min(1.0, poll_interval_s / 4), min(60.0, poll_interval_s * 10)


def meter_backoff(poll_interval_s: float) -> tuple[float, float]:
    """(first, longest) wait before another discovery after one failed or a reset cut it short: from one
    poll interval, doubling, to 32 intervals but at most 5 minutes (224 s at the 7 s default)."""
    return poll_interval_s, max(poll_interval_s, min(BACKOFF_CAP_S, BACKOFF_CAP_INTERVALS * poll_interval_s))


class HanService:
    def __init__(self, han: dict, link, radio: Radio, guard: EgressGuard, sender: ChannelSender,
                 clock: Clock, notify: Callable[..., bool] = sd_notify.notify,
                 watchdog: sd_notify.Watchdog | None = None):
        self.link, self.radio, self.guard, self.sender, self.clock = link, radio, guard, sender, clock
        self.notify = notify
        self.watchdog = watchdog or sd_notify.Watchdog(["han-loop"], clock=clock.monotonic)
        self.ready_sent = False
        self.interval = han["poll_interval_s"]
        self.timeout = han["response_timeout_s"]
        self.status_every = han["status_every_s"]
        base, cap = retry_timing(self.interval)
        self.join_poll_s = base
        self.port_backoff = Backoff(base, cap)
        # Discovery and rejoin are paced against the meter: a radio that resets at every discovery
        # (a reset storm) backs off to the cap instead of restarting discovery at once.
        self.discovery_backoff = Backoff(*meter_backoff(self.interval))
        self.discoveries_unanswered = 0     # discovery attempts since the meter last answered a poll
        radio.pace_with(self._idle_until)
        self.state: HanState | None = None
        self.detail = ""
        self.meter: Meter | None = None
        self.scaling: Scaling | None = None
        self.radio_ieee: str | None = None
        self.schedule: Schedule | None = None     # created when polling starts the first time
        self.polling = False
        self.counters = poller.Counters()
        self.started = clock.wall()          # identifies this run to the LAN side
        self.started_mono = clock.monotonic()  # uptime is monotonic: a clock step cannot change it
        self.time_base = TimeBase(self.started_mono, self.started)
        # (kind, fields, {field: monotonic time}) waiting for a plausible wall clock to be tagged on.
        self.held: deque[tuple[Kind, dict, dict[str, float]]] = deque()
        self.held_dropped = 0
        if not self.time_base.plausible:
            self._log_implausible()
        self.next_status = clock.monotonic() + self.status_every   # every state change sends one too

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> int:
        while True:
            self.polling = False
            try:
                self._open_port()
                self._check_radio()
                self._join()
                self._find_meter()
                self._poll_forever()
            except RadioReset as exc:
                log.warning("radio: %s; joining and discovering again", exc)
                self._forget_meter()
            except (LinkLost, RadioSilent) as exc:
                self.link.close()
                self._forget_meter()
                self._set_state(HanState.RADIO_DOWN, f"{exc}; retrying", logging.WARNING)
            except EgressRefused as exc:
                # The guard stopped a frame this program built: a bug, already logged and counted by
                # the guard. Start over from the radio check rather than stop reading the meter.
                log.error("BUG: the egress guard refused one of our own frames (%s); starting over", exc)
                self._forget_meter()
                self.link.close()
                self._set_state(HanState.RADIO_DOWN, "internal error (egress guard refusal); retrying",
                                logging.ERROR)
            except RadioMisconfigured as exc:
                self._set_state(HanState.RADIO_DOWN, str(exc), logging.ERROR)
                log.error("refusing to run: %s", exc)
                return EXIT_RADIO_MISCONFIGURED
            except Stopping:
                log.info("stopping on signal")
                self.notify("STOPPING=1")
                return EXIT_OK

    def _open_port(self) -> None:
        while not self.link.is_open:
            if self.state == HanState.RADIO_DOWN:
                self._idle(self.port_backoff.next())
            try:
                self.link.open()
            except LinkLost as exc:
                self._set_state(HanState.RADIO_DOWN, f"{exc}; retrying", logging.WARNING)
                continue
            self.radio.restart()
            log.info("port: opened %s at %d baud", self.link.port, self.link.baudrate)

    def _check_radio(self) -> None:
        # The state changes only once the radio has answered, so a silent radio stays radio-down
        # through its retries instead of flapping between two states.
        discovery.check_api_modes(self.radio, self.timeout)
        self._set_state(HanState.JOINING,
                        "radio in API mode 2 with explicit receive; asking whether it has joined")
        if not self.ready_sent:
            self.notify("READY=1")
            self.ready_sent = True
        ieee = discovery.radio_ieee(self.radio, self.timeout)
        if ieee is not None:
            self.radio_ieee = xbee_frames.format_ieee(ieee)
            log.info("radio: IEEE address %s", self.radio_ieee)

    def _join(self) -> None:
        while True:
            code = discovery.association(self.radio, self.timeout)
            if code == 0x00:
                log.info("radio: joined (%s)", discovery.describe_ai(code))
                self.port_backoff.reset()
                return
            self._set_state(HanState.JOINING, discovery.describe_ai(code))
            self._idle(self.join_poll_s)

    def _find_meter(self) -> None:
        self._set_state(HanState.DISCOVERING, "looking for the meter: IEEE_addr_req to 0x0000, Match_Desc "
                        "for Simple Metering")
        while True:
            if self.discoveries_unanswered:
                self._idle(self.discovery_backoff.next())
            self.discoveries_unanswered += 1
            found = discovery.find_meter(self.radio, self.timeout)
            if found.outcome is not Found.METER:
                self._set_state(discovery.STATE_WHEN[found.outcome], found.detail + "; retrying",
                                logging.WARNING)
                continue
            read = discovery.read_scaling(self.radio, found.meter, self.timeout)
            if read.outcome is Scaled.OK:
                self.meter, self.scaling = found.meter, read.scaling
                log.info("meter: %s; %s", found.meter.describe(), read.detail)
                return
            if read.outcome is Scaled.REFUSED:
                self._set_state(HanState.DISCOVERING, read.detail, logging.ERROR)
                self.discovery_backoff.saturate()       # a wrong meter will not change quickly
            else:
                self._set_state(HanState.METER_UNREACHABLE, read.detail + "; retrying", logging.WARNING)

    def _poll_forever(self) -> None:
        # The pace law: the first poll waits a whole interval after the scaling read. Slots due
        # meanwhile become "not-polling" gaps (housekeeping, while self.polling is still False).
        self._idle_until(self.guard.explicit_free_at())
        if self.schedule is None:
            self.schedule = Schedule(self.clock.monotonic(), self.interval)
            log.info("schedule: slot 0 due now, one slot every %g s", self.interval)
        else:
            self._housekeeping()    # slots that passed during join/discovery become "not-polling" gaps
        self.polling = True
        self._set_state(HanState.POLLING, f"reading meter {self.meter.describe()} every {self.interval:g} s")
        while True:
            self._idle_until(self.schedule.due_mono(self.schedule.next))
            missed, slot = self.schedule.claim(self.clock.monotonic())
            if missed:
                log.warning("slots %d-%d: missed, the loop was late", missed[0], missed[-1])
                self._gaps(missed, SkipCause.LATE)
            if slot is not None:
                self._poll_slot(slot)

    def _poll_slot(self, slot: int) -> None:
        try:
            outcome = poller.poll_once(self.radio, self.meter, self.timeout)
        except (RadioReset, LinkLost):
            # Polling stops mid-query; the slot still gets its gap so it is not silently skipped. It is
            # not counted as a lost query: the radio went away, the meter did not fail to answer.
            self._gaps([slot], SkipCause.NOT_POLLING)
            raise
        self.counters.count(outcome)
        if outcome.cause is None:
            self.discoveries_unanswered = 0
            self.discovery_backoff.reset()
            fields = {"slot": slot, "rtt_s": outcome.rtt_s, "scaling": self.scaling.as_message()}
            if outcome.summation is not None:
                fields["summation"] = outcome.summation
            if outcome.demand is not None:
                fields["demand"] = outcome.demand
            if outcome.received is not None:
                fields["received"] = outcome.received
            if outcome.detail:
                log.info("slot %d: partial reading (%s)", slot, outcome.detail)
            self._emit(Kind.READING, fields, {"due": self.schedule.due_mono(slot), "time": outcome.mono})
            if self.state != HanState.POLLING:
                log.info("meter: answering again")
                self._set_state(HanState.POLLING, f"reading meter {self.meter.describe()} every "
                                f"{self.interval:g} s")
            return
        self._gaps([slot], outcome.cause)
        if self.state == HanState.POLLING:     # once unreachable, the state says it; no line per slot
            log.info("slot %d: lost (%s: %s)", slot, outcome.cause, outcome.detail)
        if self.counters.consecutive_lost >= poller.UNREACHABLE_AFTER:
            self._set_state(HanState.METER_UNREACHABLE, f"the last {poller.UNREACHABLE_AFTER} or more "
                            f"queries were lost (latest: {outcome.cause}); still polling every slot",
                            logging.WARNING)

    # ---- waiting, with housekeeping ------------------------------------------------------------
    def _idle(self, seconds: float) -> None:
        self._idle_until(self.clock.monotonic() + seconds)

    def _idle_until(self, deadline: float) -> None:
        while True:
            self._housekeeping()
            now = self.clock.monotonic()
            if now >= deadline:
                return
            until = min(deadline, self._next_housekeeping())
            if self.link.is_open:
                self.radio.drain(until)
            else:
                self.link.sleep(until - now)

    def _housekeeping(self) -> None:
        self._watch_clock()
        now = self.clock.monotonic()
        if self.schedule is not None and not self.polling:
            self._gaps(self.schedule.passed(now), SkipCause.NOT_POLLING)
        if now >= self.next_status and self.state is not None:
            self._send_status()
        self.watchdog.beat("han-loop")

    def _next_housekeeping(self) -> float:
        when = min(self.next_status if self.state is not None else float("inf"), self.watchdog.deadline())
        if self.schedule is not None and not self.polling:
            when = min(when, self.schedule.due_mono(self.schedule.next))
        return when

    # ---- time ----------------------------------------------------------------------------------
    def _watch_clock(self) -> None:
        """Notice a wall-clock step: tags follow the new clock, what was tagged on the old one is moved
        (a `clock` message), held entries go out once the clock is plausible, and status says so."""
        was_plausible = self.time_base.plausible
        wall = self.clock.wall()
        step, retag = self.time_base.observe(self.clock.monotonic(), wall)
        if retag is not None:
            self.sender.send(Kind.CLOCK, {"shift_s": retag.shift_s, "from": retag.first, "to": retag.last})
        if step is not None:
            log.warning("clock: the wall clock stepped by %+.3f s; time tags follow it from now on%s", step,
                        f" and the {retag.first:.3f}..{retag.last:.3f} ones are moved" if retag else "")
        if self.time_base.plausible and not was_plausible:
            log.info("clock: the wall clock is plausible again; tagging the %d held reading(s) and gap(s)",
                     len(self.held))
        elif was_plausible and not self.time_base.plausible:
            self._log_implausible()
        if self.time_base.plausible:
            while self.held:
                self._emit(*self.held.popleft())
        if (step is not None or was_plausible != self.time_base.plausible) and self.state is not None:
            self._send_status()

    def _log_implausible(self) -> None:
        log.warning("clock: the wall clock is before %s (not set yet?); holding readings and gaps until "
                    "it is", PLAUSIBLE_FLOOR)

    # ---- messages ------------------------------------------------------------------------------
    def _emit(self, kind: Kind, fields: dict, monos: dict[str, float]) -> None:
        """Send a reading or gap, its monotonic times tagged on the one time base; hold it instead
        while the wall clock is implausible (the oldest go first if the hold is full, counted)."""
        if not self.time_base.plausible:
            if len(self.held) >= MAX_HELD:
                self.held.popleft()
                self.held_dropped += 1
            self.held.append((kind, fields, monos))
            return
        self.sender.send(kind, {**fields, **{k: self.time_base.tag(m) for k, m in monos.items()}})

    def _gaps(self, slots: list[int], cause: GapCause) -> None:
        """Consecutive slots without a reading, one message per run of up to MAX_GAP_RUN slots: a stall's
        catch-up is one datagram, not one per slot, so it cannot overflow the channel's queue."""
        for i in range(0, len(slots), MAX_GAP_RUN):
            run = slots[i:i + MAX_GAP_RUN]
            fields = {"slot": run[0], "cause": cause}
            if len(run) > 1:
                fields.update(count=len(run), every_s=self.interval)
            self._emit(Kind.GAP, fields, {"due": self.schedule.due_mono(run[0])})

    def _set_state(self, state: HanState, detail: str, level: int = logging.INFO) -> None:
        detail = detail[:DETAIL_MAX]
        if (state, detail) == (self.state, self.detail):
            return
        self.state, self.detail = state, detail
        log.log(level, "state %s: %s", state, detail)
        self.notify(sd_notify.status_text(f"{state}: {detail}"))
        self._send_status()

    def _send_status(self) -> None:
        c = self.counters
        fields = {
            "state": self.state, "detail": self.detail,
            "queries_total": c.queries_total, "queries_lost": c.queries_lost,
            "lost_by_cause": dict(c.lost_by_cause), "frames_bad": self.radio.frames_bad,
            "guard_refused": self.guard.refused, "channel_dropped": self.sender.dropped,
            "started": self.started, "poll_interval_s": self.interval,
            "uptime_s": self.clock.monotonic() - self.started_mono,
            "clock_steps": self.time_base.steps, "clock_plausible": self.time_base.plausible,
            "clock_held": len(self.held), "clock_held_dropped": self.held_dropped,
        }
        if self.time_base.last_step_s is not None:
            fields["clock_last_step_s"] = self.time_base.last_step_s
        if self.meter is not None:
            fields["meter"] = {"ieee": xbee_frames.format_ieee(self.meter.ieee), "nwk": self.meter.nwk,
                               "endpoint": self.meter.endpoint}
        if self.radio_ieee is not None:
            fields["radio_ieee"] = self.radio_ieee
        self.sender.send(Kind.STATUS, fields)
        self.next_status = self.clock.monotonic() + self.status_every

    def _forget_meter(self) -> None:
        self.meter = self.scaling = None
        self.radio.aim_at(None)
