"""Every request the HAN sends, one builder each (in the spirit of OpenSSH's monitor_wrap.c).

Each function returns the frame data of exactly one kind of request; nothing here takes a cluster, a
profile or a command id as a parameter, so no caller can ask for a frame the gateway does not mean to
send. The egress guard still checks every frame itself: these builders are the one place requests are
made, the guard is the one place they are allowed.
"""
from __future__ import annotations

from . import xbee_frames, zcl, zdo
from .egress_guard import HOST_ENDPOINT, METER_NWK, TX_OPTIONS_ZCL, TX_OPTIONS_ZDO, Meter


def at_query(frame_id: int, command: str) -> bytes:
    """A local AT query: the command without a parameter."""
    return xbee_frames.ATCommand(frame_id, command).encode()


def coordinator_ieee_addr(frame_id: int, seq: int) -> bytes:
    """IEEE_addr_req to the coordinator (the meter) about itself."""
    return xbee_frames.ExplicitTx(frame_id, xbee_frames.COORDINATOR_64, METER_NWK, zdo.ENDPOINT, zdo.ENDPOINT,
                                  zdo.IEEE_ADDR_REQ, zdo.PROFILE, zdo.ieee_addr_req(seq, METER_NWK),
                                  options=TX_OPTIONS_ZDO).encode()


def match_simple_metering(frame_id: int, seq: int) -> bytes:
    """Match_Desc_req broadcast to every always-on node: who serves Simple Metering, at which endpoint."""
    return xbee_frames.ExplicitTx(
        frame_id, xbee_frames.BROADCAST_64, xbee_frames.BROADCAST_RX_ON_IDLE_16, zdo.ENDPOINT, zdo.ENDPOINT,
        zdo.MATCH_DESC_REQ, zdo.PROFILE,
        zdo.match_desc_req(seq, xbee_frames.BROADCAST_RX_ON_IDLE_16, zcl.PROFILE_SMART_ENERGY,
                           (zcl.CLUSTER_SIMPLE_METERING,)),
        options=TX_OPTIONS_ZDO).encode()


def read_meter(frame_id: int, seq: int, meter: Meter, attributes: tuple[zcl.Attribute, ...]) -> bytes:
    """Read Attributes on the meter's Simple Metering server (at 0x0000), unicast and APS-encrypted."""
    return xbee_frames.ExplicitTx(frame_id, meter.ieee, METER_NWK, HOST_ENDPOINT, meter.endpoint,
                                  zcl.CLUSTER_SIMPLE_METERING, zcl.PROFILE_SMART_ENERGY,
                                  zcl.read_attributes(seq, attributes), options=TX_OPTIONS_ZCL).encode()
