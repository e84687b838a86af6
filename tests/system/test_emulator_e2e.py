"""The real `openseg-emulator` process on a pty, driven through pyserial with independently built frames.

Frames are built here by hand and framed/decoded with python-xbee's APIFrame, never with the emulator's
or the gateway's codec. Nothing waits on a bare sleep: every wait is for a condition with a generous
deadline. "Nothing else came" is proven with a barrier: an AT query sent after a request is answered
after everything the radio sends at once in reaction to that request, because the radio handles host
frames in order.
"""
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from fractions import Fraction
from pathlib import Path

import pytest
import serial
from xbee.frame import APIFrame

from openseg_emulator.devstack import wait_until

pytestmark = pytest.mark.integration

EMULATOR = str(Path(sys.executable).parent / "openseg-emulator")
DEADLINE_S = 10.0
H = bytes.fromhex
COORD_IEEE = H("000d6f000abcdef0")


def wait_for(predicate, what, timeout=DEADLINE_S, interval=0.01):
    return wait_until(predicate, timeout, what, interval)


class Emulator:
    def __init__(self, tmp_path: Path, args, name="xbee"):
        self.link = tmp_path / name
        self.log_path = tmp_path / f"{name}.jsonl"
        self.err_path = tmp_path / f"{name}.stderr"
        self.argv = [EMULATOR, "--link", str(self.link), "--frame-log", str(self.log_path), *args]
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)
        wait_for(lambda: f"emulator: ready on {self.link}" in self.stderr() or self.proc.poll() is not None,
                 "the ready line")
        assert self.proc.poll() is None, self.stderr()
        assert os.path.islink(self.link)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def events(self, event=None) -> list[dict]:
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        # The last line may be half-written while we read; it is complete on the next look.
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
        return [r for r in records if event is None or r["event"] == event]

    def wait_event(self, event, what, match=lambda e: True, count=1):
        return wait_for(lambda: (lambda found: found if len(found) >= count else None)(
            [e for e in self.events(event) if match(e)]), what)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE_S)


@pytest.fixture
def start_emulator(tmp_path):
    started = []

    def start(*args, name="xbee", join_delay="0.05", seed="1"):
        emu = Emulator(tmp_path, ["--join-delay-s", join_delay, "--seed", seed, *args], name)
        started.append(emu)
        return emu
    yield start
    for emu in started:
        emu.kill()


class RefReader:
    """python-xbee's APIFrame as the test's decoder, with the resynchronisation it lacks."""

    def __init__(self):
        self.frame = None
        self.frames = deque()
        self.bad_checksums = 0
        self.cut_short = 0

    def feed(self, data: bytes):
        for i in range(len(data)):
            byte = data[i:i + 1]
            if byte == APIFrame.START_BYTE:
                if self.frame is not None:
                    self.cut_short += 1
                self.frame = APIFrame(escaped=True)
                self.frame.fill(byte)
                continue
            if self.frame is None:
                continue
            self.frame.fill(byte)
            if len(self.frame.raw_data) >= 3 and self.frame.remaining_bytes() <= 0:
                try:
                    self.frame.parse()
                    self.frames.append(self.frame.data)
                except ValueError:
                    self.bad_checksums += 1
                self.frame = None


