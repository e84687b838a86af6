"""Issue 14: data that stays true through clock steps, meter swaps, bursts on the channel and extreme values.

Each scenario runs the real HAN loop on a fake radio and a controllable clock (han_fixtures.Rig) or builds
the channel messages directly, hands them to the LAN side's real Readings and history store (and, for the
bursts, through the real AF_UNIX channel), and then checks the issue's three invariants:
  * no interval is counted as measured that was not (intervals are compared with the truth: the meter's
    register at its true times, which the fake radio records on the monotonic clock);
  * every slot is a reading or a gap in history, exactly once, on one time line;
  * the status (the HAN's status message and the LAN's /api/v1/status JSON) says what happened.
"""
from __future__ import annotations

import json
import os
import socket
import time
from fractions import Fraction

import pytest

from tests.support.channel_messages import SCALING_1_1000, T0, Clock, gap, reading, status
from tests.support.fake_radio import FakeClock, FakeRadio, Node
from tests.support.han_fixtures import Rig
from openseg.han_reader.channel_sender import ChannelSender
from openseg.han_reader.time_base import PLAUSIBLE_FLOOR
from openseg.lan_server.state import history_store as hs
from openseg.lan_server.espi import interval_energy as ie
from openseg.lan_server.http import web_resources
from openseg.lan_server.state.channel_receiver import ChannelReceiver
from openseg.lan_server.state.readings import CHANNEL_LOST, Readings
from openseg.shared_schema import messages

W0 = 1_750_000_000.0       # the HAN tests' wall clock (2025-06): a plausible one


class Lan:
    """The LAN side's Readings and history store on a hand-moved wall clock (no receiver thread)."""

    def __init__(self, tmp_path, now: float, **kw):
        self.clock = Clock(now)
        self.mono = Clock(1000.0)
        self.store = hs.HistoryStore(str(tmp_path / hs.FILE_NAME), 35, clock=self.clock, log=lambda _: None)
        self.readings = Readings(30.0, clock=self.clock, monotonic=self.mono, history=self.store, **kw)

    def apply(self, msgs) -> None:
        for m in msgs:
            self.readings.apply(m)
        self.store.flush()

    def rows(self) -> list[hs.Row]:
        with self.store.reading() as rd, rd.snapshot():
            return list(rd.rows())

    def intervals(self) -> list[ie.Interval]:
        with self.store.reading() as rd, rd.snapshot():
            return list(ie.intervals(rd.register(), self.readings.snapshot().power_bound_w))

    def status(self, counters: dict | None = None) -> dict:
        return json.loads(web_resources.status_json(self.readings, counters or {}, T0).body)


def assert_one_time_line(rows: list[hs.Row], slots: int) -> None:
    """Every slot 0..slots-1 once, as a reading or a gap, and the times strictly in slot order."""
    assert sorted(r.slot for r in rows) == list(range(slots)), "every slot is a reading or a gap, once"
    assert [r.slot for r in rows] == list(range(slots)), "one time line: slot order is time order"
    times = [r.t_ms for r in rows]
    assert times == sorted(times) and len(set(times)) == len(times)


def true_register(rig: Rig, offset: float, scaling_step: Fraction) -> list[ie.RegisterSample]:
    """The meter's register at the true times of its answers: monotonic reply time on the final clock."""
    return [ie.RegisterSample(round((a["t"] + offset) * 1000), a["summation"] * scaling_step, i, 7000)
            for i, a in enumerate(rig.radio_hw.answers)]


