"""Faults on the radio side, injected by the emulator, judged end to end through the LAN side.

Emulator + `openseg-han` + `openseg-lan` run as their console commands on a pty and 127.0.0.1. For every
poll query the emulator's frame log says what happened to it (answered when, dropped, corrupted, refused
by the radio because the meter was off, or answered only after a stall); what the LAN side serves must
match it slot by slot: a reading, or a gap with the right cause at the right due time, and the HAN's
loss counters must equal the losses in that record exactly (test_faults_witness.account).

tests/system/test_han_integration.py already checks the same faults on the raw channel; these runs add what a
user sees: the LAN side's history and status, exact counts at the issue's rates, due times on the
slot grid, and a late answer that arrives while the next query waits.
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.system.test_faults_witness import (FaultStack, account, assert_every_slot_once,
                                              assert_polled_every_slot, events, poll_reads, schedule_start,
                                              slots_on_grid)

pytestmark = pytest.mark.integration


def test_dropped_and_corrupted_answers_are_counted_exactly_and_their_gaps_sit_on_their_slots():
    interval = 0.25
    # Seeded: the k-th poll answer's fate is fixed, so every run injects the same faults.
    with FaultStack(interval, emulator_args=["--drop-rate", "0.3", "--corrupt-rate", "0.1",
                                             "--seed", "11"]) as s:
        s.until(lambda: s.status()["queries_total"] >= 60, "sixty poll queries", timeout=60)
        status = s.status()
        book = s.book()
        reads = s.reads()
        start = schedule_start(book, interval)
        slots = assert_polled_every_slot(reads, interval, start)
        assert slots[0] == 0, "the first query is slot 0"
        assert_every_slot_once(book, 0, max(book))
        pairs = [(k, r) for k, r in zip(slots, reads) if k in book]
        counted = account(pairs, book, start, interval, s.response_timeout_s, status)

        injected = [r for _, r in pairs[:len(counted)] if r.fault]
        corrupt = [r for r in injected if r.fault == "corrupt"]
        assert status["queries_lost"] == len(injected) == status["lost_by_cause"]["timeout"]
        assert len(injected) >= 15 and len(corrupt) >= 3 and any(r.garbage for r in corrupt), \
            "the seed no longer injects both kinds of fault"
        # Each corrupted answer is one bad frame; line noise before it may add one truncated frame.
        assert len(corrupt) <= status["frames_bad"] <= len(corrupt) + sum(r.garbage for r in corrupt)
        # Each gap is due at its own slot's time, and that slot's query left on time.
        for k, r in pairs:
            if book[k]["kind"] == "gap":
                assert book[k]["cause"] == "timeout" and 0 <= r.t - book[k]["due"] < interval / 2, (k, r)
        assert any(book[k]["kind"] == "reading" for k in range(max(book) - 9, max(book) + 1))
        assert s.han.poll() is None and not [f for f in s.all_frames() if f.get("class") == "not-a-read"]


def test_answers_later_than_the_timeout_are_losses_and_a_vanished_port_leaves_not_polling_gaps():
    interval, timeout = 0.5, 0.2
    with FaultStack(interval, timeout=timeout) as s:
        s.until_polling(3)
        origin = s.reads()[0].t                       # slot 0 was queried at once

        # Stall the emulated radio and meter across two slots: those queries wait in the UART and their
        # answers come out 0.3 s and 0.8 s after the queries' deadlines, the older one while the next
        # query after the stall is already waiting for its own answer.
        n = round((time.time() - origin) / interval) + 1
        s.until(lambda: time.time() >= origin + n * interval + 0.3, "the moment after a slot's answer")
        s.emulator.send_signal(signal.SIGSTOP)
        stopped = time.time()
        s.until(lambda: time.time() >= origin + (n + 2) * interval + 0.3, "two slots of stall")
        s.emulator.send_signal(signal.SIGCONT)
        resumed = time.time()
        s.until(lambda: len([e for k, e in s.book().items() if e["kind"] == "reading"
                             and e["time"] > resumed]) >= 3, "readings after the stall")

        # The serial device disappears (the emulator exits and its pty goes) and comes back.
        s.emulator.send_signal(signal.SIGTERM)
        assert s.emulator.wait(timeout=10) == 0
        s.emulator = None
        gone = time.time()
        s.until(lambda: s.status()["state"] == "radio-down", "radio-down")
        s.until(lambda: sum(1 for e in s.book().values() if e["kind"] == "gap" and e["cause"] == "not-polling"
                            and e["due"] > gone) >= 3, "slots passing while the port is gone")
        s.start_emulator()                            # the same link; the frame log is appended to
        back = time.time()
        s.until(lambda: s.status()["state"] == "polling" and len(
            [e for e in s.book().values() if e["kind"] == "reading" and e["time"] > back]) >= 3,
            "polling on the port that came back")

        status, book, reads = s.status(), s.book(), s.reads()
        start = schedule_start(book, interval)
        assert_every_slot_once(book, 0, max(book))
        before, after = [r for r in reads if r.run == 0], [r for r in reads if r.run == 1]
        # Before the port went: the i-th query is slot i. All but the stalled ones reached the radio on
        # time; the stalled ones are exactly the slots due while it was stopped.
        # (A query due within 50 ms of either signal may fall on either side of it.)
        stalled = [i for i, r in enumerate(before) if r.t - (start + i * interval) > 0.1]
        surely = {k for k in range(len(before)) if stopped + 0.05 < start + k * interval < resumed - 0.05}
        maybe = {k for k in range(len(before)) if stopped - 0.05 < start + k * interval < resumed + 0.05}
        assert surely and surely <= set(stalled) <= maybe, (stalled, surely, maybe)
        on_time = [r for i, r in enumerate(before) if i not in stalled]
        assert slots_on_grid([r.t for r in on_time], interval, start) == [i for i in range(len(before))
                                                                          if i not in stalled]
        for i in stalled:                             # answered, but only after the deadline
            assert before[i].answered - (start + i * interval) > timeout + 0.05, before[i]
        # After the port came back, slot by slot on the same grid.
        resumed_slots = assert_polled_every_slot(after, interval, start)
        pairs = list(enumerate(before)) + list(zip(resumed_slots, after))
        pairs = [(k, r) for k, r in pairs if k in book]
        counted = account(pairs, book, start, interval, timeout, status, cut_short=frozenset({len(before) - 1}))
        assert counted.count("timeout") >= len(stalled) and status["queries_lost"] == counted.count("timeout")
        # The outage is "not-polling" gaps, one per slot, and none of them is counted as a lost query.
        outage = range(len(before), resumed_slots[0])
        assert len(outage) >= 3 and all(book[k]["cause"] == "not-polling" for k in outage)
        assert s.han.poll() is None


def test_meter_power_off_for_a_while_and_a_radio_reset():
    # The radio reports an unpowered meter (delivery 0x21) 0.4 s after a query: inside this timeout,
    # so those queries are "tx-failed", as a real XBee SE would report them.
    interval, timeout = 0.625, 0.5
    with FaultStack(interval, timeout=timeout) as s:
        s.until_polling(3)
        off = s.signal_and_see(signal.SIGUSR2, "meter-power")
        s.until(lambda: s.status()["state"] == "meter-unreachable", "meter-unreachable")
        s.until(lambda: sum(1 for r in s.reads() if r.t > off) >= 5, "five queries to the dark meter")
        on = s.signal_and_see(signal.SIGUSR2, "meter-power")
        s.until(lambda: s.status()["state"] == "polling" and sum(
            1 for e in s.book().values() if e["kind"] == "reading" and e["time"] > on) >= 3,
            "readings after the meter came back")
        reset = s.signal_and_see(signal.SIGUSR1, "reset")
        s.until(lambda: s.status()["state"] == "polling" and sum(
            1 for e in s.book().values() if e["kind"] == "reading" and e["time"] > reset) >= 3,
            "readings after the radio reset")

        status, book, frames = s.status(), s.book(), s.all_frames()
        reads = poll_reads(frames)
        start = schedule_start(book, interval)
        assert_every_slot_once(book, 0, max(book))
        before = [r for r in reads if r.t < reset]
        after = [r for r in reads if r.t > reset]
        slots = (assert_polled_every_slot(before, interval, start)
                 + assert_polled_every_slot(after, interval, start))
        assert slots[0] == 0
        pairs = [(k, r) for k, r in zip(slots, before + after) if k in book]
        counted = account(pairs, book, start, interval, timeout, status,
                          cut_short=frozenset({slots[len(before) - 1]}))
        # Exactly the queries the radio could not deliver to the dark meter were lost, as tx-failed.
        refused = [r for _, r in pairs if r.delivery not in (None, 0)]
        assert refused and all(off < r.t < on for r in refused)
        assert all(r.delivery == 0x21 for r in refused)
        assert status["lost_by_cause"]["tx-failed"] == len(refused) >= 5
        assert status["queries_lost"] == len(refused) == counted.count("tx-failed")
        # The reset's slots are "not-polling" gaps; the scaling was read again after the reset only.
        gaps_after = [k for k in range(slots[len(before) - 1] + 1, slots[len(before)])]
        assert gaps_after and all(book[k]["cause"] == "not-polling" for k in gaps_after)
        scaling = [f for f in events(frames, "rx") if f.get("class") == "zcl-read"
                   and f["detail"]["attrs"] != ["0x0000", "0x0001", "0x0400"]]
        assert len(scaling) == 2 and scaling[1]["t"] > reset
        assert s.han.poll() is None
