"""conn.log records from the cell's ended flows (sans-IO: a Flow in, a dict out).

The cell's flow table already holds what Zeek's conn.log reports: endpoints, first and last packet
time, packets and IP bytes each way, the classifying rule and (for TCP) the handshake history. The
originator is the endpoint that sent the first SYN (or, for flows picked up midstream and for UDP, the
one the cell took for the client); `id.orig_*` is that endpoint, as in Zeek.

The uid is computed when the flow leaves the table, not on the cell's per-packet path: it is a pure
function of the canonical key and the first packet's microsecond (cell.flow_identity, shared with the
IPFIX exporter), so the analyzers compute the same value from the CREATED event's time and the
cell's IPFIX record carries it as flowId.
"""

from __future__ import annotations

import socket

from celltap.cell.flow_identity import flow_uid
from celltap.cell.flow_table import Flow
from celltap.cell.tcp_state import stream_base

from celltap.flowid import community_id

__all__ = ["addr_text", "conn_record", "flow_uid", "originator"]

_PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


def addr_text(l3: int, addr: bytes) -> str:
    """An address as text (IPv4 dotted, IPv6 compressed, as Zeek and the SF-TAP events write it)."""
    return socket.inet_ntop(socket.AF_INET if l3 == 4 else socket.AF_INET6, addr)


def originator(flow: Flow) -> int:
    """Endpoint number (1 or 2) that originated the flow."""
    return flow.orig


def payload_bytes(flow: Flow, d: int) -> int | None:
    """Payload bytes endpoint d sent: TCP by sequence numbers as Zeek counts (gaps included, modulo
    2**32), from the SYN's sequence number (picked up midstream: the first one seen) to the FIN's or the
    next expected byte; datagrams by their payloads. None for a TCP direction that sent nothing."""
    if flow.l4 != 6:
        return flow.payload1 if d == 1 else flow.payload2
    isn = stream_base(flow, d)
    if isn < 0:
        return None
    fin = flow.fin1 if d == 1 else flow.fin2
    nxt = flow.nxt1 if d == 1 else flow.nxt2
    end = fin if fin >= 0 else nxt
    if end < 0:
        return 0
    return (end - isn - 1) & 0xFFFFFFFF


def conn_record(flow: Flow, service: str | None) -> dict:
    """One conn.log record for a flow that left the table (`service`: the classifying rule, if any)."""
    orig = originator(flow)
    if orig == 1:
        oh, op, rh, rp = flow.addr1, flow.port1, flow.addr2, flow.port2
        opk, oipb, rpk, ripb = flow.pkts1, flow.octets1, flow.pkts2, flow.octets2
    else:
        oh, op, rh, rp = flow.addr2, flow.port2, flow.addr1, flow.port1
        opk, oipb, rpk, ripb = flow.pkts2, flow.octets2, flow.pkts1, flow.octets1
    l4 = flow.l4
    orig_h, resp_h = addr_text(flow.l3, oh), addr_text(flow.l3, rh)
    rec: dict = {
        "ts": flow.start_ns / 1e9,
        "uid": flow_uid(flow),
        "community_id": community_id(l4, oh, op, rh, rp) if l4 not in (1, 58) else "",
        "id.orig_h": orig_h,
        "id.orig_p": op,
        "id.resp_h": resp_h,
        "id.resp_p": rp,
        "proto": _PROTO.get(l4, str(l4)),
    }
    if service:
        rec["service"] = service
    rec["duration"] = max(flow.last_ns - flow.start_ns, 0) / 1e9
    ob, rb = payload_bytes(flow, orig), payload_bytes(flow, 3 - orig)
    if ob is not None and rb is not None:
        rec["orig_bytes"] = ob
        rec["resp_bytes"] = rb
    if l4 == 6:
        rec["conn_state"] = flow.conn_state()
        rec["missed_bytes"] = flow.missed_bytes
        rec["history"] = flow.history
    if flow.vlan:
        rec["vlan"] = flow.vlan
        if flow.inner_vlan:
            rec["inner_vlan"] = flow.inner_vlan
    rec["orig_pkts"] = opk
    rec["orig_ip_bytes"] = oipb
    rec["resp_pkts"] = rpk
    rec["resp_ip_bytes"] = ripb
    return rec
