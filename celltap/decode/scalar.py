"""Scalar frame decoder: one frame in, one `Decoded` out.  For odd cases and as the test oracle
of the batch path (both must agree field for field).  Never raises on bad input.

Offsets are relative to the start of the frame.  `l4_off` is where the IP payload starts (after
IPv4 options or IPv6 extension headers): for a non-first fragment that is fragment data, not a
transport header, and `payload_off` stays -1.  `payload_len` counts transport payload by the IP
length, so Ethernet padding is never payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from celltap.decode.constants import (
    ETH_IPV4,
    ETH_IPV6,
    L4_HEADER_LEN,
    MAX_V6_EXT_HEADERS,
    MAX_VLAN_TAGS,
    PORT_PROTOCOLS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    V6_EXT_AH,
    V6_EXT_FRAGMENT,
    V6_EXT_HEADERS,
    VLAN_TPIDS,
)
from celltap.decode.reasons import Reason
from celltap.pcap.batch import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
)


@dataclass
class Decoded:
    """Decoded header fields of one frame (same names as the batch columns)."""

    status: Reason = Reason.OK
    ethertype: int = 0
    vlan: int = 0
    vlan_inner: int = 0
    l3: int = 0
    l4: int = 0
    src: bytes = b""
    dst: bytes = b""
    sport: int = 0
    dport: int = 0
    l3_off: int = -1
    l4_off: int = -1
    payload_off: int = -1
    payload_len: int = 0
    ip_len: int = 0
    ttl: int = 0
    is_frag: bool = False
    frag_off: int = 0
    frag_more: bool = False
    frag_id: int = 0
    tcp_flags: int = 0
    tcp_seq: int = 0
    tcp_ack: int = 0
    icmp_type: int = 0
    icmp_code: int = 0


def _u16(f: bytes, o: int) -> int:
    return (f[o] << 8) | f[o + 1]


def _u32(f: bytes, o: int) -> int:
    return int.from_bytes(f[o : o + 4], "big")


def _link(frame: bytes, linktype: int, d: Decoded) -> int:
    """Fill the L2 fields; return the L3 offset, or -1 with d.status set."""
    cap = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if cap < 14:
            d.status = Reason.TRUNCATED_L2
            return -1
        et, off = _u16(frame, 12), 14
    elif linktype == LINKTYPE_LINUX_SLL:
        if cap < 16:
            d.status = Reason.TRUNCATED_L2
            return -1
        et, off = _u16(frame, 14), 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if cap < 20:
            d.status = Reason.TRUNCATED_L2
            return -1
        et, off = _u16(frame, 0), 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if cap < 1:
            d.status = Reason.TRUNCATED_L3
            return -1
        version = frame[0] >> 4
        et = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0
        if et == 0:
            d.status = Reason.BAD_IP_VERSION
            return -1
        d.ethertype = et
        return 0
    else:
        d.status = Reason.UNSUPPORTED_LINKTYPE
        return -1
    tags = 0
    while et in VLAN_TPIDS:
        if tags == MAX_VLAN_TAGS:
            d.status = Reason.TOO_MANY_VLAN_TAGS
            d.ethertype = et
            return -1
        if cap < off + 4:
            d.status = Reason.TRUNCATED_L2
            d.ethertype = et
            return -1
        vid = _u16(frame, off) & 0x0FFF
        if tags == 0:
            d.vlan = vid
        elif tags == 1:
            d.vlan_inner = vid
        et = _u16(frame, off + 2)
        off += 4
        tags += 1
    d.ethertype = et
    if et not in (ETH_IPV4, ETH_IPV6):
        d.status = Reason.NON_IP
        return -1
    return off


def _ipv4(frame: bytes, off: int, wirelen: int, d: Decoded) -> None:
    cap = len(frame)
    d.l3 = 4
    if cap < off + 20:
        d.status = Reason.TRUNCATED_L3
        return
    vb = frame[off]
    if vb >> 4 != 4:
        d.status = Reason.BAD_IP_VERSION
        return
    ihl = (vb & 0x0F) * 4
    if ihl < 20:
        d.status = Reason.BAD_IHL
        return
    if cap < off + ihl:
        d.status = Reason.TRUNCATED_L3
        return
    tot = _u16(frame, off + 2)
    d.ip_len = tot
    d.src = frame[off + 12 : off + 16]
    d.dst = frame[off + 16 : off + 20]
    d.ttl = frame[off + 8]
    d.l4 = frame[off + 9]
    d.frag_id = _u16(frame, off + 4)
    ff = _u16(frame, off + 6)
    d.frag_more = bool(ff & 0x2000)
    d.frag_off = (ff & 0x1FFF) * 8
    d.is_frag = d.frag_more or d.frag_off > 0
    if tot < ihl or off + tot > wirelen:
        d.status = Reason.BAD_TOTAL_LENGTH
        return
    d.l4_off = off + ihl


def _ipv6(frame: bytes, off: int, wirelen: int, d: Decoded) -> None:
    cap = len(frame)
    d.l3 = 6
    if cap < off + 40:
        d.status = Reason.TRUNCATED_L3
        return
    if frame[off] >> 4 != 6:
        d.status = Reason.BAD_IP_VERSION
        return
    plen = _u16(frame, off + 4)
    d.ip_len = 40 + plen
    nh = frame[off + 6]
    d.ttl = frame[off + 7]
    d.src = frame[off + 8 : off + 24]
    d.dst = frame[off + 24 : off + 40]
    d.l4 = nh
    if off + 40 + plen > wirelen:
        d.status = Reason.BAD_TOTAL_LENGTH
        return
    end = off + 40 + plen
    cur = off + 40
    for _ in range(MAX_V6_EXT_HEADERS):
        if nh not in V6_EXT_HEADERS:
            break
        if cur + 8 > end:
            d.status = Reason.BAD_EXT_HEADER
            return
        if cur + 8 > cap:
            d.status = Reason.TRUNCATED_L3
            return
        if nh == V6_EXT_FRAGMENT:
            fo = _u16(frame, cur + 2)
            d.frag_off = fo & 0xFFF8
            d.frag_more = bool(fo & 1)
            d.frag_id = _u32(frame, cur + 4)
            d.is_frag = True
            ext_len = 8
        elif nh == V6_EXT_AH:
            ext_len = (frame[cur + 1] + 2) * 4
        else:
            ext_len = (frame[cur + 1] + 1) * 8
        nh = frame[cur]
        cur += ext_len
        d.l4 = nh
        if d.is_frag and d.frag_off > 0:
            break  # the rest is fragment data
    else:
        if nh in V6_EXT_HEADERS:
            d.status = Reason.BAD_EXT_HEADER
            return
    if cur > end:
        d.status = Reason.BAD_EXT_HEADER
        return
    d.l4_off = cur


def _transport(frame: bytes, d: Decoded) -> None:
    cap = len(frame)
    off = d.l4_off
    end = d.l3_off + d.ip_len
    proto = d.l4
    need = L4_HEADER_LEN.get(proto, 0)
    if off + need > end or off + need > cap:
        d.status = Reason.TRUNCATED_L4
        return
    if proto in PORT_PROTOCOLS:
        d.sport = _u16(frame, off)
        d.dport = _u16(frame, off + 2)
    if proto == PROTO_TCP:
        d.tcp_seq = _u32(frame, off + 4)
        d.tcp_ack = _u32(frame, off + 8)
        d.tcp_flags = frame[off + 13]
        doff = (frame[off + 12] >> 4) * 4
        if doff < 20 or off + doff > end:
            d.status = Reason.BAD_TCP_OFFSET
            return
        need = doff
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        d.icmp_type = frame[off]
        d.icmp_code = frame[off + 1]
    d.payload_off = off + need
    d.payload_len = end - d.payload_off


def decode_frame(frame: bytes, linktype: int = LINKTYPE_ETHERNET, wirelen: int | None = None) -> Decoded:
    """Decode one frame's headers; problems are reported in `status`, never raised."""
    frame = bytes(frame)
    wire = len(frame) if wirelen is None else max(wirelen, len(frame))
    d = Decoded()
    off = _link(frame, linktype, d)
    if off < 0:
        return d
    d.l3_off = off
    if d.ethertype == ETH_IPV4:
        _ipv4(frame, off, wire, d)
    else:
        _ipv6(frame, off, wire, d)
    if d.status != Reason.OK or d.l4_off < 0:
        return d
    if d.is_frag and d.frag_off > 0:
        return d  # non-first fragment: no transport header here
    _transport(frame, d)
    return d
