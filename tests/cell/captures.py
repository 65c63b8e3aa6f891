"""Small, fully controlled captures for the cell tests: TCP with chosen faults, UDP, fragments."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from celltap.loadgen.fragment import ipv4_fragments, ipv6_fragments
from celltap.loadgen.packets import (
    ACK,
    ETH_IPV4,
    ETH_IPV6,
    FIN,
    PROTO_TCP,
    PROTO_UDP,
    PSH,
    RST,
    SYN,
    ethernet,
    ipv4,
    ipv6,
    tcp,
    udp,
)
from celltap.loadgen.scenario import EPOCH_NS

MAC_C = bytes.fromhex("020000000001")
MAC_S = bytes.fromhex("020000000002")
M32 = 0xFFFFFFFF


@dataclass
class Conv:
    """One TCP connection under construction; `frames` are (ts_ns, frame) in capture order."""

    cip: bytes
    sip: bytes
    cport: int
    sport: int
    c_isn: int
    s_isn: int
    v6: bool = False
    t: int = EPOCH_NS
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    sent: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])  # what the app sent

    def frame(self, from_client: bool, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
        """An Ethernet frame of one segment."""
        src, dst = (self.cip, self.sip) if from_client else (self.sip, self.cip)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        seg = tcp(src, dst, sp, dp, seq & M32, ack & M32, flags, payload)
        if self.v6:
            return ethernet(MAC_S, MAC_C, ETH_IPV6, ipv6(src, dst, PROTO_TCP, seg))
        return ethernet(
            MAC_S if from_client else MAC_C,
            MAC_C if from_client else MAC_S,
            ETH_IPV4,
            ipv4(src, dst, PROTO_TCP, seg),
        )

    def put(self, frame: bytes, gap_ns: int = 100_000) -> None:
        """Append a frame after `gap_ns`."""
        self.t += gap_ns
        self.frames.append((self.t, frame))


def tcp_session(
    rng: random.Random,
    i: int,
    faults: frozenset[str] = frozenset(),
    v6: bool = False,
    client_bytes: int = 3000,
    server_bytes: int = 9000,
    mss: int = 700,
) -> Conv:
    """A TCP connection with the requested faults: reorder, retransmit, overlap, wrap, loss, rst."""
    if v6:
        cip = bytes.fromhex("20010db80000000000000000000000") + bytes((i % 200 + 1,))
        sip = bytes.fromhex("20010db80000000000000000000000fe")
    else:
        cip = bytes((10, 0, i // 250, i % 250 + 1))
        sip = bytes((192, 0, 2, 80))
    c_isn = (M32 + 1 - rng.randint(500, 1500)) if "wrap" in faults else rng.getrandbits(32)
    s_isn = (M32 + 1 - rng.randint(500, 1500)) if "wrap" in faults else rng.getrandbits(32)
    c = Conv(cip, sip, 20000 + i, 80, c_isn, s_isn, v6=v6, t=EPOCH_NS + i * 1_000_000)
    c.put(c.frame(True, c_isn, 0, SYN))
    c.put(c.frame(False, s_isn, c_isn + 1, SYN | ACK))
    c.put(c.frame(True, c_isn + 1, s_isn + 1, ACK))
    nxt = [c_isn + 1, s_isn + 1]
    for d, total in ((0, client_bytes), (1, server_bytes)):
        data = bytes(rng.getrandbits(8) for _ in range(total))
        if d == 0:
            data = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n" + data[28:]
        else:
            data = b"HTTP/1.1 200 OK\r\nServer: t\r\n\r\n" + data[30:]
        c.sent[d] += data
        segs = []
        pos = 0
        while pos < len(data):
            n = min(mss, len(data) - pos)
            segs.append((pos, data[pos : pos + n]))
            pos += n
        order = list(range(len(segs)))
        if "reorder" in faults and len(segs) > 3:
            a = rng.randrange(1, len(segs) - 1)
            order[a], order[a + 1] = order[a + 1], order[a]
            b = rng.randrange(0, len(segs) - 2)
            order.insert(b, order.pop(b + 2))
        lost = set()
        if "loss" in faults and len(segs) > 2:
            lost.add(order[len(order) // 2])
        fc = d == 0
        for k in order:
            off, payload = segs[k]
            if k in lost:
                continue
            if "overlap" in faults and k % 4 == 2 and len(payload) > 200:
                # the segment goes out in two pieces whose boundaries overlap by 100 bytes
                h = len(payload) // 2
                c.put(c.frame(fc, nxt[d] + off, nxt[1 - d], ACK | PSH, payload[:h]))
                c.put(c.frame(fc, nxt[d] + off + h - 100, nxt[1 - d], ACK | PSH, payload[h - 100 :]))
            else:
                c.put(c.frame(fc, nxt[d] + off, nxt[1 - d], ACK | PSH, payload))
            if "retransmit" in faults and k % 3 == 1:
                c.put(c.frame(fc, nxt[d] + off, nxt[1 - d], ACK | PSH, payload))
            if "overlap" in faults and k % 4 == 3 and off >= 100:
                # a segment re-sent with different boundaries, covering old and new bytes
                c.put(c.frame(fc, nxt[d] + off - 100, nxt[1 - d], ACK | PSH, data[off - 100 : off + 50]))
        nxt[d] += len(data)
        c.put(c.frame(not fc, nxt[1 - d], nxt[d], ACK))
    if "rst" in faults:
        c.put(c.frame(True, nxt[0], nxt[1], RST | ACK))
    else:
        c.put(c.frame(True, nxt[0], nxt[1], FIN | ACK))
        c.put(c.frame(False, nxt[1], nxt[0] + 1, FIN | ACK))
        c.put(c.frame(True, nxt[0] + 1, nxt[1] + 1, ACK))
    return c


def merge(convs: list[Conv]) -> list[tuple[int, bytes]]:
    """All frames of several conversations in time order."""
    frames = [f for c in convs for f in c.frames]
    frames.sort(key=lambda f: f[0])
    return frames


def udp_frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame."""
    return ethernet(MAC_S, MAC_C, ETH_IPV4, ipv4(src, dst, PROTO_UDP, udp(src, dst, sport, dport, payload)))


def fragmented_udp_v4(
    src: bytes,
    dst: bytes,
    payload: bytes,
    ident: int,
    pieces: list[tuple[int, int]],
    order: list[int] | None = None,
) -> list[bytes]:
    """A UDP datagram split into IPv4 fragments (Ethernet frames), in `order`."""
    dgram = udp(src, dst, 5000, 53, payload)
    frags = ipv4_fragments(src, dst, PROTO_UDP, dgram, ident, pieces)
    if order is not None:
        frags = [frags[k] for k in order]
    return [ethernet(MAC_S, MAC_C, ETH_IPV4, f) for f in frags]


def fragmented_udp_v6(
    src: bytes,
    dst: bytes,
    payload: bytes,
    ident: int,
    pieces: list[tuple[int, int]],
    order: list[int] | None = None,
) -> list[bytes]:
    """A UDP datagram split into IPv6 fragments (Ethernet frames), in `order`."""
    dgram = udp(src, dst, 5000, 53, payload)
    frags = ipv6_fragments(src, dst, PROTO_UDP, dgram, ident, pieces)
    if order is not None:
        frags = [frags[k] for k in order]
    return [ethernet(MAC_S, MAC_C, ETH_IPV6, f) for f in frags]
