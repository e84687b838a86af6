"""Runtime separation: the running processes hold only what the design says, read from /proc.

A real stack (emulator on a pty, `openseg-han`, `openseg-lan`, started as their console scripts by
openseg_emulator.devstack.Stack) serves a reading; then, from outside the processes:

- the LAN process holds no descriptor on the radio's pty or any terminal, shares no pipe or socket
  pair with the HAN process, and has no controlling terminal;
- the HAN process holds no TCP, UDP, raw, packet or netlink socket: every socket it has is an AF_UNIX
  datagram socket without an address (matched inode by inode against /proc/PID/net/*);
- so a datagram sent back towards the HAN has nowhere to go: there is no name to send it to, and the
  sender address the LAN side receives is empty (shown with the HAN's own ChannelSender);
- the code each process mapped: the HAN no TLS library, the LAN no terminal (termios) module.

Each check has a positive control on the other process (the HAN does hold the pty, the LAN does hold
a TCP socket and maps TLS), so a check that stopped seeing anything would fail rather than pass.
"""
from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from openseg_emulator.devstack import Stack, wait_until

pytestmark = pytest.mark.integration

INET_TABLES = ("tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6")
OTHER_TABLES = ("packet", "netlink")
MEM_MAJOR = 1          # /dev/null, /dev/zero, /dev/urandom ...


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("separation"), poll_interval_s=1.0) as s:
        wait_until(lambda: s.get_json("/api/v1/current")[1].get("status") == "ok", 60,
                   "a reading to travel HAN -> channel -> LAN")
        yield s


