"""The ZigBee nodes behind the radio and what each answers over the air. Pure: no clock, no I/O.

The network coordinator sits at 0x0000. With the default meter address 0x0000 the meter *is* the
coordinator (the usual Smart Energy setup). Otherwise the coordinator is an ESI without a metering
endpoint (it answers ZDO, and its Time/Price endpoint refuses metering reads), and the meter is a
separate node at the given address, with its own IEEE address, that answers the broadcast
Match_Desc_req from there.

A frame delivered to a node goes through what a ZigBee stack does with it: ZDO on endpoint 0; for
application frames the APS layer drops a frame for an endpoint that does not exist or whose profile
differs, and a Smart Energy meter drops application frames that were not APS-encrypted. Only then
does the endpoint's cluster server see it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import metering
from .metering import ZclFrame

ZDO_PROFILE = 0x0000
ZDO_ENDPOINT = 0x00
RESPONSE_BIT = 0x8000

NWK_ADDR_REQ = 0x0000
IEEE_ADDR_REQ = 0x0001
SIMPLE_DESC_REQ = 0x0004
ACTIVE_EP_REQ = 0x0005
MATCH_DESC_REQ = 0x0006

# ZDO status codes
ZDO_SUCCESS = 0x00
ZDO_INV_REQUESTTYPE = 0x80
ZDO_DEVICE_NOT_FOUND = 0x81
ZDO_INVALID_EP = 0x82
ZDO_NOT_ACTIVE = 0x83
ZDO_NOT_SUPPORTED = 0x84

NWK_BROADCASTS = frozenset((0xFFFC, 0xFFFD, 0xFFFF))
ALL_ENDPOINTS = 0xFF

COORDINATOR_IEEE = 0x000D6F000ABCDEF0
SEPARATE_METER_IEEE = 0x000D6F000C4D2A17

DEVICE_ESI = 0x0500
DEVICE_METERING = 0x0501
CLUSTER_TIME = 0x000A
CLUSTER_PRICE = 0x0700


@dataclass(frozen=True)
class Endpoint:
    number: int
    profile: int
    device_id: int
    version: int
    in_clusters: tuple[int, ...]
    out_clusters: tuple[int, ...] = ()

    def simple_descriptor(self) -> bytes:
        return (struct.pack("<BHHBB", self.number, self.profile, self.device_id, self.version & 0x0F,
                            len(self.in_clusters))
                + b"".join(struct.pack("<H", c) for c in self.in_clusters)
                + bytes((len(self.out_clusters),))
                + b"".join(struct.pack("<H", c) for c in self.out_clusters))


@dataclass
class Node:
    name: str
    ieee: int
    nwk: int
    endpoints: tuple[Endpoint, ...]
    is_meter: bool
    powered: bool = True

    def endpoint(self, number: int) -> Endpoint | None:
        return next((e for e in self.endpoints if e.number == number), None)


@dataclass(frozen=True)
class NodeReply:
    """One frame a node sends back to the radio. Either `payload` is final, or `read` is a Read
    Attributes the meter answers with values sampled when the reply goes out."""
    node: Node
    src_ep: int
    dst_ep: int
    cluster: int
    profile: int
    payload: bytes = b""
    read: metering.ReadRequest | None = None

    @property
    def is_zcl(self) -> bool:
        return self.profile != ZDO_PROFILE


@dataclass
class Delivery:
    replies: list[NodeReply] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Network:
    def __init__(self, meter_nwk: int = 0x0000, meter_endpoint: int = 9):
        meter_ep = Endpoint(meter_endpoint, metering.PROFILE_SMART_ENERGY, DEVICE_METERING, 1,
                            (metering.CLUSTER_METERING,))
        if meter_nwk == 0x0000:
            self.meter = Node("meter", COORDINATOR_IEEE, 0x0000, (meter_ep,), is_meter=True)
            self.coordinator = self.meter
            self.nodes: tuple[Node, ...] = (self.meter,)
        else:
            esi_ep = Endpoint(1, metering.PROFILE_SMART_ENERGY, DEVICE_ESI, 1, (CLUSTER_TIME, CLUSTER_PRICE))
            self.coordinator = Node("coordinator", COORDINATOR_IEEE, 0x0000, (esi_ep,), is_meter=False)
            self.meter = Node("meter", SEPARATE_METER_IEEE, meter_nwk, (meter_ep,), is_meter=True)
            self.nodes = (self.coordinator, self.meter)

    def by_ieee(self, ieee: int) -> Node | None:
        return next((n for n in self.nodes if n.ieee == ieee), None)

    def by_nwk(self, nwk: int) -> Node | None:
        return next((n for n in self.nodes if n.nwk == nwk), None)


def deliver(node: Node, cluster: int, profile: int, src_ep: int, dst_ep: int, payload: bytes,
            aps_encrypted: bool, broadcast: bool) -> Delivery:
    """What `node` answers to an APS frame that reached it."""
    out = Delivery()
    if not node.powered:
        out.notes.append(f"{node.name} is powered off")
        return out
    if dst_ep == ZDO_ENDPOINT:
        if profile != ZDO_PROFILE:
            out.notes.append(f"{node.name}: profile 0x{profile:04x} on endpoint 0 dropped")
            return out
        rsp, note = zdo_response(node, cluster, payload, broadcast)
        out.notes.append(f"{node.name}: {note}")
        if rsp is not None:
            out.replies.append(NodeReply(node, ZDO_ENDPOINT, src_ep, cluster | RESPONSE_BIT, ZDO_PROFILE, rsp))
        return out

    targets = node.endpoints if dst_ep == ALL_ENDPOINTS else tuple(e for e in node.endpoints if e.number == dst_ep)
    if not targets:
        out.notes.append(f"{node.name}: no endpoint {dst_ep}, frame dropped")
    for ep in targets:
        if ep.profile != profile:
            out.notes.append(f"{node.name}: endpoint {ep.number} is profile 0x{ep.profile:04x}, frame dropped")
            continue
        if profile == metering.PROFILE_SMART_ENERGY and not aps_encrypted:
            out.notes.append(f"{node.name}: Smart Energy frame without APS encryption dropped")
            continue
        zcl = ZclFrame.parse(payload)
        if zcl is None:
            out.notes.append(f"{node.name}: ZCL frame too short, dropped")
            continue
        if cluster not in ep.in_clusters:
            answer = metering.refuse_cluster(zcl, broadcast, cluster)
        elif node.is_meter and cluster == metering.CLUSTER_METERING:
            answer = metering.serve_metering(zcl, broadcast)
        else:
            answer = metering.refuse_unimplemented(zcl, broadcast)
        out.notes.append(f"{node.name} ep {ep.number}: {answer.note or 'read'}")
        if answer.read is not None or answer.payload is not None:
            out.replies.append(NodeReply(node, ep.number, src_ep, cluster, profile,
                                         answer.payload or b"", answer.read))
    return out


def zdo_response(node: Node, cluster: int, payload: bytes, broadcast: bool) -> tuple[bytes | None, str]:
    """The node's ZDO answer (payload of cluster | 0x8000), or None when it stays silent, and a note."""
    handler = _ZDO_HANDLERS.get(cluster)
    if cluster & RESPONSE_BIT:
        return None, f"ZDO response 0x{cluster:04x} ignored"
    if not payload:
        return None, f"empty ZDO request 0x{cluster:04x} ignored"
    if handler is None:
        if broadcast:
            return None, f"unsupported ZDO request 0x{cluster:04x} ignored"
        return bytes((payload[0], ZDO_NOT_SUPPORTED)), f"ZDO request 0x{cluster:04x} not supported"
    try:
        return handler(node, payload, broadcast)
    except (struct.error, IndexError):
        return None, f"malformed ZDO request 0x{cluster:04x} ignored"


