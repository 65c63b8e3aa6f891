"""Header builders with valid checksums: Ethernet, VLAN tags, IPv4, IPv6 (+ extension headers),
TCP, UDP, ICMP/ICMPv6 echo and SCTP INIT. Each takes and returns bytes."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from celltap.loadgen.checksum import crc32c, internet_checksum, transport_checksum

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
TPID_QINQ_OLD = 0x9100

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
NH_HOPOPT = 0
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_DSTOPTS = 60

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def ethernet(
    dst: bytes, src: bytes, ethertype: int, payload: bytes, tags: tuple[tuple[int, int], ...] = ()
) -> bytes:
    """An Ethernet II frame; `tags` are (tpid, vid) pairs, outermost first (802.1Q / QinQ)."""
    hdr = bytearray(dst + src)
    for tpid, vid in tags:
        hdr += struct.pack("!HH", tpid, vid & 0x0FFF)
    hdr += struct.pack("!H", ethertype)
    return bytes(hdr) + payload


def pad_frame(frame: bytes, minimum: int = 60) -> bytes:
    """Pad a frame with zeros to the Ethernet minimum (60 bytes without the FCS)."""
    return frame if len(frame) >= minimum else frame + bytes(minimum - len(frame))


def ipv4_option_record_route(slots: int = 2) -> bytes:
    """An IPv4 Record Route option with `slots` empty addresses, padded to 4 bytes."""
    length = 3 + 4 * slots
    opt = bytes((7, length, 4)) + bytes(4 * slots)
    return opt + b"\x01" * (-len(opt) % 4)  # NOP padding


def ipv4_option_router_alert() -> bytes:
    """The 4-byte Router Alert option (RFC 2113)."""
    return b"\x94\x04\x00\x00"


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    ident: int = 0,
    ttl: int = 64,
    tos: int = 0,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    frag_offset: int = 0,
    options: bytes = b"",
) -> bytes:
    """An IPv4 packet; `frag_offset` in bytes (multiple of 8); `options` padded to 4 bytes."""
    if len(options) % 4:
        options += bytes(-len(options) % 4)
    ihl = 5 + len(options) // 4
    flags = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | (frag_offset >> 3)
    hdr = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            tos,
            4 * ihl + len(payload),
            ident & 0xFFFF,
            flags,
            ttl,
            proto,
            0,
            src,
            dst,
        )
        + options
    )
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr) + payload


@dataclass(frozen=True)
class ExtHeader:
    """An IPv6 extension header: its protocol number and its bytes (byte 0 is set when chained)."""

    code: int
    body: bytes


def _padn(n: int) -> bytes:
    if n == 0:
        return b""
    if n == 1:
        return b"\x00"  # Pad1
    return bytes((1, n - 2)) + bytes(n - 2)


def hop_by_hop(router_alert: bool = True) -> ExtHeader:
    """A hop-by-hop options header (router alert for MLD, padded to 8 bytes)."""
    opts = b"\x05\x02\x00\x00" if router_alert else b""
    opts += _padn((6 - len(opts)) % 8)
    return ExtHeader(NH_HOPOPT, bytes((0, (2 + len(opts)) // 8 - 1)) + opts)


def destination_options(extra_pad: int = 0) -> ExtHeader:
    """A destination options header holding only padding (PadN), 8 * (1 + extra_pad) bytes."""
    opts = _padn(6 + 8 * extra_pad)
    return ExtHeader(NH_DSTOPTS, bytes((0, (2 + len(opts)) // 8 - 1)) + opts)


def segment_routing(segments: list[bytes], segments_left: int = 0) -> ExtHeader:
    """A routing header of type 4 (SRv6 SRH, RFC 8754); segments[0] is the final destination."""
    last_entry = len(segments) - 1
    body = struct.pack("!BBBBBBH", 0, 2 * len(segments), 4, segments_left, last_entry, 0, 0) + b"".join(
        segments
    )
    return ExtHeader(NH_ROUTING, body)


def fragment_header(ident: int, offset: int, more: bool) -> ExtHeader:
    """An IPv6 fragment header; `offset` in bytes, a multiple of 8."""
    return ExtHeader(NH_FRAGMENT, struct.pack("!BBHI", 0, 0, offset | (1 if more else 0), ident))


def ipv6(
    src: bytes,
    dst: bytes,
    next_header: int,
    payload: bytes,
    *,
    hop_limit: int = 64,
    flow_label: int = 0,
    traffic_class: int = 0,
    ext: tuple[ExtHeader, ...] | list[ExtHeader] = (),
) -> bytes:
    """An IPv6 packet with extension headers `ext` chained in order before `payload`."""
    chain = bytearray()
    codes = [e.code for e in ext] + [next_header]
    for i, e in enumerate(ext):
        chain += bytes((codes[i + 1],)) + e.body[1:]
    first = codes[0]
    vtf = (6 << 28) | (traffic_class << 20) | (flow_label & 0xFFFFF)
    hdr = struct.pack("!IHBB16s16s", vtf, len(chain) + len(payload), first, hop_limit, src, dst)
    return hdr + bytes(chain) + payload


def tcp_options(
    *,
    mss: int | None = None,
    sack_permitted: bool = False,
    wscale: int | None = None,
    timestamps: tuple[int, int] | None = None,
) -> bytes:
    """TCP options in Linux's SYN layout (MSS, SACK-permitted, timestamps, NOP, window scale)."""
    out = bytearray()
    if mss is not None:
        out += struct.pack("!BBH", 2, 4, mss)
    if sack_permitted and timestamps is not None:
        out += b"\x04\x02" + struct.pack("!BBII", 8, 10, *timestamps)
    else:
        if sack_permitted:
            out += b"\x01\x01\x04\x02"
        if timestamps is not None:
            out += b"\x01\x01" + struct.pack("!BBII", 8, 10, *timestamps)
    if wscale is not None:
        out += b"\x01" + struct.pack("!BBB", 3, 3, wscale)
    out += b"\x00" * (-len(out) % 4)
    return bytes(out)


def tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    window: int = 64240,
    options: bytes = b"",
    urgent: int = 0,
) -> bytes:
    """A TCP segment with a valid checksum over the IPv4 or IPv6 pseudo-header of src/dst."""
    off = (20 + len(options)) // 4
    seg = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            sport,
            dport,
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF,
            off << 4,
            flags,
            window,
            0,
            urgent,
        )
        + options
        + payload
    )
    struct.pack_into("!H", seg, 16, transport_checksum(src, dst, PROTO_TCP, seg))
    return bytes(seg)


def udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram with a valid checksum (0 is sent as 0xffff, as RFC 768 requires)."""
    seg = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    csum = transport_checksum(src, dst, PROTO_UDP, seg) or 0xFFFF
    struct.pack_into("!H", seg, 6, csum)
    return bytes(seg)


def icmp_echo(ident: int, seq: int, payload: bytes, reply: bool = False) -> bytes:
    """An ICMP echo request (type 8) or reply (type 0)."""
    msg = bytearray(struct.pack("!BBHHH", 0 if reply else 8, 0, 0, ident, seq) + payload)
    struct.pack_into("!H", msg, 2, internet_checksum(msg))
    return bytes(msg)


def icmpv6_echo(src: bytes, dst: bytes, ident: int, seq: int, payload: bytes, reply: bool = False) -> bytes:
    """An ICMPv6 echo request (128) or reply (129), checksummed over the IPv6 pseudo-header."""
    msg = bytearray(struct.pack("!BBHHH", 129 if reply else 128, 0, 0, ident, seq) + payload)
    struct.pack_into("!H", msg, 2, transport_checksum(src, dst, PROTO_ICMPV6, msg))
    return bytes(msg)


def sctp_packet(sport: int, dport: int, vtag: int, chunks: bytes) -> bytes:
    """An SCTP common header + `chunks`, with its CRC32c checksum."""
    pkt = bytearray(struct.pack("!HHII", sport, dport, vtag, 0) + chunks)
    struct.pack_into("<I", pkt, 8, crc32c(pkt))  # CRC32c goes on the wire little-endian
    return bytes(pkt)


def sctp_init_chunk(
    init_tag: int,
    a_rwnd: int,
    out_streams: int,
    in_streams: int,
    tsn: int,
    ack: bool = False,
    cookie: bytes = b"",
) -> bytes:
    """An INIT (or INIT-ACK with a state cookie) chunk with a Supported Address Types parameter."""
    params = b""
    if ack:
        params += struct.pack("!HH", 7, 4 + len(cookie)) + cookie + bytes(-len(cookie) % 4)
    else:
        params += struct.pack("!HHHH", 12, 8, 5, 6)  # supported address types: IPv4, IPv6
    body = struct.pack("!IIHHI", init_tag, a_rwnd, out_streams, in_streams, tsn) + params
    return struct.pack("!BBH", 2 if ack else 1, 0, 4 + len(body)) + body


def sctp_abort_chunk() -> bytes:
    """An ABORT chunk without causes."""
    return struct.pack("!BBH", 6, 0, 4)
