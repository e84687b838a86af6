"""The XBee SE router radio: AT queries, join state, explicit TX routing, TX status. Pure.

`Radio.handle(frame_data, now)` takes one frame the host sent and returns the frames the radio will
send back, each with a delay; `tick(now)` returns what the radio says on its own (joining). Time is
seconds on any monotonic clock the caller chooses. Nothing here writes to a port or sleeps, so the
exact bytes of every answer can be tested without a pty.

What a real XBee SE (firmware 33xx, AP=2, AO=1) does that matters to a host:
  - after power-up or a reset it sends modem status 0x00, scans (AI = 0xFF, MY = 0xFFFE) and, once
    joined, sends modem status 0x02 (AI = 0x00);
  - a transmission while not joined fails at once with TX status delivery 0x22;
  - a unicast to a silent node fails after the stack's retries with delivery 0x21;
  - TX status (for a non-zero frame id) precedes any answer the destination sends;
  - an AT command carrying a parameter is never applied here: this radio belongs to the utility's
    network and the gateway must only read it, so the emulator answers "invalid parameter".
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import api_frames as af
from . import network as nw
from .metering import ReadRequest

DELIVERY_FAILURE_DELAY_S = 0.4      # what the stack's MAC and APS retries take before giving up
FAILED_RETRIES = 3
DELIVERY_SELF_ADDRESSED = 0x23
REMOTE_AT_TRANSMISSION_FAILED = 0x04

AT_OK, AT_ERROR, AT_INVALID_COMMAND, AT_INVALID_PARAMETER = 0, 1, 2, 3


@dataclass(frozen=True)
class RadioConfig:
    ieee: int = 0x0013A200415E7C01
    nwk: int = 0x7A3C
    api_mode: int = 2
    api_options: int = 1
    firmware: int = 0x3362
    hardware: int = 0x1A42
    join_delay_s: float = 0.5
    reply_delay_s: float = 0.0          # extra latency of the meter's ZCL answers
    aps_encryption: bool = True         # replies carry RX option 0x20
    channel: int = 0x14
    pan_id: int = 0x1A2B
    extended_pan_id: int = nw.COORDINATOR_IEEE
    max_payload: int = 0x0050
    rssi: int = 0x3A                    # DB: -58 dBm
    encryption_options: int = 0x02      # EO: use the trust centre


@dataclass(frozen=True)
class Reply:
    """A frame the radio sends `delay_s` after the event that caused it. `source` names the node it
    comes from ("radio" for the radio's own frames) so that a power-off can cancel what is in flight.
    With `read` set, `frame` is the 0x91 header and the ZCL answer is appended when it is sent."""
    delay_s: float
    source: str
    frame: bytes
    read: ReadRequest | None = None


@dataclass
class Handled:
    replies: list[Reply] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Radio:
    def __init__(self, config: RadioConfig, network: nw.Network, now: float):
        self.config = config
        self.network = network
        self.joined = False
        self.join_at = now + config.join_delay_s

    # ---- the radio's own events --------------------------------------------------------------
    def reset(self, now: float) -> list[Reply]:
        """Hardware reset (or power-up): announce it, then rejoin after the join delay."""
        self.joined = False
        self.join_at = now + self.config.join_delay_s
        return [Reply(0.0, "radio", af.modem_status(af.MODEM_HARDWARE_RESET))]

    def tick(self, now: float) -> list[Reply]:
        if not self.joined and now >= self.join_at:
            self.joined = True
            return [Reply(0.0, "radio", af.modem_status(af.MODEM_JOINED))]
        return []

    def next_event(self) -> float | None:
        return None if self.joined else self.join_at

    # ---- frames from the host ------------------------------------------------------------------
    def handle(self, data: bytes, now: float) -> Handled:
        out = Handled(replies=self.tick(now))
        kind = data[0]
        if kind in (af.AT_COMMAND, af.AT_COMMAND_QUEUE):
            self._at(data, out)
        elif kind == af.EXPLICIT_TX:
            tx = af.ExplicitTx.parse(data)
            if tx is None:
                out.notes.append("explicit TX shorter than its header ignored")
            else:
                self._transmit(tx, out)
        elif kind == af.TX_REQUEST:
            self._plain_transmit(data, out)
        elif kind == af.REMOTE_AT:
            self._remote_at(data, out)
        else:
            out.notes.append(f"frame type 0x{kind:02x} not handled by this radio")
        return out

    def at_value(self, command: bytes) -> bytes | None:
        """The value of a read-only AT query in the current state, or None if not one of ours."""
        c, joined = self.config, self.joined
        values = {
            b"VR": struct.pack(">H", c.firmware),
            b"HV": struct.pack(">H", c.hardware),
            b"AP": bytes((c.api_mode,)),
            b"AO": bytes((c.api_options,)),
            b"AI": bytes((0x00 if joined else 0xFF,)),
            b"SH": struct.pack(">I", c.ieee >> 32),
            b"SL": struct.pack(">I", c.ieee & 0xFFFFFFFF),
            b"MY": struct.pack(">H", c.nwk if joined else 0xFFFE),
            b"EE": b"\x01",
            b"CH": bytes((c.channel if joined else 0,)),
            b"OP": struct.pack(">Q", c.extended_pan_id if joined else 0),
            b"OI": struct.pack(">H", c.pan_id if joined else 0xFFFF),
            b"NP": struct.pack(">H", c.max_payload),
            b"DB": bytes((c.rssi,)),
            b"EO": bytes((c.encryption_options,)),
        }
        return values.get(command)

    def _at(self, data: bytes, out: Handled) -> None:
        if len(data) < 4:
            out.notes.append("AT command frame too short, ignored")
            return
        frame_id, command, parameter = data[1], data[2:4], data[4:]
        value = self.at_value(command)
        if value is None:
            status, value = AT_INVALID_COMMAND, b""
            out.notes.append(f"AT {command!r}: invalid command")
        elif parameter:
            status, value = AT_INVALID_PARAMETER, b""
            out.notes.append(f"AT {command!r} with parameter {parameter.hex()}: refused, nothing applied")
        else:
            status = AT_OK
        if frame_id:
            out.replies.append(Reply(0.0, "radio", af.at_response(frame_id, command, status, value)))

    def _remote_at(self, data: bytes, out: Handled) -> None:
        # The meter is not an XBee: a remote AT command can only fail, and it is never applied.
        out.notes.append("remote AT command refused, nothing applied")
        if len(data) >= 15 and data[1]:
            dest64, dest16 = struct.unpack_from(">QH", data, 2)
            out.replies.append(Reply(0.0, "radio", af.remote_at_response(
                data[1], dest64, dest16, data[13:15], REMOTE_AT_TRANSMISSION_FAILED)))

    def _plain_transmit(self, data: bytes, out: Handled) -> None:
        # 0x10 sends to the Digi data endpoint 0xE8, which neither the meter nor the ESI has.
        if len(data) < 14:
            out.notes.append("TX request shorter than its header ignored")
            return
        fid, dest64, dest16, radius, options = struct.unpack_from(">BQHBB", data, 1)
        self._transmit(af.ExplicitTx(fid, dest64, dest16, 0xE8, 0xE8, 0x0011, 0xC105, radius, options,
                                     data[14:]), out)

    def _resolve(self, tx: af.ExplicitTx) -> tuple[str, nw.Node | None]:
        if tx.dest64 == af.BROADCAST64 or (tx.dest64 == af.UNKNOWN64 and tx.dest16 in af.BROADCAST16):
            return "broadcast", None
        if tx.dest64 == self.config.ieee or (tx.dest64 == af.UNKNOWN64 and tx.dest16 == self.config.nwk):
            return "self", None
        if tx.dest64 == 0:
            return "unicast", self.network.coordinator
        if tx.dest64 == af.UNKNOWN64:
            node = self.network.by_nwk(tx.dest16)
        else:
            # The XBee finds the 16-bit address of a known 64-bit one itself if the host's is stale.
            node = self.network.by_ieee(tx.dest64)
        return ("unicast", node) if node else ("unknown", None)

    def _transmit(self, tx: af.ExplicitTx, out: Handled) -> None:
        def status(delay: float, dest16: int, retries: int, delivery: int, discovery: int = 0) -> None:
            if tx.frame_id:
                out.replies.append(Reply(delay, "radio", af.tx_status(tx.frame_id, dest16, retries, delivery,
                                                                      discovery)))

        if not self.joined:
            out.notes.append("transmission while not joined: delivery 0x22")
            status(0.0, 0xFFFD, 0, af.DELIVERY_NOT_JOINED)
            return
        mode, node = self._resolve(tx)
        if mode == "self":
            out.notes.append("transmission to the radio itself")
            status(0.0, self.config.nwk, 0, DELIVERY_SELF_ADDRESSED)
            return
        if mode == "unknown":
            out.notes.append(f"no device at {tx.dest64:016x}/0x{tx.dest16:04x}: delivery 0x24")
            status(DELIVERY_FAILURE_DELAY_S, 0xFFFD, FAILED_RETRIES, af.DELIVERY_ADDRESS_NOT_FOUND, 0x01)
            return
        encrypted = bool(tx.options & af.TX_OPT_APS_ENCRYPTION)
        if mode == "broadcast":
            status(0.0, 0xFFFD, 0, af.DELIVERY_SUCCESS)
            for n in self.network.nodes:
                self._relay(tx, n, encrypted, True, out)
            return
        assert node is not None
        discovery = 0x00 if tx.dest16 == node.nwk else 0x01
        if not node.powered:
            out.notes.append(f"{node.name} does not acknowledge (powered off): delivery 0x21")
            status(DELIVERY_FAILURE_DELAY_S, node.nwk, FAILED_RETRIES, af.DELIVERY_NETWORK_ACK_FAILURE, discovery)
            return
        status(0.0, node.nwk, 0, af.DELIVERY_SUCCESS, discovery)
        self._relay(tx, node, encrypted, False, out)

    def _relay(self, tx: af.ExplicitTx, node: nw.Node, encrypted: bool, broadcast: bool, out: Handled) -> None:
        delivery = nw.deliver(node, tx.cluster, tx.profile, tx.src_ep, tx.dst_ep, tx.payload, encrypted, broadcast)
        out.notes.extend(delivery.notes)
        # Replies to a broadcast request are marked broadcast, as the project's protocol notes expect.
        options = af.RX_BROADCAST if broadcast else af.RX_ACKNOWLEDGED
        if self.config.aps_encryption:
            options |= af.RX_APS_ENCRYPTED
        for r in delivery.replies:
            frame = af.explicit_rx(r.node.ieee, r.node.nwk, r.src_ep, r.dst_ep, r.cluster, r.profile, options,
                                   r.payload)
            delay = self.config.reply_delay_s if r.is_zcl else 0.0
            out.replies.append(Reply(delay, r.node.name, frame, r.read))
