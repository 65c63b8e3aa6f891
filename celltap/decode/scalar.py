"""Scalar frame decoder: one frame in, one `Decoded` out.  For odd cases and as the test oracle
of the batch path (both must agree field for field).  Never raises on bad input.

Offsets are relative to the start of the frame.  `l4_off` is where the IP payload starts (after
IPv4 options or IPv6 extension headers): for a non-first fragment that is fragment data, not a
transport header, and `payload_off` stays -1.  `payload_len` counts transport payload by the IP
length, so Ethernet padding is never payload.

Below IP the frame is walked one header at a time (`_chain`: VLAN, PPPoE, MPLS, inner Ethernet);
above it, a GRE / ERSPAN / VXLAN / Geneve / IP-in-IP packet is decapsulated (`_tunnel`, unless the options
say not to) and the walk starts again at its inner header, with the L3/L4 fields reset: they always
describe the innermost packet.  The batch decoder (`batch_link`, `batch_tunnel`) follows the same
rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from celltap.decode.constants import (
    BSD_AF_INET,
    BSD_AF_INET6,
    ENCAP_ERSPAN,
    ENCAP_GENEVE,
    ENCAP_GRE,
    ENCAP_IPIP,
    ENCAP_MPLS,
    ENCAP_PPP,
    ENCAP_PW,
    ENCAP_VLAN,
    ENCAP_VXLAN,
    ETH_ERSPAN_2,
    ETH_ERSPAN_3,
    ETH_IPV4,
    ETH_IPV6,
    ETH_MPLS_MULTICAST,
    ETH_MPLS_UNICAST,
    ETH_PPPOE_SESSION,
    ETH_TEB,
    GRE_CSUM,
    GRE_KEY,
    GRE_ROUTING,
    GRE_SEQ,
    GRE_VERSION,
    L4_HEADER_LEN,
    MAX_ENCAP_DEPTH,
    MAX_MPLS_LABELS,
    MAX_V6_EXT_HEADERS,
    MAX_VLAN_TAGS,
    PORT_PROTOCOLS,
    PPP_IPV4,
    PPP_IPV6,
    PPP_MPLS_MULTICAST,
    PPP_MPLS_UNICAST,
    PPPOE_VER_TYPE,
    PROTO_GRE,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_IPIP,
    PROTO_IPV6_IN_IP,
    PROTO_TCP,
    PROTO_UDP,
    V6_EXT_AH,
    V6_EXT_FRAGMENT,
    V6_EXT_HEADERS,
    VLAN_TPIDS,
    VXLAN_FLAG_I,
)
from celltap.decode.linktypes import note_unsupported
from celltap.decode.options import DEFAULT_OPTIONS, DecodeOptions
from celltap.decode.reasons import Reason
from celltap.pcap.batch import (
    LINKTYPE_C_HDLC,
    LINKTYPE_ETHERNET,
    LINKTYPE_FDDI,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_ETHER,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
)

_FIXED = {  # link type -> (header length, offset of its ethertype)
    LINKTYPE_ETHERNET: (14, 12),
    LINKTYPE_LINUX_SLL: (16, 14),
    LINKTYPE_LINUX_SLL2: (20, 0),
    LINKTYPE_C_HDLC: (4, 2),
}
_PPP_ET = {
    PPP_IPV4: ETH_IPV4,
    PPP_IPV6: ETH_IPV6,
    PPP_MPLS_UNICAST: ETH_MPLS_UNICAST,
    PPP_MPLS_MULTICAST: ETH_MPLS_MULTICAST,
}
_GRE_NEXT = (ETH_IPV4, ETH_IPV6, ETH_MPLS_UNICAST, ETH_MPLS_MULTICAST, ETH_TEB, ETH_ERSPAN_2, ETH_ERSPAN_3)
_INNER_DEFAULTS = {
    "l3": 0, "l4": 0, "src": b"", "dst": b"", "sport": 0, "dport": 0, "l3_off": -1, "l4_off": -1,
    "payload_off": -1, "payload_len": 0, "ip_len": 0, "ttl": 0, "is_frag": False, "frag_off": 0,
    "frag_more": False, "frag_id": 0, "tcp_flags": 0, "tcp_seq": 0, "tcp_ack": 0, "icmp_type": 0,
    "icmp_code": 0,
}  # fmt: skip


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
    encap: int = 0


def _u16(f: bytes, o: int) -> int:
    return (f[o] << 8) | f[o + 1]


def _u32(f: bytes, o: int) -> int:
    return int.from_bytes(f[o : o + 4], "big")


class _Walk:
    """Counters of one frame's walk that outlive a pass: VLAN tags seen, nesting depth."""

    __slots__ = ("depth", "tags")

    def __init__(self) -> None:
        self.tags = 0
        self.depth = 0


def _fail(d: Decoded, reason: Reason, et: int | None = None) -> tuple[int, int]:
    d.status = reason
    if et is not None:
        d.ethertype = et
    return -1, 0


