"""The GBA's own Download My Data tests (gba_function_blocks: FB_xx.xsl run with lxml) on the Batch
without parameters, what a household downloads:
- a live stack (emulator on a pty -> openseg-han -> openseg-lan) in its first minute, before any
  quarter hour has closed;
- 35 days of history built into the store, with missed readings across a boundary and a HAN
  restart.
Both meters report energy exported (CurrentSummationReceived). FB_01 (common), FB_04 (interval
metering), FB_05 (electricity), FB_08 (reverse flow) and FB_09 (register) pass with no failed
assertion. FB_06 (demand) passes its W assertion D071; its D072/D073 ask for VA and VAR demand, which a
ZigBee Smart Energy meter's Metering cluster does not report, so those two stay failed (and are checked
to be the only ones).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support import gba_function_blocks as gba
from tests.support.channel_messages import SCALING_3_10000, T0, Clock, gap, reading, status
from tests.support.espi_schema import assert_valid
from tests.support.lan_fixtures import wait_for_channel
from openseg.lan_server.state import history_store as hs
from openseg.lan_server.http import web_resources
from openseg.lan_server.state.readings import Readings
from openseg_emulator.devstack import Stack

pytestmark = pytest.mark.skipif(bool(gba.missing()), reason=(
    f"GBA function-block files {', '.join(gba.missing())} not in {gba.GBA_DIR} (licence not stated "
    "upstream, so not committed: tests/gba/SOURCES.md)"))

CLEAN = ("FB_01", "FB_04", "FB_05", "FB_08", "FB_09")
NO_VA_VAR = ["D072", "D073"]          # FB_06: VA and VAR demand, which the meter does not report
SUB = "gba"


def check(document: bytes) -> None:
    assert_valid(document)
    for block in CLEAN:
        assert gba.failed(block, document) == [], block
    assert sorted(gba.failed("FB_06", document)) == NO_VA_VAR


def test_a_month_of_history_with_a_gap_and_a_han_restart(tmp_path):
    step, days = 120.0, 35
    clock = Clock(T0)
    store = hs.HistoryStore(str(tmp_path / hs.FILE_NAME), 40, clock=clock, log=lambda _: None)
    r = Readings(30.0, clock=clock, history=store)
    n = int(days * 86400 / step)
    t0 = T0 - n * step
    r.apply(status(0, t0, poll_interval_s=step))
    raw, received, seq, restart = 40_000_000, 5_000, 0, n // 2
    for k in range(n):
        t = t0 + k * step + 0.3
        raw += 17 + k % 23
        received += 9 if (k * step) % 86400 < 6 * 3600 else 0     # six hours of export a day
        seq += 1
        slot = k if k < restart else k - restart              # a HAN restart numbers its slots from 0
        if n // 3 <= k < n // 3 + 20:                           # 40 minutes missed across boundaries
            r.apply(gap(seq, slot, t))
        else:
            r.apply(reading(seq, slot, t, summation=raw, demand=300 + k % 50, received=received,
                            scaling=SCALING_3_10000))
    store.flush()
    resp = web_resources.espi(r, path=f"Batch/Subscription/{SUB}", params={}, subscription=SUB,
                              base_url="https://gw.example:8443", time_zone="Europe/Paris")
    assert resp.status == 200
    assert resp.body.count(b"<IntervalReading>") >= 2 * (days * 96 - 10)      # import and export
    check(resp.body)
    store.close()


def test_a_new_installation_in_its_first_minute():
    workdir = Path(tempfile.mkdtemp(prefix="gba-", dir="/tmp"))
    try:
        with Stack(workdir, poll_interval_s=0.4, emulator_args=["--seed", "3", "--join-delay-s", "0.2"]) as stack:
            wait_for_channel(stack, 6, 50)
            code, _, body = stack.get(f"/espi/1_1/resource/Batch/Subscription/{stack.subscription}")
        assert code == 200
        check(body)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
