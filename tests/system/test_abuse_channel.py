"""Abuse of the channel socket while the gateway polls: garbage, oversized, invalid, foreign-uid and
fd-passing datagrams, then a flood faster than the LAN side can read. Every one is rejected and counted
under its reason, exactly; polling goes on slot by slot; what the HAN could not deliver while the
flood filled the socket's queue it counted, and the LAN side counted the same number missing.

Who can do this on a real gateway: the socket is mode 0620 in a 0710 directory, so root, the LAN user
and members of the HAN's group; the test runs as one of them (the same user as both processes). The
forged-uid datagrams need CAP_SETUID (root), and are sent only when the test runs as root.
"""
from __future__ import annotations

import array
import collections
import os
import socket
import struct
import threading
import time

import msgpack
import pytest

from openseg.shared_schema import messages
from tests.system.test_abuse_lan import Legit
from tests.system.test_faults_witness import FaultStack, assert_polled_every_slot, iso_time

pytestmark = pytest.mark.integration

INTERVAL = 0.5
FLOOD_S = 3.0


def kinds(sock: socket.socket, path: str) -> collections.Counter:
    """Send each kind of bad datagram (blocking: each one is queued, none lost); returns what was sent
    by the reason the LAN side must count it under."""
    sent: collections.Counter = collections.Counter()
    reading = {"v": messages.VERSION, "seq": 10**9, "kind": "reading", "sent": time.time(), "slot": 1,
               "due": time.time(), "time": time.time(), "rtt_s": 0.01, "demand": 1, "scaling": {
                   "multiplier": 1, "divisor": 1, "unit": 0, "summation_formatting": 0, "demand_formatting": 0}}
    for n in range(40):
        sock.sendto(b"\xc1" + os.urandom(n), path)                    # 0xc1 is never valid msgpack
        sent["undecodable"] += 1
    for size in (messages.MAX_DATAGRAM + 1, 4096, 65000) * 5:
        sock.sendto(os.urandom(size), path)
        sent["oversized"] += 1
    for bad in ({**reading, "demand": 1 << 40}, {**reading, "kind": "command"}, {"v": 1}, {**reading, "x": 1}):
        for _ in range(5):
            sock.sendto(msgpack.packb(bad), path)
            sent["invalid"] += 1
    for _ in range(5):
        sock.sendto(msgpack.packb({**reading, "v": 7}), path)
        sent["version"] += 1
    with open(os.devnull, "rb") as f:                                # a descriptor offered to the LAN side
        for _ in range(5):
            sock.sendmsg([messages.encode({**reading, "seq": 1})],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [f.fileno()]))], 0, path)
            sent["unexpected-ancillary"] += 1
    if os.geteuid() == 0:                                             # root may claim any uid
        forged = struct.pack("iII", os.getpid(), os.getuid() + 4242, os.getgid())
        for _ in range(10):
            sock.sendmsg([messages.encode({**reading, "seq": 2})],
                         [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, forged)], 0, path)
            sent["foreign-uid"] += 1
    return sent


class Flood(threading.Thread):
    """Undecodable datagrams as fast as one thread can send them, without ever blocking."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.path = path
        self.delivered = 0
        self.refused = 0         # EAGAIN: the LAN side's queue was full, the flood outran its reader
        self.began = self.ended = 0.0

    def run(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        payload = b"\xc1flood" + b"x" * 64
        self.began = time.time()
        try:
            while time.time() - self.began < FLOOD_S:
                for _ in range(100):
                    try:
                        sock.sendto(payload, self.path)
                        self.delivered += 1
                    except BlockingIOError:
                        self.refused += 1
        finally:
            self.ended = time.time()
            sock.close()


def test_bad_datagrams_and_a_flood_are_rejected_and_counted_and_polling_goes_on():
    with FaultStack(INTERVAL) as s:
        s.until_polling(3)
        path = str(s.gateway_dir / "run" / "readings.sock")
        before = s.status()["channel"]
        assert before["rejected"] == 0
        began = time.time()

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sent = kinds(sock, path)
        finally:
            sock.close()
        flood = Flood(path)
        legit = Legit(s)
        flood.start()
        while flood.is_alive():
            legit.once()
            time.sleep(0.1)
        flood.join()
        sent["undecodable"] += flood.delivered
        assert flood.refused > 0, "the flood never outran the LAN side's reader: not a flood here"

        # Every datagram that got into the socket is rejected under its reason, exactly.
        expected = {reason: before["rejected_by_reason"][reason] + sent[reason] for reason in sent}
        s.until(lambda: s.status()["channel"]["rejected"] == before["rejected"] + sum(sent.values()),
                f"{sum(sent.values())} rejections")
        channel = s.status()["channel"]
        assert {r: channel["rejected_by_reason"][r] for r in sent} == expected
        assert channel["han_restarts"] == 0

        # What the HAN could not deliver while the queue was full, it dropped and counted; the LAN side
        # counted the same messages as missing from the sequence. Compared once a status report sent
        # after the flood has arrived (it carries the HAN's final count).
        s.until(lambda: iso_time(s.status()["report_time"]) > flood.ended + 0.6,
                "a status report after the flood")
        status = s.status()
        assert status["channel_dropped"] == status["channel"]["seq_missing"], (
            status["channel_dropped"], status["channel"])
        assert status["state"] == "polling" and status["queries_lost"] == 0

        # Polling went on, slot by slot, and the LAN side holds a reading for every slot it was sent.
        s.until(lambda: sum(1 for r in s.reads() if r.t > flood.ended) >= 3, "polling after the flood")
        ended = time.time()
        assert_polled_every_slot(s.reads(), INTERVAL, since=began, until=ended)
        book = s.book()
        window = sorted(k for k, e in book.items() if began <= e.get("time", 0) <= ended)
        assert all(book[k]["kind"] == "reading" for k in window)
        not_delivered = [k for k in range(window[0], window[-1] + 1) if k not in book]
        assert len(not_delivered) <= status["channel_dropped"]
        assert "missed, the loop was late" not in s.log("han")
        print(f"flood: {flood.delivered} delivered, {flood.refused} refused (queue full) in "
              f"{flood.ended - flood.began:.1f} s; HAN dropped {status['channel_dropped']}; "
              f"legitimate client: {legit.check()}")