def _nwk_addr(node: Node, p: bytes, broadcast: bool):
    seq, ieee, req_type, start = struct.unpack_from("<BQBB", p)
    if ieee != node.ieee:
        if broadcast:
            return None, "NWK_addr_req for another device"
        return struct.pack("<BBQH", seq, ZDO_DEVICE_NOT_FOUND, ieee, 0xFFFE), "NWK_addr_req: not found"
    return _addr_rsp(seq, node, req_type), "NWK_addr_rsp"


def _ieee_addr(node: Node, p: bytes, broadcast: bool):
    seq, nwk, req_type, start = struct.unpack_from("<BHBB", p)
    if nwk != node.nwk:
        if broadcast:
            return None, "IEEE_addr_req for another device"
        return (struct.pack("<BBQH", seq, ZDO_DEVICE_NOT_FOUND, 0xFFFFFFFFFFFFFFFF, nwk),
                "IEEE_addr_req: not found")
    return _addr_rsp(seq, node, req_type), "IEEE_addr_rsp"


def _addr_rsp(seq: int, node: Node, req_type: int) -> bytes:
    if req_type not in (0, 1):
        return struct.pack("<BBQH", seq, ZDO_INV_REQUESTTYPE, node.ieee, node.nwk)
    rsp = struct.pack("<BBQH", seq, ZDO_SUCCESS, node.ieee, node.nwk)
    if req_type == 1:
        rsp += bytes((0, 0))          # extended: no associated devices listed, start index 0
    return rsp


