"""Batch decoder, tunnels: find GRE / ERSPAN / VXLAN / Geneve / IP-in-IP packets among decoded frames.

Runs after a pass of the IP and transport stages, on the frames of that pass that decoded
cleanly (status OK) and are not IP fragments (a fragment's inner packet is incomplete; the
reassembled datagram is decapsulated when it is decoded again as raw IP).  It returns the frames
to decode again, with `off` / `et` of their inner header, after resetting their L3/L4 columns:
the columns then describe the innermost packet only.  Packets that merely look like a tunnel
(GRE of another version or with routing, a GRE protocol we do not follow, UDP to the VXLAN port
without the VXLAN I flag) stay what they were: the outer flow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from celltap.decode.constants import (
    ENCAP_ERSPAN,
    ENCAP_GENEVE,
    ENCAP_GRE,
    ENCAP_IPIP,
    ENCAP_VXLAN,
    ETH_ERSPAN_2,
    ETH_ERSPAN_3,
    ETH_IPV4,
    ETH_IPV6,
    ETH_MPLS_MULTICAST,
    ETH_MPLS_UNICAST,
    ETH_TEB,
    GRE_CSUM,
    GRE_KEY,
    GRE_ROUTING,
    GRE_SEQ,
    GRE_VERSION,
    MAX_ENCAP_DEPTH,
    PROTO_GRE,
    PROTO_IPIP,
    PROTO_IPV6_IN_IP,
    PROTO_UDP,
    VXLAN_FLAG_I,
)
from celltap.decode.gather import Active, u8, u16
from celltap.decode.options import DecodeOptions
from celltap.decode.reasons import Reason
from celltap.pcap.batch import FrameBatch

if TYPE_CHECKING:
    from celltap.decode.batch import DecodedBatch

_GENEVE_NEXT = np.array([ETH_TEB, ETH_IPV4, ETH_IPV6], np.int64)
_GRE_IP = np.array([ETH_IPV4, ETH_IPV6, ETH_MPLS_UNICAST, ETH_MPLS_MULTICAST], np.int64)
# Columns that describe one IP packet: reset before the inner packet is decoded.
_INNER_COLUMNS = (
    "l3", "l4", "src", "dst", "sport", "dport", "l3_off", "l4_off", "payload_off", "payload_len",
    "ip_len", "ttl", "is_frag", "frag_off", "frag_more", "frag_id", "tcp_flags", "tcp_seq", "tcp_ack",
    "icmp_type", "icmp_code",
)  # fmt: skip
_UNSET = {"l3_off": -1, "l4_off": -1, "payload_off": -1}


def tunnel_stage(
    batch: FrameBatch,
    out: DecodedBatch,
    level: np.ndarray | None,
    options: DecodeOptions,
    depth: np.ndarray,
) -> Active | None:
    """Frames of `level` (None: all) that carry a tunnel, set up for their inner header."""
    if level is None:
        l4, dport = out.l4, out.dport
    else:
        l4, dport = out.l4[level], out.dport[level]
    ip_tunnel = (l4 == PROTO_GRE) | (l4 == PROTO_IPIP) | (l4 == PROTO_IPV6_IN_IP)  # uint8 compares: cheap
    udp = _on_ports(dport, options.udp_tunnel_ports()) & (l4 == PROTO_UDP)
    cand = ip_tunnel | udp
    if not cand.any():
        return None
    pos = np.flatnonzero(cand)
    idx = pos if level is None else level[pos]
    idx = idx[(out.status[idx] == Reason.OK) & ~out.is_frag[idx]]
    proto = out.l4[idx]
    gre, ipip = proto == PROTO_GRE, (proto == PROTO_IPIP) | (proto == PROTO_IPV6_IN_IP)
    vx = (proto == PROTO_UDP) & _on_ports(out.dport[idx], options.vxlan_ports)  # VXLAN first, as scalar
    gn = (proto == PROTO_UDP) & ~vx
    found = (
        _gre(batch, out, idx[gre]),
        _ipip(out, idx[ipip]),
        _vxlan(batch, out, idx[vx]),
        _geneve(batch, out, idx[gn]),
    )
    parts = [p for p in found if len(p)]
    if not parts:
        return None
    a = Active.concat(parts)
    deep = depth[a.idx] >= MAX_ENCAP_DEPTH
    a.fail(deep, Reason.TOO_DEEP, out.status)
    depth[a.idx] += 1
    out.encap[a.idx] |= a.arrays.pop("bit").astype(np.uint16)
    for name in _INNER_COLUMNS:
        getattr(out, name)[a.idx] = _UNSET.get(name, 0)
    return a


def _on_ports(dport: np.ndarray, ports: tuple[int, ...]) -> np.ndarray:
    """dport is one of `ports` (a few uint16 compares: cheaper than np.isin)."""
    hit = np.zeros(dport.shape, bool)
    for port in ports:
        hit |= dport == port
    return hit


def _gre(batch: FrameBatch, out: DecodedBatch, idx: np.ndarray) -> Active:
    """GRE version 0 (RFC 2784 / 2890) carrying IP, MPLS, Ethernet or ERSPAN."""
    buf, st = batch.buf, out.status
    a = Active(idx, off=out.l4_off[idx].astype(np.int64))
    cap = batch.caplens[idx]
    end = out.l3_off[idx].astype(np.int64) + out.ip_len[idx]
    a.fail((a["off"] + 4 > end) | (a["off"] + 4 > cap), Reason.TRUNCATED_L4, st)
    p = batch.offsets[a.idx] + a["off"]
    flags = u16(buf, p)
    a["et"] = u16(buf, p + 2)
    a["flags"] = flags
    a = a.take((flags & (GRE_ROUTING | GRE_VERSION)) == 0)
    flags = a["flags"]
    hlen = 4 + 4 * ((flags & GRE_CSUM) != 0) + 4 * ((flags & GRE_KEY) != 0) + 4 * ((flags & GRE_SEQ) != 0)
    a["off"] += hlen
    cap = batch.caplens[a.idx]
    end = out.l3_off[a.idx].astype(np.int64) + out.ip_len[a.idx]
    a.fail((a["off"] > end) | (a["off"] > cap), Reason.TRUNCATED_L4, st)
    et = a["et"]
    a = a.take(np.isin(et, _GRE_IP) | (et == ETH_TEB) | (et == ETH_ERSPAN_2) | (et == ETH_ERSPAN_3))
    et = a["et"]
    e3 = et == ETH_ERSPAN_3
    a.fail(e3 & (batch.caplens[a.idx] < a["off"] + 12), Reason.TRUNCATED_L2, st)
    et, off, flags = a["et"], a["off"], a["flags"]
    e2 = et == ETH_ERSPAN_2
    e3 = et == ETH_ERSPAN_3
    # ERSPAN II has an 8-byte header (type I, without the GRE sequence number, has none); ERSPAN III
    # has 12 bytes, plus an 8-byte platform subheader when its O flag (last bit) is set.
    o_flag = u8(batch.buf, batch.offsets[a.idx] + off + 11) & 1
    a["off"] = off + np.where(e2 & ((flags & GRE_SEQ) != 0), 8, 0) + np.where(e3, 12 + 8 * o_flag, 0)
    a["bit"] = np.where(e2 | e3, ENCAP_ERSPAN, ENCAP_GRE)
    a["et"] = np.where(e2 | e3, ETH_TEB, et)
    del a.arrays["flags"]
    return a


def _ipip(out: DecodedBatch, idx: np.ndarray) -> Active:
    """IPv4 (protocol 4) or IPv6 (41) right after the IP header (RFC 2003, RFC 4213)."""
    et = np.where(out.l4[idx] == PROTO_IPIP, ETH_IPV4, ETH_IPV6)
    bit = np.full(idx.size, ENCAP_IPIP, np.int64)
    return Active(idx, off=out.l4_off[idx].astype(np.int64), et=et, bit=bit)


def _vxlan(batch: FrameBatch, out: DecodedBatch, idx: np.ndarray) -> Active:
    """VXLAN (RFC 7348): 8-byte header with the I flag, then an Ethernet frame."""
    a = Active(idx, off=out.payload_off[idx].astype(np.int64))
    end = out.l3_off[idx].astype(np.int64) + out.ip_len[idx]
    a = a.take(a["off"] + 8 <= end)
    a.fail(a["off"] + 8 > batch.caplens[a.idx], Reason.TRUNCATED_L4, out.status)
    a = a.take((u8(batch.buf, batch.offsets[a.idx] + a["off"]) & VXLAN_FLAG_I) != 0)
    a["off"] += 8
    a["et"] = np.full(len(a), ETH_TEB, np.int64)
    a["bit"] = np.full(len(a), ENCAP_VXLAN, np.int64)
    return a


def _geneve(batch: FrameBatch, out: DecodedBatch, idx: np.ndarray) -> Active:
    """Geneve (RFC 8926): 8 bytes + options, version 0, carrying Ethernet, IPv4 or IPv6."""
    a = Active(idx, off=out.payload_off[idx].astype(np.int64))
    end = out.l3_off[idx].astype(np.int64) + out.ip_len[idx]
    a = a.take(a["off"] + 8 <= end)
    a.fail(a["off"] + 8 > batch.caplens[a.idx], Reason.TRUNCATED_L4, out.status)
    p = batch.offsets[a.idx] + a["off"]
    first = u8(batch.buf, p)
    a["et"] = u16(batch.buf, p + 2)
    a["hlen"] = 8 + (first & 0x3F) * 4
    a = a.take(((first >> 6) == 0) & np.isin(a["et"], _GENEVE_NEXT))
    a["off"] += a.arrays.pop("hlen")
    end = out.l3_off[a.idx].astype(np.int64) + out.ip_len[a.idx]
    a.fail((a["off"] > end) | (a["off"] > batch.caplens[a.idx]), Reason.TRUNCATED_L4, out.status)
    a["bit"] = np.full(len(a), ENCAP_GENEVE, np.int64)
    return a
