"""The witness the fault and abuse tests trust, and proof that it can see a missed slot.

Whether the HAN process polled every slot is judged from the emulator's frame log: the emulated radio's
own record of every frame the host sent it (`rx`, with the time it arrived), of every answer the meter
gave (`answer`, with the time its last byte left the UART) and of every fault it injected (`fault`).
None of that is the HAN process's opinion of itself. What the LAN side serves (/api/v1/history: one
reading or one gap per slot, each gap with its due time and cause; /api/v1/status: the HAN's counters)
is then checked against that record.

The helpers here are shared by tests/system/test_faults_*.py and tests/system/test_abuse_*.py; the tests in this file
are their positive controls: on made-up frame logs and histories each check must fail when a slot is
missing, late, doubled or mis-attributed, so a check that stopped seeing anything could not pass.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from openseg_emulator.devstack import Stack
from openseg.shared_schema import messages

DEADLINE = 30.0         # generous: a loaded CI machine is slow; a passing run is far quicker
POLL_ATTRS = ["0x0000", "0x0001", "0x0400"]   # Summation Delivered, Received, InstantaneousDemand: a poll
LOST = set(messages.LOST_CAUSES)


# ---- the frame log ---------------------------------------------------------------------------------
@dataclass
class PollRead:
    """One poll query as the emulated radio received it, and what became of its answer."""
    t: float                        # wall time the emulator received the query
    zcl_seq: int
    run: int                        # which emulator process (the log is appended across restarts)
    frame_id: int = 0               # the XBee frame id, which its TX status carries back
    answered: float | None = None   # wall time the meter's answer had left the UART completely
    fault: str | None = None        # "drop" / "corrupt": the answer was swallowed or damaged
    garbage: bool = False           # line noise was put in front of a corrupted answer
    delivery: int | None = None     # the radio's TX status delivery code (0 = delivered)
    delivery_t: float | None = None
    attrs: dict | None = None       # the raw values the answer carried ("0x0000": summation, ...)


def read_frames(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass            # the line the emulator is writing right now
    return out


def poll_reads(frames: list[dict]) -> list[PollRead]:
    """Every poll read in arrival order, each matched with its answer or fault. Answers are matched to
    the oldest unanswered read with the same ZCL sequence number of the same emulator run, so the
    8-bit sequence number may wrap and repeat."""
    reads: list[PollRead] = []
    pending: dict[int, deque[PollRead]] = defaultdict(deque)
    awaiting_status: dict[int, deque[PollRead]] = defaultdict(deque)
    run = -1
    for f in frames:
        event = f.get("event")
        if event == "start":
            run += 1
            pending.clear()
            awaiting_status.clear()
        elif event == "rx" and f.get("class") == "zcl-read" and f.get("detail", {}).get("attrs") == POLL_ATTRS:
            read = PollRead(t=f["t"], zcl_seq=f["detail"]["zcl_seq"], run=run,
                            frame_id=f["detail"]["frame_id"])
            reads.append(read)
            pending[read.zcl_seq].append(read)
            awaiting_status[read.frame_id].append(read)
        elif event == "tx" and f.get("type") == "0x8b":
            data = bytes.fromhex(f["hex"])          # 0x8B, frame id, dest16, retries, delivery, discovery
            if awaiting_status.get(data[1]):
                read = awaiting_status[data[1]].popleft()
                read.delivery, read.delivery_t = data[5], f["t"]
        elif event in ("answer", "fault") and pending.get(f.get("zcl_seq")):
            read = pending[f["zcl_seq"]].popleft()
            if event == "answer":
                read.answered, read.attrs = f["t"], f.get("attrs")
            else:
                read.fault, read.garbage = f["fault"], bool(f.get("garbage"))
    return reads


def events(frames: list[dict], name: str) -> list[dict]:
    return [f for f in frames if f.get("event") == name]


def slots_on_grid(times: list[float], interval: float, start: float) -> list[int]:
    """The slot each time belongs to on the grid start + k * interval (nearest grid point)."""
    return [round((t - start) / interval) for t in times]


def missed_slots(slots: list[int]) -> list[int]:
    """Slots between the first and the last that have no query, plus any slot queried twice (a
    query more than half an interval off its due time lands on a neighbour's grid point)."""
    if not slots:
        return []
    seen = set(slots)
    doubled = sorted({k for k in slots if slots.count(k) > 1})
    return sorted(set(range(min(slots), max(slots) + 1)) - seen) + doubled


def assert_polled_every_slot(reads: list[PollRead], interval: float, start: float | None = None,
                             since: float | None = None, until: float | None = None) -> list[int]:
    """The HAN sent one poll query per slot from the first to the last read in [since, until]: the
    independent proof that it missed no slot. `start` is the schedule's slot-0 due time when known
    (from a gap the LAN holds); otherwise the first read's time. Returns the slots."""
    window = [r for r in reads if (since is None or r.t >= since) and (until is None or r.t <= until)]
    assert len(window) >= 2, f"only {len(window)} poll reads in the window"
    origin = window[0].t if start is None else start
    slots = slots_on_grid([r.t for r in window], interval, origin)
    missing = missed_slots(slots)
    offsets = [round(r.t - (origin + k * interval), 4) for r, k in zip(window, slots)]
    assert not missing, f"slots without a poll query (or with two): {missing}; offsets {offsets}"
    assert slots == sorted(slots)
    return slots


# ---- what the LAN side serves ----------------------------------------------------------------------
def iso_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def ledger(history: dict) -> dict[int, dict]:
    """/api/v1/history as slot -> {"kind": "reading", "time": t} or {"kind": "gap", "due", "cause"};
    a slot reported twice is an error."""
    out: dict[int, dict] = {}
    for p in history["points"]:
        assert p["slot"] not in out, f"slot {p['slot']} reported twice"
        out[p["slot"]] = {"kind": "reading", "time": iso_time(p["time"])}
    for g in history["gaps"]:
        assert g["slot"] not in out, f"slot {g['slot']} reported twice"
        out[g["slot"]] = {"kind": "gap", "due": iso_time(g["due"]), "cause": g["cause"]}
    return out


def schedule_start(book: dict[int, dict], interval: float) -> float:
    """Slot 0's due time, from the due times the gaps carry; they must all sit on one grid (the
    LAN shows them to the millisecond)."""
    starts = [e["due"] - k * interval for k, e in book.items() if e["kind"] == "gap"]
    assert starts, "no gap to read the schedule from"
    assert max(starts) - min(starts) <= 0.002, f"gap due times are not on one grid: {sorted(starts)[:5]}.."
    return sum(starts) / len(starts)


def assert_every_slot_once(book: dict[int, dict], first: int, last: int) -> None:
    missing = [k for k in range(first, last + 1) if k not in book]
    assert not missing, f"slots with neither a reading nor a gap: {missing}"


# ---- per-slot accounting ---------------------------------------------------------------------------
IN_TIME_MARGIN = 0.02    # a frame the emulator finished writing this long before the deadline was read
HAN_SLACK = 0.05         # the HAN sends a query at its due time, give or take its wake-up latency


def acceptable(read: PollRead, due: float, timeout: float) -> set[str]:
    """What the HAN may have made of one poll query, from the emulator's record alone: a reading, or
    the cause of the loss. The HAN's deadline is its send time (the due time, at most HAN_SLACK later)
    plus the timeout; a frame that decided the query within that uncertainty may go either way."""
    def side(t: float) -> str:
        if t < due + timeout - IN_TIME_MARGIN:
            return "in time"
        return "late" if t > due + timeout + HAN_SLACK else "either"

    if read.delivery not in (None, 0):            # the radio reported that the meter did not take it
        verdict = {"in time": {"tx-failed"}, "late": {"timeout"}, "either": {"tx-failed", "timeout"}}
        return verdict[side(read.delivery_t)]
    if read.answered is not None:
        verdict = {"in time": {"reading"}, "late": {"timeout"}, "either": {"reading", "timeout"}}
        return verdict[side(read.answered)]
    return {"timeout"}                             # dropped, corrupted, or never answered


def account(pairs: list[tuple[int, PollRead]], book: dict[int, dict], start: float, interval: float,
            timeout: float, status: dict, cut_short: frozenset[int] = frozenset()) -> list[str]:
    """Check slot by slot that what the LAN holds is what the emulator's record allows, and that the
    HAN's loss counters (as of its last status report) equal the losses the record shows, exactly.
    `pairs` are (slot, read) in the order the queries went out; a slot in `cut_short` had its query
    interrupted by a radio reset or a lost port, and must then be a "not-polling" gap, not a loss."""
    queried = {k for k, _ in pairs}
    for k, e in book.items():
        if k not in queried:
            assert e["kind"] == "gap" and e["cause"] == "not-polling", f"slot {k} had no query: {e}"
    outcomes = []
    for k, read in pairs:
        e = book[k]
        got = "reading" if e["kind"] == "reading" else e["cause"]
        if k in cut_short:
            assert got in ("not-polling", *acceptable(read, start + k * interval, timeout)), (k, got)
            if got == "not-polling":
                continue
        due = start + k * interval
        allowed = acceptable(read, due, timeout)
        assert got in allowed, f"slot {k}: the LAN holds {got}, the emulator's record allows {allowed}: {read}"
        if got == "reading":     # time-tagged when the reply arrived, within the query's deadline
            assert due - 0.001 <= e["time"] <= due + timeout + HAN_SLACK, (k, e["time"] - due)   # ms shown
        outcomes.append(got)
    counted = outcomes[:status["queries_total"]]
    assert len(counted) == status["queries_total"], (len(outcomes), status["queries_total"])
    lost = [o for o in counted if o != "reading"]
    assert status["queries_lost"] == len(lost), (status["queries_lost"], len(lost))
    assert status["lost_by_cause"] == {c: lost.count(c) for c in messages.LOST_CAUSES}
    return counted


# ---- a stack for fault tests -----------------------------------------------------------------------
class FaultStack(Stack):
    """devstack.Stack in a short /tmp folder (AF_UNIX paths hold 107 bytes) with the knobs fault tests
    need: a fast poll, a seeded emulator, frequent HAN status reports, and readers for what happened."""

    def __init__(self, interval: float, *, timeout: float | None = None, emulator_args=(),
                 han: dict | None = None, lan: dict | None = None):
        self.tmp = Path(tempfile.mkdtemp(prefix="of-", dir="/tmp"))
        super().__init__(self.tmp, poll_interval_s=interval, response_timeout_s=timeout,
                         emulator_args=["--seed", "1", "--join-delay-s", "0.2", *emulator_args],
                         han_overrides={"status_every_s": 0.5, **(han or {})}, lan_overrides=lan or {})
        self.interval = interval

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- observations --
    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def all_frames(self) -> list[dict]:
        return read_frames(self.frame_log)

    def reads(self) -> list[PollRead]:
        return poll_reads(self.all_frames())

    def json(self, path: str, timeout: float = 10.0) -> dict:
        status, _, body = self.get(path, timeout=timeout)
        assert status == 200, (path, status, body[:200])
        return json.loads(body)

    def status(self) -> dict:
        return self.json("/api/v1/status")

    def current(self) -> dict:
        return self.json("/api/v1/current")

    def book(self) -> dict[int, dict]:
        return ledger(self.json("/api/v1/history?minutes=60"))

    def until(self, condition: Callable[[], object], what: str, timeout: float = DEADLINE):
        """Wait for a condition; fail with the processes' log tails if it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            for name in ("emulator", "han", "lan"):
                proc = getattr(self, name)
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"{name} exited ({proc.returncode}) while waiting for {what}\n"
                                f"{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n--- han\n"
                            f"{self.log('han')[-2000:]}\n--- lan\n{self.log('lan')[-2000:]}")
            time.sleep(0.02)

    def until_polling(self, readings: int = 3) -> None:
        self.until(lambda: self.current().get("status") == "ok"
                   and sum(1 for e in self.book().values() if e["kind"] == "reading") >= readings,
                   f"{readings} readings served by the LAN side")

    def signal_and_see(self, sig: int, event: str) -> float:
        """Signal the emulator and wait until its frame log shows it acted; returns when it did."""
        before = len(events(self.all_frames(), event))
        self.signal_emulator(sig)
        self.until(lambda: len(events(self.all_frames(), event)) > before, f"the emulator's {event!r}")
        return events(self.all_frames(), event)[-1]["t"]


def no_server_errors(log: str) -> list[str]:
    """Lines of a LAN log that tell of a 500 or an unhandled exception."""
    return [line for line in log.splitlines()
            if "internal error" in line or "Traceback" in line or '" 500 ' in line]


# ---- positive controls: each check fails on the fault it is there to see ----------------------------
def _rx(t: float, seq: int, frame_id: int = 1) -> dict:
    return {"t": t, "event": "rx", "class": "zcl-read",
            "detail": {"zcl_seq": seq, "frame_id": frame_id, "attrs": POLL_ATTRS}}


def test_a_missing_slot_is_seen():
    reads = poll_reads([{"event": "start"}] + [_rx(100 + k * 0.5 + 0.003, k) for k in range(10) if k != 6])
    with pytest.raises(AssertionError, match=r"\[6\]"):
        assert_polled_every_slot(reads, 0.5)
    complete = poll_reads([{"event": "start"}] + [_rx(100 + k * 0.5 + 0.003, k) for k in range(10)])
    assert assert_polled_every_slot(complete, 0.5) == list(range(10))


def test_a_query_more_than_half_an_interval_late_is_seen():
    times = [100 + k * 0.5 for k in range(8)]
    times[4] += 0.3                      # lands on slot 5's grid point, slot 4 has none
    reads = poll_reads([{"event": "start"}] + [_rx(t, k) for k, t in enumerate(times)])
    with pytest.raises(AssertionError, match="slots without a poll query"):
        assert_polled_every_slot(reads, 0.5)
    times[4] -= 0.1                      # 0.2 s late: still its own slot
    reads = poll_reads([{"event": "start"}] + [_rx(t, k) for k, t in enumerate(times)])
    assert assert_polled_every_slot(reads, 0.5) == list(range(8))


def test_answers_and_faults_find_their_query_across_wraps_and_restarts():
    frames = [{"event": "start"}]
    for k in range(300):                 # the 8-bit ZCL sequence wraps after 256 queries
        frames.append(_rx(float(k), k & 0xFF))
        frames.append({"t": k + 0.01, "event": "fault", "fault": "drop", "zcl_seq": k & 0xFF} if k % 7 == 0
                      else {"t": k + 0.01, "event": "answer", "zcl_seq": k & 0xFF})
    frames += [{"event": "start"}, _rx(400.0, 1), {"t": 400.5, "event": "answer", "zcl_seq": 1},
               _rx(401.0, 2)]            # a new emulator run numbers from 1 again; read 2 unanswered
    reads = poll_reads(frames)
    assert len(reads) == 302
    assert all((r.fault == "drop") == (i % 7 == 0) for i, r in enumerate(reads[:300]))
    assert all((r.answered is None) == (i % 7 == 0) for i, r in enumerate(reads[:300]))
    assert (reads[300].run, reads[300].answered, reads[301].answered) == (1, 400.5, None)


def test_ledger_refuses_a_doubled_slot_and_the_grid_check_an_off_grid_gap():
    history = {"points": [{"slot": 0, "time": "2026-01-01T00:00:00.010Z"}],
               "gaps": [{"slot": 1, "due": "2026-01-01T00:00:00.500Z", "cause": "timeout"},
                        {"slot": 2, "due": "2026-01-01T00:00:01.000Z", "cause": "timeout"}]}
    book = ledger(history)
    assert schedule_start(book, 0.5) == pytest.approx(iso_time("2026-01-01T00:00:00.000Z"))
    assert_every_slot_once(book, 0, 2)
    with pytest.raises(AssertionError, match="no reading nor a gap|neither"):
        assert_every_slot_once(book, 0, 3)
    with pytest.raises(AssertionError, match="reported twice"):
        ledger({**history, "gaps": history["gaps"] + [{"slot": 0, "due": "2026-01-01T00:00:00.000Z",
                                                       "cause": "late"}]})
    off = ledger({**history, "gaps": [{"slot": 1, "due": "2026-01-01T00:00:00.600Z", "cause": "timeout"},
                                      {"slot": 2, "due": "2026-01-01T00:00:01.000Z", "cause": "timeout"}]})
    with pytest.raises(AssertionError, match="not on one grid"):
        schedule_start(off, 0.5)


def test_server_error_lines_are_found():
    log = ('2026 INFO openseg.lan.access: 127.0.0.1 u "GET /x" 404 5 0.1ms\n'
           '2026 INFO openseg.lan.access: 127.0.0.1 u "GET /y" 500 5 0.1ms\n'
           '2026 ERROR openseg.lan.http: internal error on GET /z | Traceback ...\n')
    assert len(no_server_errors(log)) == 2


def test_accounting_sees_a_wrong_verdict_and_a_miscount():
    start, interval, timeout = 1000.0, 0.5, 0.2
    reads = [PollRead(t=start + k * interval + 0.002, zcl_seq=k, run=0) for k in range(6)]
    for k in (0, 2, 3, 5):
        reads[k].answered = reads[k].t + 0.01
    reads[1].fault = "drop"
    reads[4].answered = reads[4].t + 0.5                    # far too late
    pairs = list(enumerate(reads))
    book = {k: {"kind": "reading", "time": reads[k].answered} for k in (0, 2, 3, 5)}
    book.update({k: {"kind": "gap", "due": start + k * interval, "cause": "timeout"} for k in (1, 4)})
    book[6] = {"kind": "gap", "due": start + 6 * interval, "cause": "not-polling"}
    status = {"queries_total": 5, "queries_lost": 2,
              "lost_by_cause": {"timeout": 2, "tx-failed": 0, "zcl-status": 0, "malformed": 0}}
    assert account(pairs, book, start, interval, timeout, status) == [
        "reading", "timeout", "reading", "reading", "timeout"]
    with pytest.raises(AssertionError, match="slot 1"):       # a dropped answer served as a reading
        account(pairs, {**book, 1: {"kind": "reading", "time": 0.0}}, start, interval, timeout, status)
    with pytest.raises(AssertionError):                        # one loss too many in the counters
        account(pairs, book, start, interval, timeout, {**status, "queries_lost": 3})
    with pytest.raises(AssertionError, match="had no query"):  # a reading where nothing was asked
        account(pairs, {**book, 6: {"kind": "reading", "time": 0.0}}, start, interval, timeout, status)
    reads[3].delivery, reads[3].delivery_t, reads[3].answered = 0x21, reads[3].t + 0.1, None
    assert acceptable(reads[3], start + 3 * interval, timeout) == {"tx-failed"}
    reads[3].delivery_t = reads[3].t + 0.21                    # within the HAN's wake-up slack
    assert acceptable(reads[3], start + 3 * interval, timeout) == {"tx-failed", "timeout"}
