"""`frag`: fragmented IPv4 and IPv6 datagrams (UDP to port 7, TCP to port 9 inside a connection),
their fragments in order, last first, middle first, first (offset 0) last, duplicated, overlapping
with identical bytes, and one conflicting overlap. `--count` = datagrams; case = CASES[i % len(CASES)].

Each datagram's payload is `payload(i, size)`: lines "celltap frag <i> line <k>\\n" cut to `size`
bytes, so a test can rebuild what a reassembler must deliver.

The conflicting case (`v4-udp-overlap-conflict`): fragments [0,1480) [1400,2880) [2880,end); the
second fragment's first 80 bytes (datagram bytes 1400..1480) are b"X" instead of the payload. The
UDP checksum covers the original bytes, so a reassembler that keeps the first copy (Wireshark's and
Windows' policy) delivers the original datagram and a valid checksum; Linux drops the datagram."""

from __future__ import annotations

import random

from celltap.loadgen.link import Link, make_link
from celltap.loadgen.packets import ACK, PROTO_TCP, PROTO_UDP, PSH, udp
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation

NET = 10
CASES = (
    "v4-udp-inorder",
    "v4-udp-last-first",
    "v4-udp-middle-first",
    "v4-udp-first-last",
    "v4-udp-duplicate",
    "v4-udp-overlap-same",
    "v4-tcp-inorder",
    "v4-tcp-first-last",
    "v6-udp-inorder",
    "v6-udp-last-first",
    "v6-udp-middle-first",
    "v6-udp-duplicate",
    "v6-tcp-first-last",
    "v6-udp-overlap-same",
    "v4-udp-overlap-conflict",
)
UDP_PORT, TCP_PORT = 7, 9  # echo and discard: dissectors that take any bytes


def payload(i: int, size: int) -> bytes:
    """The deterministic payload of datagram i."""
    out = bytearray()
    k = 0
    while len(out) < size:
        out += f"celltap frag {i} line {k}\n".encode()
        k += 1
    return bytes(out[:size])


def pieces_for(case: str, length: int, step: int) -> list[tuple[int, int]]:
    """The byte ranges of the fragments of a `length`-byte datagram, in arrival order."""
    ranges = [(s, min(s + step, length)) for s in range(0, length, step)]
    if "overlap" in case:
        # Every piece after the first starts 80 bytes early, overlapping its predecessor.
        return [ranges[0], *[(lo - 80, hi - 80 if hi < length else hi) for lo, hi in ranges[1:]]]
    if case.endswith("last-first"):
        return [ranges[-1], *ranges[:-1]]
    if case.endswith("middle-first"):
        mid = len(ranges) // 2
        return [ranges[mid], *ranges[:mid], *ranges[mid + 1 :]]
    if case.endswith("first-last"):
        return [*ranges[1:], ranges[0]]
    if case.endswith("duplicate"):
        return [ranges[0], ranges[1], ranges[1], *ranges[2:]]
    return ranges


def conversation(rng: random.Random, link: Link, i: int, case: str) -> Frames:
    """Datagram i of `case` on `link` (UDP: one datagram; TCP: a connection whose data is fragmented)."""
    step = 1480 if not link.is_v6 else 1448 - sum(len(e.body) for e in link.ext[0])
    size = rng.randint(2 * step + 100, 3 * step - 100)  # three fragments
    sport = rng.randint(55000, 59999)
    if "udp" in case:
        data = payload(i, size - 8)
        src, dst = link.addrs(True)
        dgram = udp(src, dst, sport, UDP_PORT, data)
        frames = link.fragment_frames(
            True,
            PROTO_UDP,
            dgram,
            pieces_for(case, len(dgram), step),
            ident=rng.getrandbits(32 if link.is_v6 else 16),
        )
        if case.endswith("conflict"):
            bad = dgram[: step - 80] + b"X" * 80 + dgram[step:]
            frames[1] = link.fragment_frames(
                True, PROTO_UDP, bad, [(step - 80, 2 * step - 80)], ident=_ident_of(frames[0], link)
            )[0]
        out: Frames = []
        t = 0
        for f in frames:
            out.append((t, f))
            t += rng.randint(2_000, 40_000)
        return out
    conv = TcpConversation(link, sport, TCP_PORT, rng)
    conv.handshake()
    data = payload(i, size - 32)
    seg = conv.tcp_bytes(True, ACK | PSH, data)
    for f in link.fragment_frames(
        True,
        PROTO_TCP,
        seg,
        pieces_for(case, len(seg), step),
        ident=rng.getrandbits(32 if link.is_v6 else 16),
    ):
        conv.emit(True, f)
    conv.nxt[0] = (conv.nxt[0] + len(data)) & 0xFFFFFFFF
    conv.ack(False)
    conv.fin(from_client=True)
    return conv.frames


def _ident_of(frame: bytes, link: Link) -> int:
    """The fragment identification of a frame built by `link` (so a replacement fragment matches)."""
    off = 14 + 4 * len(link.tags)
    if link.is_v6:
        ext = 40 + sum(len(e.body) for e in link.ext[0])
        return int.from_bytes(frame[off + ext + 4 : off + ext + 8], "big")
    return int.from_bytes(frame[off + 4 : off + 6], "big")


@register_flows(
    "frag",
    "fragmented IPv4/IPv6 UDP and TCP: reordered, duplicated, overlapping fragments",
    "datagrams (the case cycles through frag.CASES)",
    45,
    mean_gap_ns=2_000_000,
)
def frag_flow(rng: random.Random, i: int) -> Frames:
    """Datagram number i of the frag scenario."""
    case = CASES[i % len(CASES)]
    return conversation(rng, make_link(rng, NET, i, v6=case.startswith("v6")), i, case)
