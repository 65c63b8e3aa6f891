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
