"""Test captures built from simple frames with known per-flow packet and octet totals."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from celltap.pcap import PcapWriter


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_frame(src: bytes, dst: bytes, proto: int, l4: bytes, ident: int = 0) -> bytes:
    """Ethernet + IPv4 (checksummed) + the given transport bytes."""
    total = 20 + len(l4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0x4000, 64, proto, 0, src, dst)
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + hdr + l4


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header (checksum 0, allowed in IPv4) and payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    """A 20-byte TCP header (checksum left 0: flow meters do not verify it) and payload."""
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload


@dataclass
class Expected:
    """What any flow meter must export for the capture: flows (one direction each), packets, IP octets."""

    flows: int
    packets: int
    octets: int


def write_capture(
    path: Path, n_udp_flows: int = 20, n_tcp_flows: int = 10, start_s: int = 1_700_000_000
) -> Expected:
    """Write a pcap of UDP request/response pairs and short TCP connections; return the totals."""
    frames: list[tuple[int, bytes]] = []
    t = start_s * 10**9
    for i in range(n_udp_flows):
        a = bytes([10, 1, i // 250, i % 250 + 1])
        b = bytes([10, 2, 0, 53])
        for k in range(3 + i % 4):
            frames.append((t, ipv4_frame(a, b, 17, udp(40000 + i, 53, bytes(30 + i + k)), ident=k)))
            t += 1_000_000
            frames.append((t, ipv4_frame(b, a, 17, udp(53, 40000 + i, bytes(100 + 2 * i + k)), ident=k)))
            t += 1_000_000
    for i in range(n_tcp_flows):
        a = bytes([10, 3, 0, i + 1])
        b = bytes([10, 4, 0, 80])
        sp = 50000 + i
        cs, ss = 1000, 5000
        seq = [
            (a, b, tcp(sp, 80, cs, 0, 0x02)),
            (b, a, tcp(80, sp, ss, cs + 1, 0x12)),
            (a, b, tcp(sp, 80, cs + 1, ss + 1, 0x10)),
            (a, b, tcp(sp, 80, cs + 1, ss + 1, 0x18, bytes(200 + i))),
            (b, a, tcp(80, sp, ss + 1, cs + 201 + i, 0x18, bytes(1000 + 10 * i))),
            (a, b, tcp(sp, 80, cs + 201 + i, ss + 1001 + 10 * i, 0x11)),
            (b, a, tcp(80, sp, ss + 1001 + 10 * i, cs + 202 + i, 0x11)),
            (a, b, tcp(sp, 80, cs + 202 + i, ss + 1002 + 10 * i, 0x10)),
        ]
        for src, dst, seg in seq:
            frames.append((t, ipv4_frame(src, dst, 6, seg)))
            t += 1_000_000
    with PcapWriter(str(path)) as w:
        for ts, f in frames:
            w.write(ts, f)
    packets = len(frames)
    octets = sum(len(f) - 14 for _, f in frames)
    return Expected(2 * (n_udp_flows + n_tcp_flows), packets, octets)