# -- honest time ------------------------------------------------------------------------------------
@pytest.mark.parametrize("step_s", [+120.0, -120.0, +3600.0, -3600.0])
def test_a_wall_clock_step_while_running_keeps_one_time_line_and_true_intervals(tmp_path, step_s):
    rig = Rig(FakeRadio(FakeClock(wall=W0), [Node(endpoint=9, multiplier=1, divisor=1000, summation=5_000_000,
                                                   summation_step=3)]))
    rig.at(2000.3, lambda: rig.clock.step_wall(step_s))
    rig.run_for(4000.0)
    offset = rig.clock.wall() - rig.clock.monotonic()                   # the final (right) clock

    # The HAN: it saw the step, said so, and asked for the old tags to be moved by exactly the step.
    (clock_msg,) = rig.sender.of("clock")
    assert clock_msg["shift_s"] == pytest.approx(step_s)
    last = rig.sender.of("status")[-1]
    assert last["clock_steps"] == 1 and last["clock_last_step_s"] == pytest.approx(step_s)
    assert last["uptime_s"] == pytest.approx(last["sent"] - offset - rig.t0)   # monotonic, step or not

    lan = Lan(tmp_path, rig.clock.wall())
    lan.apply(rig.sender.messages)
    rows = lan.rows()
    slots = len(rig.sender.slots())
    assert_one_time_line(rows, slots)
    # Every reading sits at its true time on the final clock, so every interval is the true one.
    truth = true_register(rig, offset, Fraction(1))
    readings = [r for r in rows if r.gap is None]
    assert [(r.t_ms, r.summation) for r in readings] == [(s.t_ms, int(s.wh)) for s in truth]
    got = lan.intervals()
    assert got == list(ie.intervals(truth)) and len(got) >= 3 and not any(iv.estimated for iv in got)
    js = lan.status()
    assert js["clock"]["steps"] == 1 and js["clock"]["moves"] == 1 and js["clock"]["was_wrong"] is True
    assert js["history"]["behind"] == 0


def test_a_step_whose_clock_message_was_lost_leaves_the_spanning_interval_out(tmp_path):
    """The LAN side missed the `clock` message (it was down): what follows a step back is not stored over
    the same time, and no interval spanning the step is counted, measured or estimated."""
    rig = Rig(FakeRadio(FakeClock(wall=W0), [Node(endpoint=9, multiplier=1, divisor=1000, summation_step=3)]))
    rig.at(2000.3, lambda: rig.clock.step_wall(-120.0))
    rig.run_for(4000.0)
    lan = Lan(tmp_path, rig.clock.wall())
    lan.apply([m for m in rig.sender.messages if m["kind"] != "clock"])
    rows = lan.rows()
    times = [r.t_ms for r in rows]
    assert times == sorted(times)
    behind = lan.status()["history"]["behind"]
    assert behind == len(rig.sender.slots()) - len(rows) > 0                # counted, not stored
    step_ms = (W0 + 2000.3 - 5000.0) * 1000          # FakeClock starts at monotonic 5000
    for iv in lan.intervals():
        assert not iv.start * 1000 < step_ms < (iv.start + ie.INTERVAL_S) * 1000 + 120_000


def test_a_boot_at_1970_holds_the_tags_until_the_clock_is_set(tmp_path):
    rig = Rig(FakeRadio(FakeClock(wall=1000.0), [Node(endpoint=9, multiplier=1, divisor=1000)]))
    rig.at(600.3, lambda: rig.clock.step_wall(W0 - 1000.0))              # NTP sets it after 10 minutes
    rig.run_for(1200.0)
    statuses = rig.sender.of("status")
    before = [s for s in statuses if s["clock_plausible"] is False]
    assert before and max(s["clock_held"] for s in before) >= 80           # held, not sent at 1970
    assert statuses[-1]["clock_plausible"] is True and statuses[-1]["clock_held"] == 0
    offset = rig.clock.wall() - rig.clock.monotonic()
    assert statuses[-1]["uptime_s"] == pytest.approx(statuses[-1]["sent"] - offset - rig.t0)
    for m in rig.sender.slots():
        assert m["due"] >= PLAUSIBLE_FLOOR
    assert not rig.sender.of("clock")            # nothing was tagged on the wrong clock, nothing to move

    lan = Lan(tmp_path, rig.clock.wall())
    lan.apply(rig.sender.messages)
    slots = len(rig.sender.slots())
    assert slots >= 165                            # 1200 s of 7-s slots, less joining and discovery
    assert_one_time_line(lan.rows(), slots)
    assert [r.t_ms for r in lan.rows() if r.gap is None] == [s.t_ms for s in true_register(rig, offset, 1)]
    js = lan.status()
    assert js["clock"]["was_wrong"] is True and js["clock"]["steps"] == 1
    assert js["history"]["not_stored"] == 0
    assert js["han_uptime_s"] == pytest.approx(statuses[-1]["uptime_s"])