class Host:
    def __init__(self, link):
        self.port = serial.Serial(str(link), 9600, timeout=0.02)
        self.reader = RefReader()
        self._fid = 0

    def close(self):
        self.port.close()

    def fid(self) -> int:
        self._fid = self._fid % 255 + 1
        return self._fid

    def send(self, data: bytes):
        self.port.write(APIFrame(data, escaped=True).output())

    def read_until(self, predicate, what, timeout=DEADLINE_S) -> list[bytes]:
        """All frames read up to and including the first for which predicate is true."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            while self.reader.frames:
                frame = self.reader.frames.popleft()
                seen.append(frame)
                if predicate(frame):
                    return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {[f.hex() for f in seen]}")
            self.reader.feed(self.port.read(self.port.in_waiting or 1))

    def at(self, cmd: bytes) -> tuple[int, bytes]:
        fid = self.fid()
        self.send(bytes([0x08, fid]) + cmd)
        frame = self.read_until(lambda f: f[:2] == bytes([0x88, fid]), f"AT {cmd!r} response")[-1]
        assert frame[2:4] == cmd[:2]
        return frame[4], frame[5:]

    def barrier(self) -> list[bytes]:
        """Frames that arrived before the answer to a fresh AT query (which is left out)."""
        fid = self.fid()
        self.send(bytes([0x08, fid, ord("V"), ord("R")]))
        return self.read_until(lambda f: f[:2] == bytes([0x88, fid]), "the barrier AT response")[:-1]

    def wait_joined(self):
        wait_for(lambda: self.at(b"AI") == (0, b"\x00"), "AI = 0x00 (joined)")

    def explicit(self, dest64, dest16, src_ep, dst_ep, cluster, profile, payload, options=0x20, fid=None):
        fid = self.fid() if fid is None else fid
        self.send(bytes([0x11, fid]) + dest64 + struct.pack(">HBBHHBB", dest16, src_ep, dst_ep, cluster, profile,
                                                            0, options) + payload)
        return fid

    def tx_status(self, fid) -> bytes:
        return self.read_until(lambda f: f[:2] == bytes([0x8B, fid]), f"TX status {fid}")[-1]

    def read_meter(self, seq, attrs, dest64=COORD_IEEE, dest16=0x0000, ep=9):
        payload = bytes([0x00, seq, 0x00]) + b"".join(struct.pack("<H", a) for a in attrs)
        return self.explicit(dest64, dest16, 0x5E, ep, 0x0702, 0x0109, payload)


def zcl_reply(frame: bytes, seq: int) -> bool:
    return frame[0] == 0x91 and frame[13:15] == b"\x07\x02" and frame[19] == seq


def parse_read_response(frame: bytes) -> dict[int, int]:
    payload, values, pos = frame[18:], {}, 3
    sizes = {0x18: 1, 0x22: 3, 0x25: 6, 0x2A: 3, 0x30: 1}
    while pos < len(payload):
        attr, status = struct.unpack_from("<HB", payload, pos)
        pos += 3
        if status == 0:
            size = sizes[payload[pos]]
            values[attr] = int.from_bytes(payload[pos + 1:pos + 1 + size], "little", signed=payload[pos] == 0x2A)
            pos += 1 + size
    return values


@pytest.fixture
def host_factory():
    hosts = []

    def open_host(link):
        h = Host(link)
        hosts.append(h)
        return h
    yield open_host
    for h in hosts:
        h.close()


# ---- tests -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("meter_address,endpoint", [(0x0000, 9), (0x2F31, 3)])
def test_discovery_and_reads_end_to_end(start_emulator, host_factory, meter_address, endpoint):
    emu = start_emulator("--meter-address", f"0x{meter_address:04x}", "--meter-endpoint", str(endpoint),
                         "--load-w", "1500")
    host = host_factory(emu.link)
    host.wait_joined()
    assert host.at(b"VR") == (0, H("3362")) and host.at(b"AP") == (0, b"\x02") and host.at(b"AO") == (0, b"\x01")
    assert host.at(b"SH") == (0, H("0013a200")) and host.at(b"SL") == (0, H("415e7c01"))

    fid = host.explicit(bytes(8), 0x0000, 0, 0, 0x0001, 0x0000, H("2a00000000"))
    frames = host.read_until(lambda f: f[0] == 0x91, "IEEE_addr_rsp")
    assert frames[0] == bytes([0x8B, fid]) + H("0000000000")
    assert frames[-1][13:] == H("8001" "0000" "21" "2a00" "f0debc0a006f0d00" "0000")

    fid = host.explicit(H("000000000000ffff"), 0xFFFD, 0, 0, 0x0006, 0x0000, H("2bfdff0901010207" "00"))
    frames = host.read_until(lambda f: f[0] == 0x91, "Match_Desc_rsp")
    meter_nwk = struct.pack(">H", meter_address)
    assert frames[-1][9:11] == meter_nwk
    assert frames[-1][13:] == H("8006" "0000" "22" "2b00") + meter_nwk[::-1] + bytes([1, endpoint])
    assert host.barrier() == [], "only the meter matches"
    meter_ieee = frames[-1][1:9]

    host.read_meter(0x40, [0x0300, 0x0301, 0x0302, 0x0306], meter_ieee, meter_address, endpoint)
    scaling = parse_read_response(host.read_until(lambda f: zcl_reply(f, 0x40), "scaling read")[-1])
    assert scaling == {0x0300: 0, 0x0301: 1, 0x0302: 1000, 0x0306: 0}

    host.read_meter(0x41, [0x0000, 0x0400], meter_ieee, meter_address, endpoint)
    reply = host.read_until(lambda f: zcl_reply(f, 0x41), "poll read")[-1]
    assert reply[9:13] == meter_nwk + bytes([endpoint, 0x5E]) and reply[17] == 0x21
    values = parse_read_response(reply)
    assert values[0x0400] == 1500 and values[0x0000] >= 12345678

    answer = emu.wait_event("answer", "the answer in the frame log")[0]
    assert answer["zcl_seq"] == 0x41 and answer["attrs"] == {"0x0000": values[0x0000], "0x0400": 1500}
    assert answer["kw"] == 1.5 and answer["t_start"] <= answer["t"]
    classes = [e["class"] for e in emu.events("rx")]
    assert set(classes) <= {"at-query", "zdo-discovery", "zcl-read"} and classes.count("zcl-read") == 2


@pytest.mark.parametrize("export", [True, False])
def test_energy_exported_while_the_load_is_negative(start_emulator, host_factory, export):
    """A constant export of 3600 W: the received register starts at --start-received-kwh and counts up
    1 Wh a second, the delivered one stands still; with --no-export the meter answers 0x0001 with
    UNSUPPORTED_ATTRIBUTE (0x86) and still answers the rest of the same read."""
    emu = start_emulator("--load-w", "-3600", "--start-received-kwh", "250.5", "--start-kwh", "100",
                         *(() if export else ("--no-export",)))
    host = host_factory(emu.link)
    host.wait_joined()
    answers = []
    for seq in (0x50, 0x51):
        host.read_meter(seq, [0x0000, 0x0001, 0x0400])
        reply = host.read_until(lambda f, seq=seq: zcl_reply(f, seq), "poll read")[-1]
        answers.append((parse_read_response(reply), reply))
        time.sleep(1.2)     # let the register move (the values are checked against the frame log)
    logged = emu.wait_event("answer", "both answers in the frame log", count=2)
    for (values, reply), log in zip(answers, logged):
        assert values[0x0000] == 100_000 and values[0x0400] == -3600
        assert log["attrs"] == {f"0x{a:04x}": v for a, v in values.items()}
        if export:
            # raw Wh (divisor 1000): floor of the exact register the emulator logged
            assert values[0x0001] == int(Fraction(log["received_kwh_exact"]) * 1000) >= 250_500
        else:
            assert 0x0001 not in values and "received_kwh_exact" not in log
            assert reply[18 + 3 + 10:18 + 3 + 13] == bytes([0x01, 0x00, 0x86])   # the 0x0001 record
    if export:
        first, second = answers[0][0][0x0001], answers[1][0][0x0001]
        assert second - first >= 1      # >= 1.2 s at 1 Wh/s, floored


def test_non_reads_are_refused_and_logged_as_not_a_read(start_emulator, host_factory):
    emu = start_emulator("--load-w", "800")
    host = host_factory(emu.link)
    host.wait_joined()
    assert host.at(b"AP\x01") == (3, b"")          # a write: refused, never applied
    assert host.at(b"AP") == (0, b"\x02")
    assert host.at(b"WR") == (2, b"")
    write = H("0050020000250000000000")
    fid = host.explicit(COORD_IEEE, 0, 0x5E, 9, 0x0702, 0x0109, write)
    frames = host.read_until(lambda f: f[0] == 0x91, "Default Response")
    assert frames[0][:2] == bytes([0x8B, fid]) and frames[-1][18:] == H("18500b0288")
    fid = host.fid()
    host.send(bytes([0x17, fid]) + COORD_IEEE + H("fffe02") + b"AP\x01")
    assert host.read_until(lambda f: f[0] == 0x97, "remote AT response")[-1][-3:] == b"AP\x04"
    good = APIFrame(b"\x08\x01VR", escaped=True).output()
    host.port.write(b"\x00\x13junk" + good[:-1] + bytes([good[-1] ^ 0xFF]))
    assert host.barrier() == []
    rx = emu.events("rx")
    verdicts = [(e["detail"].get("command") or e["detail"].get("zcl_command") or e["type"], e["class"]) for e in rx]
    assert ("AP", "not-a-read") in verdicts and ("WR", "not-a-read") in verdicts
    assert ("0x02", "not-a-read") in verdicts and ("0x17", "not-a-read") in verdicts
    assert ("AP", "at-query") in verdicts
    bad = emu.events("rx-bad")
    assert [b["reason"] for b in bad if b["reason"] != "bytes outside a frame"] == ["checksum mismatch"]
    garbage = b"".join(bytes.fromhex(b["hex"]) for b in bad if b["reason"] == "bytes outside a frame")
    assert garbage == b"\x00\x13junk"


def test_sigusr1_resets_the_radio(start_emulator, host_factory):
    emu = start_emulator(join_delay="1.0")
    host = host_factory(emu.link)
    host.wait_joined()
    emu.signal(signal.SIGUSR1)
    assert host.read_until(lambda f: f[0] == 0x8A, "modem status after reset")[-1] == H("8a00")
    fid = host.fid()
    host.send(bytes([0x08, fid]) + b"AI")
    tx_fid = host.read_meter(0x10, [0x0000])
    frames = host.read_until(lambda f: f == H("8a02"), "modem status joined")
    frames += host.barrier()
    joined_at = frames.index(H("8a02"))
    ai_at = next(i for i, f in enumerate(frames) if f[:2] == bytes([0x88, fid]))
    status_at = next(i for i, f in enumerate(frames) if f[:2] == bytes([0x8B, tx_fid]))
    # Whatever the machine's speed, what the radio answered before it said "joined" must be the
    # scanning answers, and after it the joined ones (1 s makes the first case the usual one).
    if ai_at < joined_at:
        assert frames[ai_at][-1] == 0xFF
    else:
        assert frames[ai_at][-1] == 0x00
    if status_at < joined_at:
        assert frames[status_at] == bytes([0x8B, tx_fid]) + H("fffd002200")
        assert not [f for f in frames if f[0] == 0x91], "no reply to a transmission that never left"
    else:
        assert frames[status_at][5] == 0x00
    assert host.at(b"AI") == (0, b"\x00")
    events = [e["event"] for e in emu.events() if e["event"] in ("reset", "joined")]
    assert events == ["joined", "reset", "joined"]


def test_sigusr2_turns_the_meter_off_and_on(start_emulator, host_factory):
    emu = start_emulator()
    host = host_factory(emu.link)
    host.wait_joined()
    emu.signal(signal.SIGUSR2)
    emu.wait_event("meter-power", "meter off", lambda e: e["on"] is False)
    fid = host.read_meter(0x20, [0x0000, 0x0400])
    assert host.tx_status(fid) == bytes([0x8B, fid]) + H("0000032100")
    fid = host.explicit(H("000000000000ffff"), 0xFFFD, 0, 0, 0x0006, 0x0000, H("2cfdff0901010207" "00"))
    assert host.tx_status(fid) == bytes([0x8B, fid]) + H("fffd000000")
    fid = host.explicit(bytes(8), 0x0000, 0, 0, 0x0001, 0x0000, H("2d00000000"))
    assert host.tx_status(fid)[5] == 0x21
    assert [f for f in host.barrier() if f[0] == 0x91] == [], "a meter without power says nothing"
    emu.signal(signal.SIGUSR2)
    emu.wait_event("meter-power", "meter on", lambda e: e["on"] is True)
    host.read_meter(0x21, [0x0000, 0x0400])
    host.read_until(lambda f: zcl_reply(f, 0x21), "the meter's answer after power is back")
    assert [a["zcl_seq"] for a in emu.wait_event("answer", "the answer's log line")] == [0x21]


def run_faulty_session(start_emulator, host_factory, name, reads=24):
    emu = start_emulator("--drop-rate", "0.25", "--corrupt-rate", "0.3", name=name, seed="1234")
    host = host_factory(emu.link)
    host.wait_joined()
    answered = []
    for seq in range(reads):
        fid = host.read_meter(seq, [0x0000, 0x0400])
        frames = host.barrier()
        assert frames[0][:2] == bytes([0x8B, fid])       # the TX status is never faulted
        answered += [f[19] for f in frames if zcl_reply(f, seq)]
        # A scaling read is never faulted.
        host.read_meter(200 + seq, [0x0302])
        host.read_until(lambda f: zcl_reply(f, 200 + seq), "scaling read")
    faults = emu.wait_event("fault", "fault events", count=reads - len(answered))
    return emu, host, answered, {f["zcl_seq"]: f["fault"] for f in faults}


def test_faults_are_seeded_exact_and_logged(start_emulator, host_factory):
    emu, host, answered, faults = run_faulty_session(start_emulator, host_factory, "a")
    assert sorted(answered + list(faults)) == list(range(24))
    assert [a["zcl_seq"] for a in emu.events("answer")] == answered
    corrupted = [s for s, f in faults.items() if f == "corrupt"]
    assert 0 < len(corrupted) and 0 < len(faults) - len(corrupted), faults
    assert host.reader.bad_checksums == len(corrupted)
    garbage = [f for f in emu.events("fault") if f.get("garbage")]
    assert host.reader.cut_short <= len(garbage)
    # The same seed, the same faults.
    _, _, answered_again, faults_again = run_faulty_session(start_emulator, host_factory, "b")
    assert (answered_again, faults_again) == (answered, faults)


def test_pacing_delays_bytes_like_a_uart(start_emulator, host_factory):
    emu = start_emulator("--pace-baud", "9600", "--reply-delay-ms", "50")
    host = host_factory(emu.link)
    host.wait_joined()
    byte_time = 10 / 9600
    sent = time.monotonic()                        # taken before the request leaves: a true lower bound
    fid = host.read_meter(0x33, [0x0000, 0x0400])
    status = host.tx_status(fid)
    status_at = time.monotonic()
    host.read_until(lambda f: zcl_reply(f, 0x33), "paced answer")
    answer_at = time.monotonic()
    tx = emu.wait_event("tx", "the answer's tx line", lambda e: e["type"] == "0x91")[-1]
    wire = APIFrame(bytes.fromhex(tx["hex"]), escaped=True).output()
    status_wire = APIFrame(status, escaped=True).output()
    # The emulator never writes a byte before a UART would have finished sending it.
    assert status_at - sent >= len(status_wire) * byte_time
    assert answer_at - sent >= 0.050 + len(wire) * byte_time
    answer = emu.wait_event("answer", "answer")[0]
    assert answer["zcl_seq"] == 0x33 and answer["t_start"] <= answer["t"]


def test_load_file_is_followed(start_emulator, host_factory, tmp_path):
    load = tmp_path / "load_w"
    load.write_text("1000\n")
    emu = start_emulator("--load-file", str(load))
    host = host_factory(emu.link)
    host.wait_joined()

    def demand(seq):
        host.read_meter(seq, [0x0000, 0x0400])
        return parse_read_response(host.read_until(lambda f: zcl_reply(f, seq), "read")[-1])

    assert demand(1)[0x0400] == 1000
    tmp = tmp_path / "load_w.tmp"
    tmp.write_text("2500.5\n")
    os.replace(tmp, load)                          # checked on each meter read, no signal needed
    first = demand(2)
    assert first[0x0400] == 2501                   # 2.5005 kW × 1000, rounded half away from zero
    load.write_text("not a number")
    assert demand(3)[0x0400] == 2501               # a bad file keeps the load
    load.write_text("-300")
    emu.signal(signal.SIGHUP)
    emu.wait_event("load", "load -300 W", lambda e: e["w"] == -300)
    last = demand(4)
    assert last[0x0400] == -300
    assert last[0x0000] >= first[0x0000]           # delivered summation never runs backwards
    assert emu.proc.poll() is None


def test_host_reopen_and_output_while_closed_is_lost(start_emulator, host_factory):
    emu = start_emulator()
    host = host_factory(emu.link)
    host.wait_joined()
    host.close()
    emu.wait_event("link", "the port closed", lambda e: e["open"] is False)
    emu.signal(signal.SIGUSR1)                     # its modem status frames go to nobody
    emu.wait_event("tx-lost", "lost modem status", lambda e: e["hex"] == "8a02")
    assert os.path.islink(emu.link)
    host = host_factory(emu.link)
    assert host.barrier() == [], "nothing stale from while the port was closed"
    host.wait_joined()
    host.close()
    host = host_factory(emu.link)                  # and again, straight away
    assert host.at(b"VR") == (0, H("3362"))


def test_hostile_bytes_from_the_host_are_survived(start_emulator, host_factory):
    emu = start_emulator()
    host = host_factory(emu.link)
    host.wait_joined()
    rng = random.Random(99)
    for _ in range(20):
        host.port.write(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
    assert host.at(b"VR") == (0, H("3362"))        # the next delimiter resynchronises
    assert emu.events("rx-bad") and emu.proc.poll() is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_cleanly_and_remove_the_link(start_emulator, host_factory, sig):
    emu = start_emulator()
    host_factory(emu.link).wait_joined()
    emu.signal(sig)
    assert emu.proc.wait(timeout=DEADLINE_S) == 0
    assert not os.path.lexists(emu.link)
    assert emu.events()[-1]["event"] == "stop"


def test_stale_symlink_is_replaced(start_emulator, tmp_path):
    os.symlink("/dev/pts/does-not-exist", tmp_path / "xbee")
    emu = start_emulator()
    assert os.readlink(emu.link).startswith("/dev/pts/") and os.path.exists(emu.link)