def _link(frame: bytes, linktype: int, d: Decoded) -> tuple[int, int]:
    """Strip the link header: (offset, ethertype) of the next header, or (-1, 0) with d.status set."""
    cap = len(frame)
    if linktype in _FIXED:
        hdr, et_at = _FIXED[linktype]
        if cap < hdr:
            return _fail(d, Reason.TRUNCATED_L2)
        return hdr, _u16(frame, et_at)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if cap < 1:
            return _fail(d, Reason.TRUNCATED_L3)
        version = frame[0] >> 4
        et = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0
        if et == 0:
            return _fail(d, Reason.BAD_IP_VERSION)
        d.ethertype = et
        return 0, et
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if cap < 4:
            return _fail(d, Reason.TRUNCATED_L2)
        fam = _u32(frame, 0)
        if linktype == LINKTYPE_NULL and fam > 0xFFFF:
            fam = int.from_bytes(frame[:4], "little")  # written by a host of the other byte order
        et = ETH_IPV4 if fam == BSD_AF_INET else ETH_IPV6 if fam in BSD_AF_INET6 else 0
        return (4, et) if et else _fail(d, Reason.NON_IP)
    if linktype == LINKTYPE_FDDI:
        if cap < 21:
            return _fail(d, Reason.TRUNCATED_L2)
        if frame[13:16] != b"\xaa\xaa\x03":  # not LLC/SNAP
            return _fail(d, Reason.NON_IP)
        return 21, _u16(frame, 19)
    if linktype == LINKTYPE_PPP_ETHER:
        return 0, ETH_PPPOE_SESSION
    if linktype == LINKTYPE_PPP:
        return _ppp(frame, 2 if frame[:2] == b"\xff\x03" else 0, d)
    if linktype == LINKTYPE_PPP_HDLC:
        if cap < 2:
            return _fail(d, Reason.TRUNCATED_L2)
        if frame[:2] == b"\xff\x03":
            return _ppp(frame, 2, d)
        if frame[0] & 0x7F != 0x0F:
            return _fail(d, Reason.NON_IP)
        if cap < 4:  # Cisco HDLC: address, control, ethertype
            return _fail(d, Reason.TRUNCATED_L2)
        return 4, _u16(frame, 2)
    note_unsupported(linktype)
    return _fail(d, Reason.UNSUPPORTED_LINKTYPE)


def _ppp(frame: bytes, off: int, d: Decoded) -> tuple[int, int]:
    """The PPP protocol field at `off` (one byte when compressed: odd first byte)."""
    cap = len(frame)
    if cap < off + 1:
        return _fail(d, Reason.TRUNCATED_L2)
    if frame[off] & 1:
        proto, off = frame[off], off + 1
    elif cap < off + 2:
        return _fail(d, Reason.TRUNCATED_L2)
    else:
        proto, off = _u16(frame, off), off + 2
    et = _PPP_ET.get(proto, 0)
    if not et:
        return _fail(d, Reason.NON_IP)
    d.encap |= ENCAP_PPP
    return off, et


def _chain(frame: bytes, off: int, et: int, d: Decoded, w: _Walk) -> int:
    """Follow VLAN / PPPoE / MPLS / inner Ethernet to IP: its offset, or -1 with d.status set."""
    cap = len(frame)
    level_tags = labels = 0
    while True:
        if et in VLAN_TPIDS:
            if level_tags >= MAX_VLAN_TAGS:
                return _fail(d, Reason.TOO_MANY_VLAN_TAGS, et)[0]
            if cap < off + 4:
                return _fail(d, Reason.TRUNCATED_L2, et)[0]
            vid = _u16(frame, off) & 0x0FFF
            if w.tags == 0:
                d.vlan = vid
            elif w.tags == 1:
                d.vlan_inner = vid
            w.tags += 1
            level_tags += 1
            d.encap |= ENCAP_VLAN
            et = _u16(frame, off + 2)
            off += 4
        elif et == ETH_PPPOE_SESSION:
            if cap < off + 8:
                return _fail(d, Reason.TRUNCATED_L2, et)[0]
            nxt = _PPP_ET.get(_u16(frame, off + 6), 0)
            if frame[off] != PPPOE_VER_TYPE or frame[off + 1] != 0 or not nxt:
                return _fail(d, Reason.NON_IP, et)[0]
            d.encap |= ENCAP_PPP
            et = nxt
            off += 8
        elif et in (ETH_MPLS_UNICAST, ETH_MPLS_MULTICAST):
            if labels >= MAX_MPLS_LABELS:
                return _fail(d, Reason.TOO_MANY_MPLS_LABELS, et)[0]
            if cap < off + 4:
                return _fail(d, Reason.TRUNCATED_L2, et)[0]
            d.encap |= ENCAP_MPLS
            labels += 1
            bos = frame[off + 2] & 1
            off += 4
            if not bos:
                continue
            if cap < off + 1:
                return _fail(d, Reason.TRUNCATED_L2, et)[0]
            nib = frame[off] >> 4
            if nib == 4:
                et = ETH_IPV4
            elif nib == 6:
                et = ETH_IPV6
            elif nib == 0:  # pseudowire control word (RFC 4385), then an Ethernet frame
                if w.depth >= MAX_ENCAP_DEPTH:
                    return _fail(d, Reason.TOO_DEEP, et)[0]
                w.depth += 1
                d.encap |= ENCAP_PW
                et = ETH_TEB
                off += 4
            else:
                return _fail(d, Reason.NON_IP, et)[0]
        elif et == ETH_TEB:
            if cap < off + 14:
                return _fail(d, Reason.TRUNCATED_L2, et)[0]
            et = _u16(frame, off + 12)
            off += 14
            level_tags = labels = 0
        else:
            break
    d.ethertype = et
    if et not in (ETH_IPV4, ETH_IPV6):
        d.status = Reason.NON_IP
        return -1
    return off


