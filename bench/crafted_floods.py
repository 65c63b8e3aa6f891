"""Crafted (hand-built, no real tool produced them) hostile captures for the cell's memory and time bounds.

Each function returns [(ts_ns, raw IPv4 packet)] (LINKTYPE_RAW) built from the header layouts alone
(struct), so the figures a test derives from them come from the crafted input, not from our decoder.
Used by tests/cell/test_memory_bounds.py (flood tests of the real cell process) and
bench/bench_reassembly.py.
"""

from __future__ import annotations

import struct

EPOCH_NS = 1_700_000_000_000_000_000
SYN, ACK, PSH = 0x02, 0x10, 0x08


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ident: int = 0, frag: int = 0) -> bytes:
    """An IPv4 header (no options; checksum left 0: the cell does not verify it) and its payload."""
    return (
        struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, frag, 64, proto, 0, src, dst)
        + payload
    )


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    """A 20-byte TCP header (window 65535) and its payload."""
    head = struct.pack(">HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, 5 << 4, flags, 65535, 0, 0)
    return head + payload


def addr(i: int) -> bytes:
    """A distinct 10.x.y.z client address per index."""
    return bytes((10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, 1 + (i & 0x7F)))


SERVER = bytes((192, 0, 2, 80))


def handshake(c: bytes, cport: int, t: int) -> list[tuple[int, bytes]]:
    """SYN, SYN-ACK, ACK of a connection whose client ISN is 1000 and server ISN 5000."""
    return [
        (t, ipv4(c, SERVER, 6, tcp(cport, 80, 1000, 0, SYN))),
        (t + 1000, ipv4(SERVER, c, 6, tcp(80, cport, 5000, 1001, SYN | ACK))),
        (t + 2000, ipv4(c, SERVER, 6, tcp(cport, 80, 1001, 5001, ACK))),
    ]


def ooo_holes(n: int, descending: bool = False, flows: int = 1, seg: int = 1) -> list[tuple[int, bytes]]:
    """`flows` connections whose client sends `n` segments of `seg` bytes, each after a `seg`-byte hole.

    Segment k (k = 0..n-1) sits at relative offset (2k + 1) * seg: nothing is ever in order, every
    segment is its own out-of-order run (the worst case for per-segment bookkeeping).
    """
    body = b"x" * seg
    out: list[tuple[int, bytes]] = []
    t = EPOCH_NS
    for f in range(flows):
        c = addr(f)
        cport = 20000 + (f % 40000)
        out += handshake(c, cport, t)
        t += 3000
        ks = range(n - 1, -1, -1) if descending else range(n)
        for k in ks:
            seq = 1001 + (2 * k + 1) * seg
            out.append((t, ipv4(c, SERVER, 6, tcp(cport, 80, seq, 5001, ACK | PSH, body))))
            t += 1000
    return out


def tiny_first_fragments(n: int) -> list[tuple[int, bytes]]:
    """`n` UDP datagrams of which only the first fragment (8 bytes of payload, more-fragments set) arrives."""
    out = []
    t = EPOCH_NS
    for i in range(n):
        udp = struct.pack(">HHHH", 40000 + (i & 0x3FF), 53, 8 + 64, 0)  # claims a 64-byte body never sent
        out.append((t, ipv4(addr(i >> 16), SERVER, 17, udp, ident=i, frag=0x2000)))
        t += 1000
    return out


def silent_server(flows: int, chunks: int, chunk: int = 1) -> list[tuple[int, bytes]]:
    """`flows` connections whose client sends `chunks` in-order segments of `chunk` bytes; the server
    never answers, so a cell holds all of it back for classification (a `down` rule waits for it)."""
    out: list[tuple[int, bytes]] = []
    t = EPOCH_NS
    for f in range(flows):
        c = addr(f)
        cport = 20000 + (f % 40000)
        out += handshake(c, cport, t)
        t += 3000
        seq = 1001
        for _ in range(chunks):
            out.append((t, ipv4(c, SERVER, 6, tcp(cport, 80, seq, 5001, ACK | PSH, b"p" * chunk))))
            seq += chunk
            t += 1000
    return out


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes) -> bytes:
    """An IPv6 header (no extension headers) and its payload."""
    return struct.pack(">IHBB16s16s", 6 << 28, len(payload), nh, 64, src, dst) + payload


SERVER6 = b"\x20\x01\x0d\xb8" + bytes(11) + b"\x50"
REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def talking_flows(n: int) -> list[tuple[int, bytes]]:
    """`n` IPv6 HTTP connections that open, exchange one request and one response, and stay open.

    Every flow is distinct (client 2001:db8::<index>) and ends in the costliest state a live flow
    has outside the capped buffers: classified, its event header made, both directions' stream and
    history state, IPv6 addresses. Five packets per flow, nothing ever held or out of order.
    """
    out: list[tuple[int, bytes]] = []
    t = EPOCH_NS
    s = SERVER6
    for i in range(n):
        c = b"\x20\x01\x0d\xb8" + bytes(8) + i.to_bytes(4, "big")
        p = 1024 + i % 60000
        q = len(REQUEST)
        out += [
            (t, ipv6(c, s, 6, tcp(p, 80, 1000, 0, SYN))),
            (t + 1000, ipv6(s, c, 6, tcp(80, p, 5000, 1001, SYN | ACK))),
            (t + 2000, ipv6(c, s, 6, tcp(p, 80, 1001, 5001, ACK))),
            (t + 3000, ipv6(c, s, 6, tcp(p, 80, 1001, 5001, ACK | PSH, REQUEST))),
            (t + 4000, ipv6(s, c, 6, tcp(80, p, 5001, 1001 + q, ACK | PSH, RESPONSE))),
        ]
        t += 5000
    return out


def single_flow_udp(n: int, size: int = 8) -> list[tuple[int, bytes]]:
    """`n` whole UDP datagrams of `size` bytes in one flow: a baseline of the same frame count and size."""
    out = []
    t = EPOCH_NS
    for _ in range(n):
        udp = struct.pack(">HHHH", 40000, 53, 8 + size, 0) + b"d" * size
        out.append((t, ipv4(addr(0), SERVER, 17, udp)))
        t += 1000
    return out


def write_raw_pcap(path: str, frames: list[tuple[int, bytes]]) -> None:
    """Write a nanosecond pcap of raw IP packets (LINKTYPE_RAW = 101), headers packed by hand."""
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101))
        parts = []
        for ts, pkt in frames:
            parts.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(pkt), len(pkt)) + pkt)
        f.write(b"".join(parts))