# -- energy that is physically possible ------------------------------------------------------------
def run_of_readings(first_slot: int, n: int, t0: float, register: int, per_slot: int = 10, seq0: int = 0):
    """n readings 7 s apart (1 Wh per count), the register rising per_slot Wh a slot (5.1 kW)."""
    return [reading(seq0 + i, first_slot + i, t0 + 7 * i, summation=register + per_slot * i, demand=5000,
                    scaling=SCALING_1_1000) for i in range(n)]


@pytest.mark.parametrize("new_register", [50_000_000, 1_000])
def test_a_meter_swapped_mid_interval_leaves_that_interval_out_and_says_meter_changed(tmp_path, new_register):
    t0 = 1_700_000_100.0                  # 100 s past a quarter hour
    before = run_of_readings(0, 300, t0, 2_000_000)                    # 35 minutes
    swap = before[-1]["time"] + 7
    after = run_of_readings(300, 300, swap, new_register, seq0=300)
    lan = Lan(tmp_path, after[-1]["time"] + 1)
    lan.apply([status(1000, t0, started=t0 - 10)] + before + after)
    assert_one_time_line(lan.rows(), 600)
    got = {iv.start: iv for iv in lan.intervals()}
    swap_q = int(swap // ie.INTERVAL_S * ie.INTERVAL_S)
    assert swap_q not in got and swap_q - ie.INTERVAL_S in got and swap_q + ie.INTERVAL_S in got
    # Everything counted is what the service drew: 10 Wh every 7 s, 1285.7 Wh a quarter hour.
    for iv in got.values():
        assert iv.wh == Fraction(10 * 900, 7) and not iv.estimated
    js = lan.status()
    assert js["register_breaks"] == 1 and js["meter_event"]["detail"].startswith("meter changed")
    assert js["power_bound_w"] == 48_000


def test_a_single_zero_reading_at_a_boundary_is_a_bad_value_not_energy(tmp_path):
    t0 = 1_700_000_100.0
    msgs = run_of_readings(0, 400, t0, 5_821_428)
    boundary = (t0 // 900 + 2) * 900
    k = next(i for i, m in enumerate(msgs) if m["time"] > boundary) - 1    # the last one before it
    msgs[k] = {**msgs[k], "summation": 0}
    lan = Lan(tmp_path, msgs[-1]["time"] + 1)
    lan.apply([status(1000, t0, started=t0 - 10)] + msgs)
    assert_one_time_line(lan.rows(), 400)
    got = lan.intervals()
    assert got and all(iv.wh == Fraction(10 * 900, 7) for iv in got)       # nothing near 5.8 MWh
    starts = {iv.start for iv in got}
    assert boundary - 900 not in starts and boundary not in starts          # both sides left out
    assert lan.status()["register_breaks"] == 2


def test_a_larger_service_than_configured_is_learned_from_the_demand(tmp_path):
    """30 kW drawn on a service configured as 10 kW: the demand seen raises the bound, no false change."""
    t0 = 1_700_000_100.0
    msgs = [reading(i, i, t0 + 7 * i, summation=1_000_000 + 58 * i, demand=30_000, scaling=SCALING_1_1000)
            for i in range(300)]
    lan = Lan(tmp_path, msgs[-1]["time"] + 1, service_max_w=10_000.0)
    lan.apply([status(1000, t0, started=t0 - 10)] + msgs)
    assert lan.status()["register_breaks"] == 0 and lan.status()["power_bound_w"] == 30_000
    assert len(lan.intervals()) == 2


def test_a_new_meter_identity_is_a_meter_change(tmp_path):
    lan = Lan(tmp_path, T0 + 100)
    other = {**status(1, T0 + 50), "meter": {"ieee": "00:0d:6f:00:0a:bc:de:99", "nwk": 0x2345, "endpoint": 1}}
    lan.apply([status(0, T0), other])
    js = lan.status()
    assert js["meter_changes"] == 1 and "00:0d:6f:00:0a:bc:de:99" in js["meter_event"]["detail"]
    assert js["meter_event"]["detail"].startswith("meter changed")


# -- a channel that loses nothing in a burst --------------------------------------------------------
class Channel:
    """The real AF_UNIX channel: a ChannelSender and a ChannelReceiver (with the store) on one socket file."""

    def __init__(self, tmp_path, lan: Lan):
        self.path = str(tmp_path / "run" / "readings.sock")
        self.lan = lan
        self.sender = ChannelSender(self.path, FakeClock(wall=W0))
        self.sent = 0
        self.taken = 0                   # by receivers stopped before this one
        self.receiver = self._receiver()

    def _receiver(self) -> ChannelReceiver:
        r = ChannelReceiver(self.path, os.getuid(), self.lan.readings, lambda _: None, self.lan.store)
        r.bind()
        return r

    def stall(self) -> None:
        """The LAN side stops reading: from now on datagrams wait in the socket's queue, or are dropped."""
        self.received(self.sent)
        self.receiver.stop()
        self.taken += self.receiver.counters()["received"]
        self.receiver = self._receiver()

    def send(self, msgs) -> None:
        common = ("v", "seq", "kind", "sent")
        for m in msgs:
            self.sent += self.sender.send(m["kind"], {k: v for k, v in m.items() if k not in common})

    def deliver(self, msgs) -> None:
        """Send while the receiver runs, at most a queue's worth before it has taken them: the HAN
        sends one message per poll, so a test that sends faster must not overrun what it measures."""
        for i in range(0, len(msgs), self.receiver.queue_len):
            self.received(self.sent)
            self.send(msgs[i:i + self.receiver.queue_len])
        self.received(self.sent)

    def received(self, n: int, timeout: float = 20.0) -> None:
        """Wait until the receivers have taken n datagrams (a condition, not a guess at a duration)."""
        deadline = time.monotonic() + timeout
        while self.taken + self.receiver.counters()["received"] < n:
            assert time.monotonic() < deadline, self.receiver.counters()
            time.sleep(0.01)

    def close(self) -> None:
        self.receiver.stop()
        self.sender.close()


def test_a_60_s_han_stall_is_one_gap_message_and_every_slot_reaches_history(tmp_path):
    rig = Rig(FakeRadio(FakeClock(wall=W0), [Node(endpoint=9, multiplier=1, divisor=1000)]))
    rig.at(300.3, lambda: rig.clock.stall(60.0))
    rig.run_for(600.0)
    runs = [m for m in rig.sender.messages if m["kind"] == "gap"]
    assert [(g["cause"], g["count"]) for g in runs] == [("late", 8)]       # one datagram for the run
    lan = Lan(tmp_path, rig.clock.wall())
    ch = Channel(tmp_path, lan)
    try:
        burst_from = rig.sender.messages.index(runs[0])
        ch.receiver.start()
        ch.deliver(rig.sender.messages[:burst_from])
        # The catch-up goes out while the LAN side is not reading: it fits in the default queue.
        ch.stall()
        ch.send(rig.sender.messages[burst_from:burst_from + ch.receiver.queue_len])
        ch.receiver.start()
        ch.deliver(rig.sender.messages[burst_from + ch.receiver.queue_len:])
        assert ch.sender.dropped == 0
    finally:
        ch.close()
    slots = len(rig.sender.slots())
    assert_one_time_line(lan.rows(), slots)
    assert sum(r.gap == "late" for r in lan.rows()) == 8


def test_a_60_s_lan_stall_writes_gap_records_for_what_the_channel_lost(tmp_path):
    rig = Rig(FakeRadio(FakeClock(wall=W0), [Node(endpoint=9, multiplier=1, divisor=1000)]), status_every_s=10.0)
    rig.run_for(400.0)
    msgs = rig.sender.messages
    lan = Lan(tmp_path, rig.clock.wall())
    ch = Channel(tmp_path, lan)
    first_t = next(m["time"] for m in msgs if m["kind"] == "reading")
    stall = [i for i, m in enumerate(msgs) if m["kind"] == "reading" and 100 <= m["time"] - first_t < 160]
    try:
        ch.receiver.start()
        ch.deliver(msgs[:stall[0]])
        # The LAN side stops reading for 60 s: what the HAN sends then fills the queue, the rest is
        # dropped (and counted by the sender). The queue is the kernel's, as the receiver measured it.
        ch.stall()
        queued = ch.receiver.queue_len
        during = msgs[stall[0]:stall[-1] + 1]
        assert len(during) > queued
        ch.send(during)
        assert ch.sender.dropped == len(during) - queued
        ch.receiver.start()
        ch.deliver(msgs[stall[-1] + 1:])
        counters = ch.receiver.counters()
    finally:
        ch.close()
    rows = lan.rows()
    assert_one_time_line(rows, len(rig.sender.slots()))
    lost = sum(r.gap == CHANNEL_LOST for r in rows)
    dropped = [m for m in during[:len(during) - queued] if m["kind"] in ("reading", "gap")]
    assert lost == len(dropped) > 0            # every reading the channel dropped is a recorded gap
    js = lan.status(counters)
    assert js["channel"]["lost_slots"] == lost and js["channel"]["queue_len"] == queued


def test_a_lan_process_stopped_for_60_s_takes_up_the_slot_count_from_the_store(tmp_path):
    t0 = 1_700_000_100.0
    msgs = [status(0, t0, started=t0 - 5)] + run_of_readings(0, 40, t0, 1_000, seq0=1)
    first = Lan(tmp_path, t0 + 400)
    first.apply(msgs[:15])
    first.store.close()
    again = Lan(tmp_path, t0 + 400)                 # a new process: nothing in memory but the store
    again.apply(msgs[15 + 9:])                       # 9 readings (63 s) were sent while it was down
    rows = again.rows()
    assert_one_time_line(rows, 40)
    assert [r.slot for r in rows if r.gap == CHANNEL_LOST] == list(range(14, 23))
    assert again.status()["channel"]["lost_slots"] == 9


# -- schema-extreme values --------------------------------------------------------------------------
def test_schema_extremes_fit_the_store_and_the_receiver_survives_anything(tmp_path):
    lan = Lan(tmp_path, T0 + 100)
    extreme = [
        {**reading(messages.INT64_MAX - 2, messages.SLOT_MAX - 3, T0, summation=messages.UINT48_MAX,
                   demand=messages.INT24_MIN + 1, scaling=SCALING_1_1000)},
        {**gap(messages.INT64_MAX - 1, messages.SLOT_MAX - 2, T0 + 7, "late"), "count": 3, "every_s": 7.0},
        {**gap(messages.INT64_MAX, 0, messages.TIME_MAX, "timeout"), "sent": messages.TIME_MAX},  # far future
    ]
    for m in extreme:
        messages.decode(messages.encode(m))                                     # valid by the schema
    for bad in ({**gap(1, 2 ** 64 - 1, T0)}, {**gap(2 ** 64 - 1, 1, T0)},
                {**gap(1, messages.SLOT_MAX, T0), "count": 2, "every_s": 7.0}):
        with pytest.raises(messages.MessageError):
            messages.encode(bad)
    lan.apply(extreme)
    rows = lan.rows()
    assert [r.slot for r in rows] == [messages.SLOT_MAX - 3 + i for i in range(4)]
    assert rows[0].seq == messages.INT64_MAX - 2 and rows[0].summation == messages.UINT48_MAX
    st = lan.status()["history"]
    assert (st["write_errors"], st["lost"], st["not_stored"]) == (0, 0, 1)


def test_an_exception_in_the_receivers_work_is_counted_and_the_receiver_goes_on(tmp_path):
    lan = Lan(tmp_path, T0 + 100)
    ch = Channel(tmp_path, lan)
    boom = [True]
    real_flush = lan.store.flush

    def flush():
        if boom[0]:
            boom[0] = False
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        real_flush()

    lan.store.flush = flush
    try:
        ch.receiver.start()
        ch.send([reading(0, 0, T0)])
        ch.received(1)
        deadline = time.monotonic() + 20
        while ch.receiver.counters()["internal_errors"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ch.send([reading(1, 1, T0 + 7)])
        ch.received(2)
        assert ch.receiver.alive()
    finally:
        ch.close()
    assert [r.slot for r in lan.rows()] == [0, 1]