def _simple_desc(node: Node, p: bytes, broadcast: bool):
    seq, nwk, number = struct.unpack_from("<BHB", p)
    if nwk != node.nwk:
        if broadcast:
            return None, "Simple_Desc_req for another device"
        return struct.pack("<BBHB", seq, ZDO_DEVICE_NOT_FOUND, nwk, 0), "Simple_Desc_req: not found"
    if not 1 <= number <= 240:
        return struct.pack("<BBHB", seq, ZDO_INVALID_EP, nwk, 0), f"Simple_Desc_req: invalid endpoint {number}"
    ep = node.endpoint(number)
    if ep is None:
        return struct.pack("<BBHB", seq, ZDO_NOT_ACTIVE, nwk, 0), f"Simple_Desc_req: endpoint {number} not active"
    desc = ep.simple_descriptor()
    return struct.pack("<BBHB", seq, ZDO_SUCCESS, nwk, len(desc)) + desc, "Simple_Desc_rsp"


def _active_ep(node: Node, p: bytes, broadcast: bool):
    seq, nwk = struct.unpack_from("<BH", p)
    if nwk != node.nwk:
        if broadcast:
            return None, "Active_EP_req for another device"
        return struct.pack("<BBHB", seq, ZDO_DEVICE_NOT_FOUND, nwk, 0), "Active_EP_req: not found"
    eps = bytes(e.number for e in node.endpoints)
    return struct.pack("<BBHB", seq, ZDO_SUCCESS, nwk, len(eps)) + eps, "Active_EP_rsp"


def _match_desc(node: Node, p: bytes, broadcast: bool):
    seq, nwk, profile, n_in = struct.unpack_from("<BHHB", p)
    in_clusters = struct.unpack_from(f"<{n_in}H", p, 6)
    pos = 6 + 2 * n_in
    n_out = p[pos]
    out_clusters = struct.unpack_from(f"<{n_out}H", p, pos + 1)
    if nwk != node.nwk and nwk not in NWK_BROADCASTS:
        if broadcast:
            return None, "Match_Desc_req for another device"
        return struct.pack("<BBHB", seq, ZDO_DEVICE_NOT_FOUND, nwk, 0), "Match_Desc_req: not found"
    matches = bytes(
        e.number for e in node.endpoints
        if (e.profile == profile or profile == 0xFFFF)
        and (set(in_clusters) & set(e.in_clusters) or set(out_clusters) & set(e.out_clusters)))
    if not matches and broadcast:
        return None, "Match_Desc_req: no match, silent (broadcast)"
    rsp = struct.pack("<BBHB", seq, ZDO_SUCCESS, node.nwk, len(matches)) + matches
    return rsp, f"Match_Desc_rsp with endpoints {list(matches)}"


_ZDO_HANDLERS = {
    NWK_ADDR_REQ: _nwk_addr,
    IEEE_ADDR_REQ: _ieee_addr,
    SIMPLE_DESC_REQ: _simple_desc,
    ACTIVE_EP_REQ: _active_ep,
    MATCH_DESC_REQ: _match_desc,
}