def _tunnel(frame: bytes, d: Decoded, options: DecodeOptions) -> tuple[int, int, int]:
    """(inner offset, inner ethertype, encap bit) of a tunnel packet; offset -1: not one (or bad)."""
    cap = len(frame)
    end = d.l3_off + d.ip_len
    if d.l4 in (PROTO_IPIP, PROTO_IPV6_IN_IP):
        return d.l4_off, ETH_IPV4 if d.l4 == PROTO_IPIP else ETH_IPV6, ENCAP_IPIP
    if d.l4 == PROTO_GRE:
        p = d.l4_off
        if p + 4 > end or p + 4 > cap:
            d.status = Reason.TRUNCATED_L4
            return -1, 0, 0
        flags, proto = _u16(frame, p), _u16(frame, p + 2)
        if flags & (GRE_ROUTING | GRE_VERSION):
            return -1, 0, 0
        p += 4 + 4 * bool(flags & GRE_CSUM) + 4 * bool(flags & GRE_KEY) + 4 * bool(flags & GRE_SEQ)
        if p > end or p > cap:
            d.status = Reason.TRUNCATED_L4
            return -1, 0, 0
        if proto not in _GRE_NEXT:
            return -1, 0, 0
        if proto == ETH_ERSPAN_2:  # type II: 8-byte header; type I (no GRE sequence number): none
            return p + (8 if flags & GRE_SEQ else 0), ETH_TEB, ENCAP_ERSPAN
        if proto == ETH_ERSPAN_3:  # 12 bytes, plus an 8-byte platform subheader with the O flag
            if cap < p + 12:
                d.status = Reason.TRUNCATED_L2
                return -1, 0, 0
            return p + 12 + (8 if frame[p + 11] & 1 else 0), ETH_TEB, ENCAP_ERSPAN
        return p, proto, ENCAP_GRE
    if d.l4 == PROTO_UDP and d.dport in options.vxlan_ports:
        p = d.payload_off
        if p + 8 > end:
            return -1, 0, 0
        if p + 8 > cap:
            d.status = Reason.TRUNCATED_L4
            return -1, 0, 0
        if not frame[p] & VXLAN_FLAG_I:
            return -1, 0, 0
        return p + 8, ETH_TEB, ENCAP_VXLAN
    if d.l4 == PROTO_UDP and d.dport in options.geneve_ports:
        p = d.payload_off
        if p + 8 > end:
            return -1, 0, 0
        if p + 8 > cap:
            d.status = Reason.TRUNCATED_L4
            return -1, 0, 0
        proto = _u16(frame, p + 2)
        if frame[p] >> 6 or proto not in (ETH_TEB, ETH_IPV4, ETH_IPV6):
            return -1, 0, 0
        p += 8 + (frame[p] & 0x3F) * 4  # options
        if p > end or p > cap:
            d.status = Reason.TRUNCATED_L4
            return -1, 0, 0
        return p, proto, ENCAP_GENEVE
    return -1, 0, 0


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


def _ip(frame: bytes, off: int, wire: int, d: Decoded) -> None:
    """IPv4 / IPv6 and transport fields of the packet at `off` (d.ethertype names its version)."""
    d.l3_off = off
    if d.ethertype == ETH_IPV4:
        _ipv4(frame, off, wire, d)
    else:
        _ipv6(frame, off, wire, d)
    if d.status != Reason.OK or d.l4_off < 0:
        return
    if d.is_frag and d.frag_off > 0:
        return  # non-first fragment: no transport header here
    _transport(frame, d)


def decode_frame(
    frame: bytes,
    linktype: int = LINKTYPE_ETHERNET,
    wirelen: int | None = None,
    options: DecodeOptions = DEFAULT_OPTIONS,
) -> Decoded:
    """Decode one frame's headers; problems are reported in `status`, never raised."""
    frame = bytes(frame)
    wire = len(frame) if wirelen is None else max(wirelen, len(frame))
    d = Decoded()
    w = _Walk()
    off, et = _link(frame, linktype, d)
    while off >= 0:
        off = _chain(frame, off, et, d, w)
        if off < 0:
            break
        _ip(frame, off, wire, d)
        if not options.decapsulate or d.status != Reason.OK or d.is_frag:
            break
        off, et, bit = _tunnel(frame, d, options)
        if off < 0:
            break
        if w.depth >= MAX_ENCAP_DEPTH:
            d.status = Reason.TOO_DEEP
            break
        w.depth += 1
        d.encap |= bit
        for name, value in _INNER_DEFAULTS.items():
            setattr(d, name, value)
    return d
