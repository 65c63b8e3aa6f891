"""Test-side capture builder: conversations -> Ethernet/IPv4 frames -> pcap (the oracle's input).

Independent of the analyzers and of loadgen: a conversation is a list of (from_client, bytes) turns,
written as a real TCP exchange (handshake, MSS-sized segments with correct seq/ack, FIN) or as UDP
datagrams, so tshark sees an ordinary capture.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from celltap.pcap import PcapWriter

MSS = 1400


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int) -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    head = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, 64, proto, 0, s, d
    )
    head = head[:10] + struct.pack("!H", _csum(head)) + head[12:]
    l4 = payload
    pseudo = s + d + struct.pack("!BBH", 0, proto, len(l4))
    off = 16 if proto == 6 else 6
    l4 = l4[:off] + struct.pack("!H", _csum(pseudo + l4)) + l4[off + 2 :]
    return head + l4


def _eth(ip: bytes) -> bytes:
    return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00" + ip


@dataclass
class Conversation:
    """One flow: client and server endpoints and the turns each side sends, in order."""

    l4: str  # "tcp" | "udp"
    client: tuple[str, int]
    server: tuple[str, int]
    turns: list[tuple[bool, bytes]] = field(default_factory=list)  # (from_client, payload)
    start: float = 1_700_000_000.0
    reset: bool = False


def frames(conv: Conversation) -> list[tuple[float, bytes]]:
    """The capture frames of one conversation, with timestamps."""
    out: list[tuple[float, bytes]] = []
    t = conv.start
    ident = [1]
    (cip, cport), (sip, sport) = conv.client, conv.server

    def emit(from_client: bool, l4: bytes, proto: int) -> None:
        nonlocal t
        src, dst = (cip, sip) if from_client else (sip, cip)
        out.append((t, _eth(_ipv4(src, dst, proto, l4, ident[0]))))
        ident[0] += 1
        t += 0.0005

    if conv.l4 == "udp":
        for from_client, payload in conv.turns:
            sp, dp = (cport, sport) if from_client else (sport, cport)
            emit(from_client, struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload, 17)
        return out
    seq = {True: 1000, False: 5000}

    def seg(from_client: bool, flags: int, payload: bytes = b"") -> None:
        sp, dp = (cport, sport) if from_client else (sport, cport)
        ack = seq[not from_client] if flags != 0x02 else 0
        hdr = struct.pack("!HHIIBBHHH", sp, dp, seq[from_client], ack, 5 << 4, flags, 65535, 0, 0)
        emit(from_client, hdr + payload, 6)
        seq[from_client] = (seq[from_client] + len(payload) + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF

    seg(True, 0x02)
    seg(False, 0x12)
    seg(True, 0x10)
    for from_client, payload in conv.turns:
        for i in range(0, len(payload), MSS):
            seg(from_client, 0x18, payload[i : i + MSS])
        seg(not from_client, 0x10)
    if conv.reset:
        seg(True, 0x04)
    else:
        seg(True, 0x11)
        seg(False, 0x11)
        seg(True, 0x10)
    return out


def write_pcap(convs: list[Conversation], path: str) -> None:
    """Write conversations (one after the other in time) to a pcap file."""
    allf: list[tuple[float, bytes]] = []
    t0 = 1_700_000_000.0
    for i, conv in enumerate(convs):
        conv.start = t0 + i * 0.05
        allf.extend(frames(conv))
    allf.sort(key=lambda x: x[0])
    with PcapWriter(path) as w:
        for t, frame in allf:
            w.write(round(t * 1e9), frame)
