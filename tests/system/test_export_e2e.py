"""Energy exported end to end: emulated meter -> real serial path -> openseg-han -> channel -> openseg-lan
-> HTTPS JSON, judged against the emulator's own record of every raw value it answered (frame log).

The load is switched import -> export -> import, so both registers move in turn; every point the LAN
serves must carry exactly the raw values of the answer to its slot's query, and neither total may ever
go down. A meter without export measurement (--no-export) answers 0x0001 UNSUPPORTED_ATTRIBUTE: then
no slot is lost and `received_wh` is null everywhere.
"""
from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.system.test_faults_witness import FaultStack, events

pytestmark = pytest.mark.integration

INTERVAL = 0.2


def served(s: FaultStack) -> list[tuple]:
    """(summation_wh, received_wh, demand_w) of every reading the chart JSON holds, in slot order."""
    status, _, body = s.get("/api/v1/history?minutes=60")
    assert status == 200
    points = json.loads(body, parse_float=Decimal)["points"]
    return [(p["summation_wh"], p["received_wh"], p["demand_w"]) for p in sorted(points, key=lambda p: p["slot"])]


def answered(s: FaultStack) -> list[tuple]:
    """The same from the emulator's record: the raw values of each poll answer (divisor 1000, multiplier
    1: one count is 1 Wh or 1 W, so raw value == the JSON value), None where the meter did not serve one."""
    return [(a["attrs"]["0x0000"], a["attrs"].get("0x0001"), a["attrs"]["0x0400"])
            for a in events(s.all_frames(), "answer")]


def phase(s: FaultStack, watts: int, polls: int) -> int:
    """Set the load and wait until `polls` readings taken under it are served; returns how many
    points were served before the change (the first of the new phase may still be the old load)."""
    before = len(served(s))
    s.set_load_w(watts)
    s.until(lambda: sum(1 for _, _, w in served(s)[before:] if w == watts) >= polls,
            f"{polls} readings at {watts} W")
    return before


def check_against_the_record(s: FaultStack) -> list[tuple]:
    points, record = served(s), answered(s)
    # No fault injected: every poll query was answered and every answer became the slot's reading.
    assert len(record) >= len(points) >= 10 and points == record[:len(points)]
    for a, b in zip(points, points[1:]):         # import and export totals never decrease
        assert b[0] >= a[0] and (a[1] is None) == (b[1] is None) and (a[1] is None or b[1] >= a[1])
    return points


def test_import_and_export_registers_reach_the_json_exactly():
    stack = FaultStack(INTERVAL, emulator_args=("--start-received-kwh", "42.5", "--start-kwh", "100"))
    stack.load_w = 2000         # a load file, so the load can be switched
    with stack as s:
        s.until_polling()
        export_from = phase(s, -36_000, 8)       # 10 Wh a second into the grid
        import_from = phase(s, 7200, 8)          # 2 Wh a second from the grid
        points = check_against_the_record(s)
        imported_phase = points[:export_from]
        export_phase = [p for p in points[export_from:import_from] if p[2] == -36_000]
        later = [p for p in points[import_from:] if p[2] == 7200]
        # while importing, only the delivered register moves; while exporting, only the received one
        assert export_phase[0][1] >= 42_500 and export_phase[-1][1] - export_phase[0][1] >= 10
        assert export_phase[-1][0] == export_phase[0][0]
        assert imported_phase[0][1] == imported_phase[-1][1] == 42_500
        assert later[-1][0] > later[0][0] and later[-1][1] == later[0][1]
        # /api/v1/current: the same values as the emulator answered for the latest slot
        status, current = s.get_json("/api/v1/current")
        assert status == 200 and current["status"] == "ok"
        latest = (Decimal(str(current["summation_wh"])), Decimal(str(current["received_wh"])),
                  Decimal(str(current["demand_w"])))
        assert latest in answered(s)[-3:] and latest[1] >= export_phase[-1][1]
        assert s.status()["queries_lost"] == 0


def test_a_meter_without_export_gives_readings_with_received_null():
    with FaultStack(INTERVAL, emulator_args=("--no-export",)) as s:
        s.until_polling(readings=10)
        points = check_against_the_record(s)
        assert all(received is None for _, received, _ in points)
        assert s.current()["received_wh"] is None
        status = s.until(lambda: (st := s.status())["queries_total"] >= 10 and st, "the HAN's report of 10 queries")
        assert status["queries_lost"] == 0 and status["state"] == "polling"    # 0x86 is not a lost query
