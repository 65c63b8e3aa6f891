"""Batch frame decoder: a FrameBatch in, numpy columns out, with no Python step per frame.

It mirrors `celltap.decode.scalar` rule for rule (property tests hold them equal).  Work proceeds
on shrinking index sets: each stage gathers the bytes it needs for the frames still in play, marks
the ones that fail with their Reason, and hands the rest on.  Gathers use `np.take(mode="clip")`
so a lying length can never read outside the buffer; the result of such a read is always masked
by a length check of the same stage.

Stages: link header (`batch_link.link_stage`), the VLAN / PPPoE / MPLS chain
(`batch_link.chain_stage`), IPv4 / IPv6, transport, then tunnels (`batch_tunnel`): frames that
carry GRE / ERSPAN / VXLAN go round the chain, IP and transport stages again for their inner
packet, at most MAX_ENCAP_DEPTH times.  Frames of a batch without any of these pay one table
lookup in the chain stage and a few column compares in the tunnel stage.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from celltap.decode.batch_link import Walk, chain_stage, link_stage
from celltap.decode.batch_tunnel import tunnel_stage
from celltap.decode.constants import (
    ETH_IPV4,
    L4_HEADER_LEN,
    MAX_ENCAP_DEPTH,
    MAX_V6_EXT_HEADERS,
    PORT_PROTOCOLS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    V6_EXT_AH,
    V6_EXT_FRAGMENT,
    V6_EXT_HEADERS,
)
from celltap.decode.gather import Active as _Active
from celltap.decode.gather import rows as _rows
from celltap.decode.gather import u8 as _u8
from celltap.decode.gather import u16 as _u16
from celltap.decode.gather import u32 as _u32
from celltap.decode.options import DEFAULT_OPTIONS, DecodeOptions
from celltap.decode.reasons import Reason
from celltap.pcap.batch import FrameBatch

_V6_EXT = np.array(V6_EXT_HEADERS, dtype=np.uint8)
_PORT_PROTOS = np.array(PORT_PROTOCOLS, dtype=np.uint8)
_L4_NEED = np.zeros(256, dtype=np.int64)
for _proto, _need in L4_HEADER_LEN.items():
    _L4_NEED[_proto] = _need


@dataclass
class DecodedBatch:
    """Column arrays, one entry per frame of `batch` (names match `Decoded`)."""

    batch: FrameBatch
    status: np.ndarray
    ethertype: np.ndarray
    vlan: np.ndarray
    vlan_inner: np.ndarray
    l3: np.ndarray
    l4: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    l3_off: np.ndarray
    l4_off: np.ndarray
    payload_off: np.ndarray
    payload_len: np.ndarray
    ip_len: np.ndarray
    ttl: np.ndarray
    is_frag: np.ndarray
    frag_off: np.ndarray
    frag_more: np.ndarray
    frag_id: np.ndarray
    tcp_flags: np.ndarray
    tcp_seq: np.ndarray
    tcp_ack: np.ndarray
    icmp_type: np.ndarray
    icmp_code: np.ndarray
    encap: np.ndarray

    def __len__(self) -> int:
        return int(self.status.shape[0])

    @classmethod
    def empty(cls, batch: FrameBatch) -> DecodedBatch:
        """Columns for `batch` filled with the 'nothing decoded' defaults."""
        n = len(batch)

        def z(dtype: type | str) -> np.ndarray:
            return np.zeros(n, dtype=dtype)

        def neg() -> np.ndarray:
            return np.full(n, -1, dtype=np.int32)

        return cls(
            batch=batch,
            status=z(np.uint8),
            ethertype=z(np.uint16),
            vlan=z(np.uint16),
            vlan_inner=z(np.uint16),
            l3=z(np.uint8),
            l4=z(np.uint8),
            src=np.zeros((n, 16), np.uint8),
            dst=np.zeros((n, 16), np.uint8),
            sport=z(np.uint16),
            dport=z(np.uint16),
            l3_off=neg(),
            l4_off=neg(),
            payload_off=neg(),
            payload_len=z(np.int32),
            ip_len=z(np.int32),
            ttl=z(np.uint8),
            is_frag=z(bool),
            frag_off=z(np.int32),
            frag_more=z(bool),
            frag_id=z(np.uint32),
            tcp_flags=z(np.uint8),
            tcp_seq=z(np.uint32),
            tcp_ack=z(np.uint32),
            icmp_type=z(np.uint8),
            icmp_code=z(np.uint8),
            encap=z(np.uint16),
        )

    def column_names(self) -> list[str]:
        """Names of the per-frame columns."""
        return [f.name for f in fields(self) if f.name != "batch"]

    def reason_counts(self) -> dict[Reason, int]:
        """How many frames ended with each status (for drop counters, counted per batch)."""
        counts = np.bincount(self.status, minlength=len(Reason))
        return {Reason(i): int(c) for i, c in enumerate(counts) if c}


def _ipv4(batch: FrameBatch, out: DecodedBatch, a: _Active) -> _Active:
    buf, st = batch.buf, out.status
    out.l3[a.idx] = 4
    cap = batch.caplens[a.idx]
    a.fail(cap < a["off"] + 20, Reason.TRUNCATED_L3, st)
    p = batch.offsets[a.idx] + a["off"]
    vb = _u8(buf, p)
    a["p"] = p
    a.fail((vb >> 4) != 4, Reason.BAD_IP_VERSION, st)
    ihl = (_u8(buf, a["p"]) & 0x0F) * 4
    a["ihl"] = ihl
    a.fail(ihl < 20, Reason.BAD_IHL, st)
    a.fail(batch.caplens[a.idx] < a["off"] + a["ihl"], Reason.TRUNCATED_L3, st)
    idx, p = a.idx, a["p"]
    tot = _u16(buf, p + 2)
    out.ip_len[idx] = tot
    out.src[idx, :4] = _rows(buf, p + 12, 4)
    out.dst[idx, :4] = _rows(buf, p + 16, 4)
    out.ttl[idx] = _u8(buf, p + 8)
    out.l4[idx] = _u8(buf, p + 9)
    out.frag_id[idx] = _u16(buf, p + 4)
    ff = _u16(buf, p + 6)
    more = (ff & 0x2000) != 0
    foff = (ff & 0x1FFF) * 8
    out.frag_more[idx] = more
    out.frag_off[idx] = foff
    out.is_frag[idx] = more | (foff > 0)
    wire = np.maximum(batch.wirelens[idx], batch.caplens[idx])
    a.fail((tot < a["ihl"]) | (a["off"] + tot > wire), Reason.BAD_TOTAL_LENGTH, st)
    a["l4off"] = a["off"] + a["ihl"]
    a["end"] = a["off"] + _u16(buf, a["p"] + 2)
    return a


def _ipv6(batch: FrameBatch, out: DecodedBatch, a: _Active) -> _Active:
    buf, st = batch.buf, out.status
    out.l3[a.idx] = 6
    a.fail(batch.caplens[a.idx] < a["off"] + 40, Reason.TRUNCATED_L3, st)
    p = batch.offsets[a.idx] + a["off"]
    a["p"] = p
    a.fail((_u8(buf, p) >> 4) != 6, Reason.BAD_IP_VERSION, st)
    idx, p = a.idx, a["p"]
    plen = _u16(buf, p + 4)
    nh = _u8(buf, p + 6)
    out.ip_len[idx] = 40 + plen
    out.ttl[idx] = _u8(buf, p + 7)
    out.src[idx] = _rows(buf, p + 8, 16)
    out.dst[idx] = _rows(buf, p + 24, 16)
    out.l4[idx] = nh
    a["nh"] = nh
    a["end"] = a["off"] + 40 + plen
    wire = np.maximum(batch.wirelens[idx], batch.caplens[idx])
    a.fail(a["end"] > wire, Reason.BAD_TOTAL_LENGTH, st)
    a["cur"] = a["off"] + 40
    a["done"] = np.zeros(a.idx.size, dtype=bool)  # stopped at a non-first fragment header
    for _ in range(MAX_V6_EXT_HEADERS):
        ext = np.isin(a["nh"], _V6_EXT) & ~a["done"]
        if not ext.any():
            break
        cap = batch.caplens[a.idx]
        a.fail(ext & (a["cur"] + 8 > a["end"]), Reason.BAD_EXT_HEADER, st)
        ext = np.isin(a["nh"], _V6_EXT) & ~a["done"]
        cap = batch.caplens[a.idx]
        a.fail(ext & (a["cur"] + 8 > cap), Reason.TRUNCATED_L3, st)
        ext = np.isin(a["nh"], _V6_EXT) & ~a["done"]
        e = np.flatnonzero(ext)
        pos = batch.offsets[a.idx[e]] + a["cur"][e]
        nh_e = a["nh"][e]
        frag = nh_e == V6_EXT_FRAGMENT
        ah = nh_e == V6_EXT_AH
        hlen = _u8(buf, pos + 1)
        ext_len = np.where(frag, 8, np.where(ah, (hlen + 2) * 4, (hlen + 1) * 8))
        if frag.any():
            f = e[frag]
            fpos = pos[frag]
            fo = _u16(buf, fpos + 2)
            gi = a.idx[f]
            out.frag_off[gi] = fo & 0xFFF8
            out.frag_more[gi] = (fo & 1) != 0
            out.frag_id[gi] = _u32(buf, fpos + 4)
            out.is_frag[gi] = True
            a["done"][f] = (fo & 0xFFF8) > 0
        a["nh"][e] = _u8(buf, pos)
        a["cur"][e] += ext_len
        out.l4[a.idx[e]] = a["nh"][e]
    else:
        a.fail(np.isin(a["nh"], _V6_EXT) & ~a["done"], Reason.BAD_EXT_HEADER, st)
    a.fail(a["cur"] > a["end"], Reason.BAD_EXT_HEADER, st)
    a["l4off"] = a["cur"]
    return a


def _transport(batch: FrameBatch, out: DecodedBatch, a: _Active) -> None:
    buf, st = batch.buf, out.status
    idx = a.idx
    out.l4_off[idx] = a["l4off"]
    first = ~(out.is_frag[idx] & (out.frag_off[idx] > 0))
    a = a.take(first)
    idx = a.idx
    proto = out.l4[idx]
    off, end = a["l4off"], a["end"]
    need = _L4_NEED[proto]
    a.fail((off + need > end) | (off + need > batch.caplens[idx]), Reason.TRUNCATED_L4, st)
    idx, off, end = a.idx, a["l4off"], a["end"]
    proto = out.l4[idx]
    pos = batch.offsets[idx] + off
    ported = np.isin(proto, _PORT_PROTOS)
    if ported.any():
        gi = idx[ported]
        out.sport[gi] = _u16(buf, pos[ported])
        out.dport[gi] = _u16(buf, pos[ported] + 2)
    hdr = _L4_NEED[proto]
    tcp = proto == PROTO_TCP
    if tcp.any():
        tp = pos[tcp]
        gi = idx[tcp]
        out.tcp_seq[gi] = _u32(buf, tp + 4)
        out.tcp_ack[gi] = _u32(buf, tp + 8)
        out.tcp_flags[gi] = _u8(buf, tp + 13)
        doff = (_u8(buf, tp + 12) >> 4) * 4
        hdr[tcp] = doff
        bad = np.zeros(idx.size, dtype=bool)
        bad[tcp] = (doff < 20) | (off[tcp] + doff > end[tcp])
        if bad.any():
            a["hdr"] = hdr
            a.fail(bad, Reason.BAD_TCP_OFFSET, st)
            idx, off, end, hdr = a.idx, a["l4off"], a["end"], a["hdr"]
            proto = out.l4[idx]
            pos = batch.offsets[idx] + off
    icmp = (proto == PROTO_ICMP) | (proto == PROTO_ICMPV6)
    if icmp.any():
        gi = idx[icmp]
        out.icmp_type[gi] = _u8(buf, pos[icmp])
        out.icmp_code[gi] = _u8(buf, pos[icmp] + 1)
    out.payload_off[idx] = off + hdr
    out.payload_len[idx] = end - off - hdr


def _ip_stage(batch: FrameBatch, out: DecodedBatch, a: _Active) -> None:
    """IPv4 / IPv6 and transport for the frames of `a` (at their `off`, with ethertype `et`)."""
    out.l3_off[a.idx] = a["off"]
    v4 = a["et"] == ETH_IPV4
    parts = []
    if v4.any():
        parts.append(_ipv4(batch, out, a.take(v4)))
    if (~v4).any():
        parts.append(_ipv6(batch, out, a.take(~v4)))
    for part in parts:
        _transport(batch, out, part)


def decode_batch(batch: FrameBatch, options: DecodeOptions = DEFAULT_OPTIONS) -> DecodedBatch:
    """Decode every frame of `batch` into columns; problems go to `status`, never raised."""
    out = DecodedBatch.empty(batch)
    if len(batch) == 0:
        return out
    walk = Walk(len(batch))
    a = link_stage(batch, out)
    level = None  # the frames of this pass: all, then those inside a tunnel
    for _ in range(MAX_ENCAP_DEPTH + 1):
        a = chain_stage(batch, out, a, walk)
        _ip_stage(batch, out, a)
        if not options.decapsulate:
            break
        inner = tunnel_stage(batch, out, level, options, walk.depth)
        if inner is None or not len(inner):
            break
        a, level = inner, inner.idx
        walk.level_tags[level] = 0  # a new header chain starts inside the tunnel
        walk.labels[level] = 0
    return out
