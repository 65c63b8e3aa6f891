"""Hand-built frames for the core decoder tests (independent of loadgen)."""

from __future__ import annotations

import struct


def csum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(payload: bytes, ethertype: int = 0x0800, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Ethernet II frame with optional VLAN tags given as (tpid, vid)."""
    hdr = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
    for tpid, vid in tags:
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", ethertype) + payload


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    ident: int = 1,
    flags_off: int = 0,
    options: bytes = b"",
    ttl: int = 64,
) -> bytes:
    """IPv4 header with a valid checksum."""
    opts = options + b"\0" * (-len(options) % 4)
    ihl = 5 + len(opts) // 4
    s = bytes(int(x) for x in src.split("."))
    d = bytes(int(x) for x in dst.split("."))
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), ident, flags_off, ttl, proto, 0, s, d
    )
    hdr += opts
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, hlim: int = 64) -> bytes:
    """IPv6 header (payload may begin with extension headers; nh names the first)."""
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hlim, src, dst) + payload


def tcp(
    sport: int,
    dport: int,
    seq: int = 1,
    ack: int = 0,
    flags: int = 0x18,
    data: bytes = b"",
    options: bytes = b"",
) -> bytes:
    """TCP segment (checksum left zero: the decoder does not verify it)."""
    opts = options + b"\0" * (-len(options) % 4)
    doff = (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + opts + data


def udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    """UDP datagram (checksum zero)."""
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


V6A = bytes.fromhex("20010db8000000000000000000000001")
V6B = bytes.fromhex("20010db8000000000000000000000002")


def sample_frames() -> list[bytes]:
    """A spread of well-formed frames covering every decode branch."""
    frames = [
        eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80, data=b"GET / HTTP/1.1\r\n\r\n"))),
        eth(ipv4("10.0.0.2", "10.0.0.1", 17, udp(53, 5353, b"x" * 30))),
        eth(ipv4("10.0.0.1", "10.0.0.9", 1, bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"ping")),
        eth(
            ipv4(
                "10.0.0.1",
                "10.0.0.2",
                132,
                struct.pack("!HHII", 5000, 38412, 0, 0) + b"\1\0\0\x14" + b"\0" * 16,
            )
        ),
        eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, data=b"opts"), options=b"\x07\x07\x04" + b"\0" * 4)),
        eth(ipv4("10.0.0.1", "10.0.0.2", 17, udp(1000, 2000, b"A" * 40)[:24], ident=7, flags_off=0x2000)),
        eth(ipv4("10.0.0.1", "10.0.0.2", 17, b"B" * 24, ident=7, flags_off=3)),
        eth(ipv4("10.0.0.3", "10.0.0.4", 6, tcp(5, 6)), tags=((0x8100, 100),), ethertype=0x0800),
        eth(ipv4("10.0.0.3", "10.0.0.4", 17, udp(5, 6)), tags=((0x88A8, 200), (0x8100, 300))),
        eth(ipv4("10.0.0.3", "10.0.0.4", 17, udp(5, 6)), tags=((0x9100, 7), (0x8100, 8))),
        eth(ipv6(V6A, V6B, 6, tcp(443, 50000, flags=0x12)), ethertype=0x86DD),
        eth(ipv6(V6A, V6B, 58, bytes([128, 0, 0, 0, 0, 1, 0, 1])), ethertype=0x86DD),
        # hop-by-hop (8 bytes) then destination options (8 bytes) then UDP
        eth(
            ipv6(
                V6A,
                V6B,
                0,
                bytes([60, 0, 1, 4, 0, 0, 0, 0]) + bytes([17, 0, 1, 4, 0, 0, 0, 0]) + udp(9, 10, b"zz"),
            ),
            ethertype=0x86DD,
        ),
        # fragment header, first fragment (offset 0, M=1)
        eth(
            ipv6(V6A, V6B, 44, struct.pack("!BBHI", 17, 0, 1, 0xABCD) + udp(7, 8, b"q" * 16)),
            ethertype=0x86DD,
        ),
        # fragment header, later fragment (offset 24)
        eth(ipv6(V6A, V6B, 44, struct.pack("!BBHI", 17, 0, 24, 0xABCD) + b"r" * 16), ethertype=0x86DD),
        # AH then TCP
        eth(ipv6(V6A, V6B, 51, bytes([6, 1, 0, 0]) + b"\0" * 8 + tcp(22, 2222)), ethertype=0x86DD),
        eth(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, ethertype=0x0806),  # ARP
        eth(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(40000, 80)) + b"\0" * 6),  # Ethernet padding
    ]
    return frames


# ---------------------------------------------------------------- encapsulations (crafted)
MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def pppoe(payload: bytes, proto: int = 0x0021, session: int = 0x1234, code: int = 0) -> bytes:
    """PPPoE session header (RFC 2516) + PPP protocol, for ethertype 0x8864."""
    return struct.pack("!BBHHH", 0x11, code, session, len(payload) + 2, proto) + payload


def mpls(labels: list[int], payload: bytes, ttl: int = 64) -> bytes:
    """An MPLS label stack, bottom-of-stack bit on the last label."""
    out = b""
    for i, label in enumerate(labels):
        out += struct.pack("!I", (label << 12) | ((i == len(labels) - 1) << 8) | ttl)
    return out + payload


def gre(
    payload: bytes,
    proto: int,
    key: int | None = None,
    seq: int | None = None,
    csum: bool = False,
    version: int = 0,
) -> bytes:
    """GRE header (RFC 2784/2890) with optional checksum, key and sequence number."""
    flags = (0x8000 if csum else 0) | (0x2000 if key is not None else 0) | (0x1000 if seq is not None else 0)
    out = struct.pack("!HH", flags | version, proto)
    if csum:
        out += b"\0\0\0\0"
    if key is not None:
        out += struct.pack("!I", key)
    if seq is not None:
        out += struct.pack("!I", seq)
    return out + payload


def erspan2(inner: bytes, session: int = 5, vlan: int = 0, index: int = 1) -> bytes:
    """ERSPAN type II header (8 bytes), for GRE protocol 0x88be with a sequence number."""
    return struct.pack("!HHI", (1 << 12) | vlan, session & 0x3FF, index & 0xFFFFF) + inner


def erspan3(inner: bytes, session: int = 5, platform: bytes | None = None) -> bytes:
    """ERSPAN type III header (12 bytes, + 8-byte platform subheader when given), GRE proto 0x22eb."""
    o_flag = 1 if platform is not None else 0
    hdr = struct.pack("!HHIHBB", (2 << 12), session & 0x3FF, 123456, 0, 0, (1 << 1) | o_flag)
    return hdr + (platform or b"") + inner


def vxlan(inner: bytes, vni: int = 42, sport: int = 49999, dport: int = 4789, flags: int = 0x08) -> bytes:
    """UDP datagram carrying a VXLAN header (RFC 7348) and an inner Ethernet frame."""
    return udp(sport, dport, struct.pack("!B3xI", flags, vni << 8) + inner)


def geneve(inner: bytes, proto: int = 0x6558, options: bytes = b"", sport: int = 49998) -> bytes:
    """UDP datagram to 6081 with a Geneve header (RFC 8926; options in 4-byte words)."""
    hdr = struct.pack("!BBHI", len(options) // 4, 0, proto, 7 << 8)
    return udp(sport, 6081, hdr + options + inner)


def ether_inner(payload: bytes, ethertype: int = 0x0800, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """An inner Ethernet frame (other MACs than the outer one)."""
    hdr = bytes.fromhex("0a0000000002") + bytes.fromhex("0a0000000001")
    for tpid, vid in tags:
        hdr += struct.pack("!HH", tpid, vid)
    return hdr + struct.pack("!H", ethertype) + payload


def _inner_tcp(n: int = 0) -> bytes:
    return ipv4("192.168.1.1", "192.168.2.2", 6, tcp(41000 + n, 8080, data=b"inner payload"))


def _inner_udp6() -> bytes:
    return ipv6(V6B, V6A, 17, udp(5353, 53, b"inner v6"))


PLATFORM = b"\x08" + b"\0" * 7  # ERSPAN III platform-specific subheader


def encap_frames() -> list[bytes]:
    """Ethernet frames with PPPoE, MPLS and tunnels, well-formed, covering every encap branch."""
    v6 = 0x86DD
    outer4 = "10.1.0.1", "10.1.0.2"
    middle4 = "10.2.0.1", "10.2.0.2"
    return [
        eth(pppoe(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1000, 80, data=b"pppoe"))), 0x8864),
        eth(pppoe(ipv6(V6A, V6B, 17, udp(1, 2, b"x")), proto=0x0057), 0x8864),
        eth(pppoe(_inner_tcp(), session=7), 0x8864, tags=((0x8100, 33),)),
        eth(pppoe(b"\x01\x01\x00\x04", proto=0xC021), 0x8864),  # LCP: no flow
        eth(b"\x11\x09\x00\x00\x00\x00", 0x8863),  # PPPoE discovery: no flow
        eth(mpls([100], _inner_tcp()), 0x8847),
        eth(mpls([100, 200, 300], _inner_udp6()), 0x8847),
        eth(mpls([16], _inner_tcp(1)), 0x8848, tags=((0x8100, 12),)),
        eth(mpls([500, 17], b"\0\0\0\x01" + ether_inner(_inner_tcp(2))), 0x8847),  # PW with control word
        eth(mpls([500], b"\x10\0\0\x07" + b"\0" * 40), 0x8847),  # associated channel: no flow
        eth(pppoe(mpls([30], _inner_tcp(3)), proto=0x0281), 0x8864),
        eth(ipv4(*outer4, 47, gre(_inner_tcp(4), 0x0800))),
        eth(ipv4(*outer4, 47, gre(_inner_udp6(), 0x86DD, key=77, seq=3, csum=True))),
        eth(ipv4(*outer4, 47, gre(ether_inner(_inner_tcp(5)), 0x6558, key=1))),
        eth(ipv4(*outer4, 47, gre(ether_inner(_inner_tcp(6), tags=((0x8100, 99),)), 0x6558))),
        eth(ipv4(*outer4, 47, gre(mpls([44], _inner_tcp(7)), 0x8847))),
        eth(ipv6(V6A, V6B, 47, gre(_inner_tcp(8), 0x0800)), v6),
        eth(ipv4(*outer4, 47, gre(ether_inner(_inner_tcp(9)), 0x88BE))),  # ERSPAN type I
        eth(ipv4(*outer4, 47, gre(erspan2(ether_inner(_inner_tcp(10))), 0x88BE, seq=9))),
        eth(ipv4(*outer4, 47, gre(erspan3(ether_inner(_inner_udp6(), 0x86DD)), 0x22EB, seq=10))),
        eth(
            ipv4(*outer4, 47, gre(erspan3(ether_inner(_inner_tcp(11)), platform=b"\x08" + b"\0" * 7), 0x22EB))
        ),
        eth(ipv4(*outer4, 17, vxlan(ether_inner(_inner_tcp(12))))),
        eth(ipv4(*outer4, 17, vxlan(ether_inner(_inner_udp6(), 0x86DD, tags=((0x8100, 5),))))),
        eth(ipv6(V6A, V6B, 17, vxlan(ether_inner(_inner_tcp(13)))), v6),
        # VXLAN inside GRE: two tunnels
        eth(ipv4(*outer4, 47, gre(ipv4(*middle4, 17, vxlan(ether_inner(_inner_tcp(14)))), 0x0800))),
        eth(ipv4(*outer4, 47, gre(_inner_tcp(15), 0x0800, version=1))),  # not GRE v0: the outer flow
        eth(ipv4(*outer4, 47, gre(b"\0" * 20, 0x880B))),  # a GRE protocol not followed: outer flow
        eth(ipv4(*outer4, 17, vxlan(ether_inner(_inner_tcp(16)), flags=0))),  # no I flag: outer UDP flow
        eth(ipv4(*outer4, 17, udp(4789, 4789, b"abc"))),  # too short for VXLAN: outer UDP flow
        eth(ipv4(*outer4, 17, vxlan(ether_inner(b"\0" * 28, 0x0806)))),  # inner ARP: no flow
        eth(ipv4(*outer4, 17, geneve(ether_inner(_inner_tcp(20))))),
        eth(ipv4(*outer4, 17, geneve(_inner_udp6(), 0x86DD, options=b"\x01\x02\x03\x01" + b"\0" * 4))),
        eth(ipv4(*outer4, 4, _inner_tcp(18))),  # IPv4 in IPv4
        eth(ipv4(*outer4, 41, _inner_udp6())),  # IPv6 in IPv4 (6in4)
        eth(ipv6(V6A, V6B, 4, _inner_tcp(19)), v6),  # IPv4 in IPv6
        # first fragment of a GRE packet: not decapsulated (its inner packet is incomplete)
        eth(ipv4(*outer4, 47, gre(_inner_tcp(17), 0x0800)[:24], ident=9, flags_off=0x2000)),
    ]


def null_frames(big_endian: bool, af6: int = 24) -> list[bytes]:
    """DLT_NULL / DLT_LOOP frames: a 4-byte address family, then IP."""
    fmt = "!I" if big_endian else "<I"
    return [
        struct.pack(fmt, 2) + ipv4("127.0.0.1", "127.0.0.1", 6, tcp(50000, 22, data=b"ssh")),
        struct.pack(fmt, af6) + ipv6(V6A, V6B, 17, udp(123, 123, b"ntp")),
        struct.pack(fmt, 23) + b"\0" * 40,  # another family: no flow
        struct.pack(fmt, 2) + ipv4("127.0.0.1", "127.0.0.2", 1, bytes([8, 0, 0, 0, 0, 1, 0, 1])),
    ]


def fddi(payload: bytes, ethertype: int = 0x0800) -> bytes:
    """FDDI frame control + MACs + LLC/SNAP."""
    return b"\x50" + MAC_B + MAC_A + b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", ethertype) + payload


def fddi_frames() -> list[bytes]:
    """FDDI frames with IP over SNAP, ARP, and a non-SNAP LLC frame."""
    return [
        fddi(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, data=b"fddi"))),
        fddi(ipv6(V6A, V6B, 58, bytes([128, 0, 0, 0, 0, 1, 0, 1])), 0x86DD),
        fddi(b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\0" * 20, 0x0806),
        b"\x50" + MAC_B + MAC_A + b"\x42\x42\x03" + b"\0" * 30,  # spanning tree over LLC
    ]


def ppp_frames() -> list[bytes]:
    """LINKTYPE_PPP frames: with and without HDLC-like framing, compressed protocol field."""
    return [
        b"\xff\x03\x00\x21" + ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"ppp")),
        b"\x00\x57" + ipv6(V6A, V6B, 6, tcp(1, 2)),
        b"\x21" + ipv4("10.0.0.1", "10.0.0.2", 6, tcp(3, 4)),  # protocol-field compression
        b"\xff\x03\xc0\x21\x01\x01\x00\x04",  # LCP
        b"\xff\x03\x02\x81" + mpls([77], ipv4("10.0.0.3", "10.0.0.4", 17, udp(5, 6))),
    ]


def hdlc_frames() -> list[bytes]:
    """LINKTYPE_PPP_HDLC frames: PPP in HDLC framing, and Cisco HDLC."""
    return [
        b"\xff\x03\x00\x21" + ipv4("10.0.0.1", "10.0.0.2", 17, udp(1, 2, b"ppp")),
        b"\x0f\x00\x08\x00" + ipv4("10.0.0.5", "10.0.0.6", 6, tcp(7, 8)),
        b"\x8f\x00\x86\xdd" + ipv6(V6A, V6B, 17, udp(9, 10)),
        b"\x0f\x00\x80\x35" + b"\0" * 20,  # SLARP
        b"\x12\x34\x00\x21" + b"\0" * 20,  # neither
    ]


def chdlc_frames() -> list[bytes]:
    """LINKTYPE_C_HDLC frames."""
    return [
        b"\x0f\x00\x08\x00" + ipv4("10.0.0.5", "10.0.0.6", 6, tcp(7, 8)),
        b"\x8f\x00\x86\xdd" + ipv6(V6A, V6B, 17, udp(9, 10)),
        b"\x0f\x00\x88\x47" + mpls([5, 6], ipv4("10.0.0.7", "10.0.0.8", 17, udp(1, 1))),
    ]


def pppoe_link_frames() -> list[bytes]:
    """LINKTYPE_PPP_ETHER frames: a PPPoE session header first."""
    return [
        pppoe(ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1, 2, data=b"x"))),
        pppoe(ipv6(V6A, V6B, 17, udp(3, 4)), proto=0x0057),
        pppoe(b"\x01\x01\x00\x04", proto=0xC021),
    ]
