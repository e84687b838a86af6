"""The HAN side of the one-way channel: AF_UNIX datagrams to the socket the LAN process binds.

The socket is never bound, never received on and never given SO_PASSCRED (which would make Linux
auto-bind it to an abstract address): with no address of its own, nothing on the LAN side can send
anything back to the HAN process. It is non-blocking, so a LAN process that is absent (no socket file),
dead (stale file) or slow (its receive queue full) costs one failed sendto and a counted drop; the poll
schedule never waits for the LAN side.

Every attempted message takes the next sequence number, including those dropped, so the LAN side can
count what it missed.
"""
from __future__ import annotations

import logging
import socket

from openseg.shared_schema import messages

from .clock import Clock

log = logging.getLogger("openseg.han")


class ChannelSender:
    def __init__(self, path: str, clock: Clock):
        self.path = path
        self.clock = clock
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self._failing_since: int | None = None    # drops in the current run of failures
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, kind: messages.Kind, fields: dict) -> bool:
        msg = {"v": messages.VERSION, "seq": self.seq, "kind": kind, "sent": self.clock.wall(), **fields}
        self.seq += 1
        try:
            data = messages.encode(msg)
        except messages.MessageError as exc:
            # Our own message failed our own schema: a bug here, not bad input. Count it and carry on,
            # so one odd value cannot stop the meter being read.
            self.dropped += 1
            log.error("channel: BUG: refusing to send an invalid %s message: %s", kind, exc)
            return False
        try:
            self._sock.sendto(data, self.path)
        except OSError as exc:      # BlockingIOError, FileNotFoundError, ConnectionRefusedError, ...
            self.dropped += 1
            if self._failing_since is None:
                self._failing_since = self.dropped
                log.warning("channel: cannot deliver to %s (%s); dropping messages until the LAN side "
                            "takes them again", self.path, exc.strerror or type(exc).__name__)
            return False
        if self._failing_since is not None:
            log.info("channel: delivering again after %d dropped message(s)",
                     self.dropped - self._failing_since + 1)
            self._failing_since = None
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()
