"""kill -9 of one process while the other runs: the survivor is undisturbed, and the restarted one
recovers without anyone touching the survivor.

The real console commands run on a pty and 127.0.0.1 (tests/system/test_faults_witness.FaultStack). Polling is
judged from the emulator's frame log (one poll query per slot, on the slot grid), never from the HAN
process's own account; the LAN side is judged by what it answers over HTTPS.
"""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.system.test_faults_witness import FaultStack, assert_polled_every_slot, events, iso_time

pytestmark = pytest.mark.integration

INTERVAL = 0.5


def test_lan_killed_hard_while_polling_the_han_misses_no_slot_and_fresh_data_follows_a_restart():
    with FaultStack(INTERVAL) as s:
        s.until_polling()
        han_pid = s.han.pid
        old_book = s.book()

        s.stop_lan(signal.SIGKILL)
        killed = time.time()
        # The HAN keeps polling with nobody to take its messages: six more slots, witnessed by the radio.
        s.until(lambda: sum(1 for r in s.reads() if r.t > killed) >= 6, "six poll queries after the kill")
        assert "channel: cannot deliver" in s.log("han")

        s.start_lan()            # binds the channel socket before it listens on HTTPS (main.py, step 5)
        bound = os.stat(s.gateway_dir / "run" / "readings.sock").st_mtime
        s.json("/api/v1/whoami")   # a new process verifies the password once (scrypt, ~0.2-1 s)
        ready = time.time()
        fresh = s.until(lambda: (c := s.current())["status"] == "ok" and c["time"]
                        and iso_time(c["time"]) > bound and c, "a reading taken after the restart")
        seen = time.time()

        # The LAN side keeps its history across the restart (the store), and takes up the count of slots
        # from it: every slot is there, one run of them as "channel-lost" gaps: those the HAN sent while
        # nobody listened (and any the killed process had received but not yet stored). The first after
        # that run is the first slot the HAN sent after the bind: the HAN never waited for the LAN.
        book = s.book()
        assert sorted(book) == list(range(max(book) + 1)), "every slot is a reading or a gap"
        hole = [k for k, e in sorted(book.items()) if e["kind"] == "gap"]
        assert hole and hole == list(range(hole[0], hole[-1] + 1)), hole
        assert {book[k]["cause"] for k in hole} == {"channel-lost"}
        first = hole[-1] + 1
        start = _start(s.reads())
        due_first = start + first * INTERVAL
        assert due_first < bound + INTERVAL + 0.05, (first, due_first - bound)
        assert book[first]["kind"] == "reading" and book[first]["time"] - bound < INTERVAL + 0.05
        # ... and HTTPS serves it as soon as both the logged-in client and that reading are there.
        assert seen - max(ready, book[first]["time"]) < 0.5, (seen - ready, seen - book[first]["time"])
        assert iso_time(fresh["time"]) >= book[first]["time"]

        # Every slot, before, during and after the outage, was polled on time by the same HAN process.
        s.until(lambda: sum(1 for r in s.reads() if r.t > seen) >= 3, "three more poll queries")
        slots = assert_polled_every_slot(s.reads(), INTERVAL, start)
        assert slots[0] == 0 and s.han.pid == han_pid and s.han.poll() is None
        assert "missed, the loop was late" not in s.log("han")
        # The HAN counted what it could not deliver, in its log and in the status it reports.
        s.until(lambda: s.status()["channel_dropped"], "a status report from the HAN after the restart")
        said = re.findall(r"delivering again after (\d+) dropped", s.log("han"))
        assert len(said) == 1 and s.status()["channel_dropped"] == int(said[0])
        # A query's message goes out by the time its reply or its timeout has come.
        outage = [r for r in s.reads() if killed < r.t < bound - s.response_timeout_s - 0.02]
        assert int(said[0]) >= len(outage) >= 5       # at least one reading per slot of the outage
        # Every slot the LAN side received is a reading: the meter was read every time.
        assert {e["kind"] for e in s.book().values() if e.get("cause") != "channel-lost"} == {"reading"}
        assert max(old_book) < hole[0]


def test_han_killed_hard_the_lan_keeps_answering_marks_stale_and_silent_then_recovers():
    stale_after = 1.0        # silent after twice that (readings.Readings)
    with FaultStack(INTERVAL, lan={"stale_after_s": stale_after}) as s:
        s.until_polling()
        last_before = s.current()
        s.stop_han(signal.SIGKILL)
        killed = time.time()

        seen: dict[str, float] = {}
        worst = 0.0
        while not {"stale", "silent"} <= seen.keys():
            assert time.time() - killed < 20, f"saw only {sorted(seen)} within 20 s"
            began = time.monotonic()
            current, status = s.current(), s.status()
            code, _, body = s.get(_interval_block(s))
            worst = max(worst, time.monotonic() - began)
            assert code == 200 and b"<IntervalReading>" in body.replace(b"espi:", b"")
            if current["status"] == "stale":
                seen.setdefault("stale", time.time())
                assert current["age_s"] >= stale_after        # shown to the ms
            if status["han_silent"]:
                seen.setdefault("silent", time.time())
                assert status["last_message_age_s"] >= 2 * stale_after
            time.sleep(0.05)
        assert worst < 1.0, f"a request took {worst:.3f} s while the HAN was dead"
        # The last values stay, marked, never invented: the last reading taken before the kill.
        last = s.current()
        assert last["demand_w"] is not None
        assert iso_time(last_before["time"]) <= iso_time(last["time"]) < killed
        assert seen["stale"] - iso_time(last["time"]) >= stale_after
        assert seen["silent"] - iso_time(last["time"]) >= 2 * stale_after - 0.05

        # The emulator saw its host go away; a new HAN process (systemd would start it) takes over.
        s.until(lambda: any(not f["open"] for f in events(s.all_frames(), "link")), "the port closed")
        restarted = time.time()
        s.start_han()
        s.until(lambda: s.current()["status"] == "ok" and not s.status()["han_silent"]
                and s.status()["state"] == "polling", "the LAN side to show live data again")
        recovered = time.time() - restarted
        status = s.status()
        assert status["channel"]["han_restarts"] == 1
        assert status["channel"]["rejected"] == 0 and iso_time(status["han_started"]) >= restarted - 1
        assert recovered < 10, recovered
        assert s.lan.poll() is None
        # The new HAN process polls on its own new schedule, slot by slot.
        s.until(lambda: sum(1 for r in s.reads() if r.t > restarted) >= 4, "four poll queries")
        assert_polled_every_slot(s.reads(), INTERVAL, since=restarted)


# ---- helpers ---------------------------------------------------------------------------------------
def _start(reads) -> float:
    """Slot 0's due time: the schedule starts with slot 0 due at once, so its query went out first."""
    return reads[0].t


def _interval_block(s) -> str:
    return (f"/espi/1_1/resource/Subscription/{s.subscription}/UsagePoint/1/MeterReading/1/"
            "IntervalBlock")
