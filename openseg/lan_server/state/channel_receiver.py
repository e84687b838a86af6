"""The LAN end of the one-way HAN -> LAN channel: an AF_UNIX datagram socket this process binds.

Every datagram is checked before it can touch the readings, cheapest and most telling check first:
sender credentials (SCM_CREDENTIALS, which the kernel fills in and only root can forge) -> uid ->
size (MSG_TRUNC) -> bounded msgpack decode -> schema (openseg.shared_schema.messages.decode). A failure
drops the datagram and counts it under its reason; nothing is ever sent back (this module never
calls send/sendto/sendmsg), so a compromised LAN side has no path towards the serial port.

Sequence numbers: the HAN numbers every message it sends. A jump forward counts as a gap (and the
number of messages missing); a step back means the HAN process restarted (it numbers from 0, so
messages before the first one seen after a restart are missing too); a `status` with a new `started`
time is a restart as well, counted once however both signs arrive.

Queue: Linux queues at most net.unix.max_dgram_qlen + 1 datagrams on an AF_UNIX datagram socket
(default 10 + 1), whatever SO_RCVBUF says, and the sender's buffer bounds it too. `bind` measures the
real number (`queue_length`) and reports it (counters()["queue_len"], a warning under MIN_QUEUE);
deploy/openseg.sysctl.conf raises the sysctl. The HAN sends a stall's catch-up as one gap message per run
of slots, so even the default queue holds a minute of the LAN side not reading.

Threading: one daemon thread receives; `counters()` is read from request threads. The counters are
not shared mutable state: after each datagram the thread publishes a fresh immutable tuple by a
single reference assignment, and readers only ever read that reference.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import stat
import struct
import threading
import time
from typing import Callable

from openseg.shared_schema import messages

from .channel_queue import queue_length
from .readings import History, Readings

REASONS = ("no-credentials", "foreign-uid", "oversized", "undecodable", "version", "invalid",
           "unexpected-ancillary")
RCVBUF_BYTES = 256 * 1024          # bytes; the datagram count is bounded by the queue length (above)
MIN_QUEUE = 64                     # below this, bind warns: the sysctl was not raised
LOG_EVERY_S = 60.0                 # one line per drop reason per minute, so a flood cannot flood the log
TURN_S = 1.0                       # the receiver loop turns at least this often, datagrams or not
STALLED_AFTER_S = 10.0             # no turn for this long: alive() is False, the watchdog withholds
_UCRED = struct.Struct("iII")      # struct ucred: pid, uid, gid
_ANCBUF = socket.CMSG_SPACE(_UCRED.size)


class ChannelReceiver:
    def __init__(self, socket_path: str, allowed_uid: int, readings: Readings,
                 log: Callable[[str], None], history: History | None = None):
        self.socket_path = socket_path
        # The history (None: off), committed whenever the socket is drained (History.flush).
        # history_store.HistoryWriter commits at least every half second while datagrams keep coming;
        # this is the other half of that rule: as soon as the socket has nothing more to read, what is
        # queued is committed, so a reading never waits for the next one (seven seconds away at the
        # production poll) to become durable. Both happen in this thread, the store's only writer.
        self.history = history
        self.allowed_uid = allowed_uid
        self.readings = readings
        self.log = log
        self._sock: socket.socket | None = None
        self._bound_inode: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._last_turn = time.monotonic()
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        # Owned by the receiver thread only:
        self.queue_len: int | None = None
        self._received = 0
        self._internal_errors = 0
        self._rejected = dict.fromkeys(REASONS, 0)
        self._seq_gaps = 0
        self._seq_missing = 0
        self._restarts = 0
        self._last_seq: int | None = None
        self._han_started: float | None = None
        self._restart_unconfirmed = False
        self._last_log: dict[str, tuple[float, int]] = {}
        self._published = self._freeze()

    # -- setup and teardown ---------------------------------------------------------------------
    def bind(self) -> None:
        path = self.socket_path
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            # 0710: the HAN's group may reach the socket by name, nobody may list the directory.
            os.makedirs(parent, mode=0o710, exist_ok=True)
            os.chmod(parent, 0o710)
        elif os.stat(parent).st_mode & stat.S_IROTH:
            self.log(f"channel: warning: {parent} is world-listable; a directory of mode 0710 or "
                     "0750 keeps the socket's name private")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not removing it")
            os.unlink(path)     # left over from a previous run: nothing can be listening on it now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.bind(path)
            # Owner (LAN) rw, group (the HAN's) write-only, others nothing.
            os.chmod(path, 0o620)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        st = os.lstat(path)
        self._bound_inode = (st.st_dev, st.st_ino)
        self._sock = sock
        self.queue_len = queue_length()
        self.log(f"channel: listening on {path} for uid {self.allowed_uid}; the socket queues "
                 f"{self.queue_len} datagrams")
        if self.queue_len < MIN_QUEUE:
            self.log(f"channel: warning: only {self.queue_len} datagrams can wait while this process is "
                     "busy; set net.unix.max_dgram_qlen = 512 (deploy/openseg.sysctl.conf) and restart")

    def start(self) -> None:
        if self._sock is None:
            self.bind()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="channel-receiver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        # Remove the socket file only if it is still the one we bound (not a successor's).
        try:
            st = os.lstat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._bound_inode:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        self._bound_inode = None

    # -- the receiver thread --------------------------------------------------------------------
    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            self._last_turn = time.monotonic()          # progress, for alive() and the watchdog
            try:
                events = poller.poll(TURN_S * 1000)     # turn while idle too, so a stall shows
            except InterruptedError:
                continue
            if any(fd == self._wake_r for fd, _ in events):
                return
            try:
                self._drain_and_flush()
            except Exception as exc:    # the store's flush, say: count it, keep the only receiver alive
                self._internal_errors += 1
                self._published = self._freeze()
                self.log(f"channel: internal error: {type(exc).__name__}: {exc}")

    def _drain_and_flush(self) -> None:
        # _drain returns exactly when recvmsg would block (or failed): the burst of datagrams that
        # arrived together has been applied, and is now one transaction.
        try:
            self._drain()
        finally:
            if self.history is not None:
                self.history.flush()

    def _drain(self) -> None:
        while not self._stopping:
            try:
                data, anc, flags, _ = self._sock.recvmsg(messages.MAX_DATAGRAM, _ANCBUF)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log(f"channel: receive failed: {exc}")
                return
            try:
                self.handle(data, anc, flags)
            except Exception as exc:   # a bug here must not end the only receiver thread
                self._internal_errors += 1
                self.log(f"channel: internal error handling a datagram: {type(exc).__name__}: {exc}")
            self._last_turn = time.monotonic()

    def handle(self, data: bytes, ancdata: list, flags: int) -> None:
        """One received datagram (as recvmsg returned it): check, count, and hand a valid message
        to the readings. Called by the receiver thread only."""
        try:
            self._handle(data, ancdata, flags)
        finally:
            self._published = self._freeze()

    def _handle(self, data: bytes, ancdata: list, flags: int) -> None:
        uid = None
        unexpected = False
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                uid = _UCRED.unpack_from(payload)[1]
            else:
                unexpected = True
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    # File descriptors someone passed us: close them, never keep them.
                    usable = len(payload) - len(payload) % 4
                    for fd in struct.unpack(f"{usable // 4}i", payload[:usable]):
                        try:
                            os.close(fd)
                        except OSError:
                            pass
        if uid is None:
            return self._reject("no-credentials", "datagram without sender credentials")
        if uid != self.allowed_uid:
            return self._reject("foreign-uid", f"datagram from uid {uid}, only {self.allowed_uid} may send")
        if unexpected or flags & socket.MSG_CTRUNC:
            return self._reject("unexpected-ancillary", "datagram with ancillary data besides credentials")
        if flags & socket.MSG_TRUNC:
            return self._reject("oversized", f"datagram larger than {messages.MAX_DATAGRAM} bytes")
        try:
            msg = messages.decode(data)
        except messages.MessageError as exc:
            return self._reject(exc.fault, str(exc))      # undecodable, version or invalid
        self._sequence(msg)
        self._received += 1
        self.readings.apply(msg)

    def _sequence(self, msg: dict) -> None:
        seq = msg["seq"]
        last = self._last_seq
        if last is not None:
            if seq > last + 1:
                self._seq_gaps += 1
                self._seq_missing += seq - last - 1
            elif seq <= last:
                self._restarts += 1
                self._restart_unconfirmed = True
                if seq > 0:         # the HAN numbers from 0 (openseg.han_reader.channel_sender)
                    self._seq_gaps += 1
                    self._seq_missing += seq
                self.log(f"channel: sequence went back from {last} to {seq}: the HAN process restarted")
        if msg["kind"] == messages.Kind.STATUS:
            started = msg["started"]
            if self._han_started is not None and started != self._han_started and not self._restart_unconfirmed:
                self._restarts += 1
                self.log("channel: the HAN process reports a new start time: it restarted")
            self._han_started = started
            self._restart_unconfirmed = False
        self._last_seq = seq

    def _reject(self, reason: str, detail: str) -> None:
        self._rejected[reason] += 1
        now = time.monotonic()
        last = self._last_log.get(reason)
        if last is None or now - last[0] >= LOG_EVERY_S:
            total = self._rejected[reason]
            since = total - (last[1] if last else 0)
            extra = f" ({since} such drops since the last line)" if last and since > 1 else ""
            self.log(f"channel: dropped ({reason}): {detail}{extra}")
            self._last_log[reason] = (now, total)

    def alive(self) -> bool:
        """The receiver thread exists and its loop turned recently (a thread that is blocked or
        dead-locked, e.g. inside readings.apply, is not alive: the watchdog then stops)."""
        return (self._thread is not None and self._thread.is_alive()
                and time.monotonic() - self._last_turn < STALLED_AFTER_S)

    # -- counters -------------------------------------------------------------------------------
    def _freeze(self) -> tuple:
        return (self._received, tuple(self._rejected.items()), self._seq_gaps, self._seq_missing,
                self._restarts, self._last_seq, self._internal_errors)

    def counters(self) -> dict:
        received, rejected, gaps, missing, restarts, last_seq, internal = self._published
        by_reason = dict(rejected)
        return {"received": received, "rejected": sum(by_reason.values()),
                "rejected_by_reason": by_reason, "seq_gaps": gaps, "seq_missing": missing,
                "han_restarts": restarts, "last_seq": last_seq, "internal_errors": internal,
                "queue_len": self.queue_len}