def fds(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass   # closed while we looked
    return out


def socket_inodes(pid: int) -> set[int]:
    return {int(t[8:-1]) for t in fds(pid).values() if t.startswith("socket:[")}


def table_inodes(pid: int, table: str) -> set[int]:
    """Socket inodes listed in /proc/PID/net/TABLE (the process's own network namespace)."""
    path = Path(f"/proc/{pid}/net/{table}")
    if not path.exists():
        return set()
    # tcp/udp/raw rows: sl local rem st tx:rx tr:when retrnsmt uid timeout INODE (the header has more
    # words than a row has fields); packet: sk RefCnt Type Proto Iface R Rmem User INODE
    column = {"packet": 8}.get(table, 9)
    rows = [line.split() for line in path.read_text().splitlines()[1:]]
    return {int(row[column]) for row in rows if len(row) > column}


def unix_sockets(pid: int) -> dict[int, dict]:
    """inode -> {type, flags, path} from /proc/PID/net/unix."""
    out = {}
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        out[int(parts[6])] = {"flags": int(parts[3], 16), "type": int(parts[4], 16),
                              "path": parts[7] if len(parts) > 7 else ""}
    return out


def char_devices(pid: int) -> dict[str, int]:
    """target -> st_rdev of every character device the process holds open."""
    out = {}
    for fd, target in fds(pid).items():
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if stat.S_ISCHR(st.st_mode):
            out[target] = st.st_rdev
    return out


def radio_pty(stack: Stack) -> tuple[str, int]:
    path = os.path.realpath(stack.link)
    return path, os.stat(path).st_rdev


def test_lan_holds_nothing_that_reaches_the_radio(stack):
    pty, rdev = radio_pty(stack)
    han, lan = stack.han.pid, stack.lan.pid
    # positive control: the HAN does hold the radio's pty
    assert rdev in char_devices(han).values(), f"the HAN does not hold {pty}: {fds(han)}"
    devices = char_devices(lan)
    assert rdev not in devices.values(), f"the LAN holds the radio's pty {pty}"
    assert all(os.major(d) == MEM_MAJOR for d in devices.values()), \
        f"the LAN holds a character device other than /dev/null & co: {devices}"
    assert not [t for t in fds(lan).values() if t.startswith(("/dev/pts/", "/dev/tty", "/dev/ptmx"))]
    tty_nr = int(Path(f"/proc/{lan}/stat").read_text().rsplit(")", 1)[1].split()[4])
    assert tty_nr == 0, "the LAN process has a controlling terminal"


def test_no_pipe_or_socket_is_shared_between_the_processes(stack):
    han, lan = fds(stack.han.pid), fds(stack.lan.pid)
    shared = {t for t in han.values() if t.startswith(("pipe:", "socket:", "anon_inode:"))} & set(lan.values())
    assert not shared, f"HAN and LAN share {shared}"


def test_han_holds_no_network_socket(stack):
    han, lan = stack.han.pid, stack.lan.pid
    mine = socket_inodes(han)
    assert mine, "the HAN holds its channel socket"
    for table in INET_TABLES + OTHER_TABLES:
        assert not mine & table_inodes(han, table), f"the HAN holds a {table} socket"
    unix = unix_sockets(han)
    assert mine <= unix.keys(), f"sockets of the HAN that are not AF_UNIX: {mine - unix.keys()}"
    # positive control: the same lookup finds the LAN's TCP listening socket
    lan_tcp = socket_inodes(lan) & (table_inodes(lan, "tcp") | table_inodes(lan, "tcp6"))
    assert lan_tcp, "the lookup should find the LAN's HTTPS socket"


def test_han_sockets_have_no_address_so_nothing_can_be_sent_back(stack):
    unix = unix_sockets(stack.han.pid)
    for inode in socket_inodes(stack.han.pid):
        entry = unix[inode]
        assert entry["type"] == socket.SOCK_DGRAM, entry
        assert entry["path"] == "", f"the HAN's socket has an address {entry['path']!r}: it could receive"
        assert not entry["flags"] & 0x10000, "the HAN listens on a socket"
    # positive control: the LAN's channel socket does have its name
    lan_paths = {e["path"] for i, e in unix_sockets(stack.lan.pid).items() if i in socket_inodes(stack.lan.pid)}
    assert any(p.endswith("readings.sock") for p in lan_paths), lan_paths


def test_a_reply_to_the_han_sender_has_nowhere_to_go(tmp_path):
    """What the LAN side would see of the HAN: ChannelSender (the HAN's code) sends to a socket we
    bind; the sender address that arrives is empty, and sending to it fails."""
    from openseg.han_reader.channel_sender import ChannelSender
    from openseg.han_reader.clock import SystemClock

    path = str(tmp_path / "readings.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    sender = ChannelSender(path, SystemClock())
    try:
        assert sender.send("gap", {"slot": 1, "due": 1700000000.0, "cause": "late"})
        data, address = receiver.recvfrom(65536)
        assert data and address in (None, "", b""), address
        with pytest.raises(OSError):
            receiver.sendto(b"reply", address or "")
        inode = os.fstat(sender._sock.fileno()).st_ino
        assert unix_sockets(os.getpid())[inode]["path"] == ""
    finally:
        sender.close()
        receiver.close()


def test_mapped_code_of_each_process(stack):
    def mapped(pid):
        return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
                if "/" in line}

    han, lan = mapped(stack.han.pid), mapped(stack.lan.pid)
    tls = ("/_ssl.", "/libssl.")
    assert any(t in m for m in lan for t in tls), "control: the LAN maps TLS"
    assert not [m for m in han if any(t in m for t in tls)], "the HAN maps a TLS library"
    assert any("/termios." in m for m in han), "control: the HAN maps termios (pyserial)"
    assert not [m for m in lan if "/termios." in m], "the LAN maps termios"


def test_every_frame_the_han_sent_was_a_read(stack):
    """Live corroboration of the read-only guarantee, by the emulator's own independent classifier."""
    sent = [f for f in stack.frames() if f.get("event") == "rx"]
    assert len(sent) >= 5
    assert {f["class"] for f in sent} <= {"at-query", "zdo-discovery", "zcl-read"}, \
        [f for f in sent if f["class"] not in ("at-query", "zdo-discovery", "zcl-read")][:3]
