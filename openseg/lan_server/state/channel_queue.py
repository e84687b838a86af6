"""How many datagrams the channel's socket really queues: measured, since the kernel's rule is not
SO_RCVBUF but net.unix.max_dgram_qlen (and /proc/sys may be hidden from the LAN process by systemd).

Kept apart from channel_receiver, which never sends anything: the probe sends only from one throw-away
socket to another, in the abstract namespace (nothing on disk, nothing anyone else can reach).
"""
from __future__ import annotations

import secrets
import socket

PROBE_DATAGRAM = 400               # bytes: a typical status message, the largest kind


def queue_length(limit: int = 4096) -> int:
    """How many typical datagrams an AF_UNIX datagram socket here really queues before a sender gets
    EAGAIN: net.unix.max_dgram_qlen + 1, or fewer if the sender's buffer fills first. Measured with
    two throw-away sockets (abstract address, nothing on disk), since /proc/sys may be hidden."""
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        rx.bind("\0openseg-queue-probe-" + secrets.token_hex(8))
        tx.setblocking(False)
        payload = bytes(PROBE_DATAGRAM)
        n = 0
        while n < limit:
            try:
                tx.sendto(payload, rx.getsockname())
            except BlockingIOError:
                break
            n += 1
        return n
    finally:
        tx.close()
        rx.close()
