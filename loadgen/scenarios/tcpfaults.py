"""`tcpfaults`: TCP connections from client port 20000 + i to port 9 carrying a known payload
with one fault each, the case being CASES[i % len(CASES)]:

- `reorder`: data segments 2 and 3 arrive swapped, microseconds apart;
- `retransmit`: data segment 2 appears twice, byte-identical, an RTO apart;
- `overlap`: after segments 2 and 3, a retransmission covering the second half of 2 and the first
  half of 3 (same bytes);
- `wrap`: the client's ISN is just below 2**32, so its sequence numbers wrap inside the data;
- `loss`: data segment 3 is missing from the capture (never retransmitted; the server's ACKs show
  it arrived, as when a capture point drops a frame);
- `rst`: normal data, then the client aborts with RST instead of FIN.

The client sends `payload(seed, i, size)`; the server answers `reply(seed, i)`, then closes
(except `rst`). `--count` = connections."""

from __future__ import annotations

import random
from collections.abc import Iterator

from celltap.loadgen.link import make_link
from celltap.loadgen.packets import ACK, PSH
from celltap.loadgen.scenario import REGISTRY, Frames, Scenario, interleave
from celltap.loadgen.tcpconv import TcpConversation

NET = 15
CASES = ("reorder", "retransmit", "overlap", "wrap", "loss", "rst")
SERVER_PORT = 9  # discard: tshark shows the bytes without guessing a protocol
_M = 0xFFFFFFFF


def payload(seed: int, i: int, size: int) -> bytes:
    """Client bytes of connection i: lines "tcpfaults seed=<seed> flow=<i> line=<k>\\n" cut to `size`."""
    out = bytearray()
    k = 0
    while len(out) < size:
        out += f"tcpfaults seed={seed} flow={i} line={k:06d}\n".encode()
        k += 1
    return bytes(out[:size])


def reply(seed: int, i: int) -> bytes:
    """Server bytes of connection i."""
    return f"tcpfaults reply seed={seed} flow={i}\n".encode()


def size_of(rng: random.Random) -> int:
    """Client payload size (drawn first from the flow's RNG)."""
    return rng.randint(7, 11) * 1448 + rng.randint(1, 1000)


def conversation(seed: int, rng: random.Random, i: int) -> Frames:
    """Connection number i with its fault."""
    case = CASES[i % len(CASES)]
    size = size_of(rng)
    link = make_link(rng, NET, i)
    conv = TcpConversation(link, 20000 + i, SERVER_PORT, rng, wrap=case == "wrap")
    conv.handshake()
    data = payload(seed, i, size)
    isn = conv.nxt[0]
    parts = conv.chunks(data)
    offsets = [sum(len(p) for p in parts[:k]) for k in range(len(parts))]
    order = list(range(len(parts)))
    if case == "reorder":
        order[2], order[3] = order[3], order[2]
    got = [False] * len(parts)

    def contiguous() -> int:
        n = 0
        while n < len(parts) and got[n]:
            n += 1
        return offsets[n] if n < len(parts) else len(data)

    for pos, k in enumerate(order):
        last = k == len(parts) - 1
        flags = ACK | (PSH if last else 0)
        seq = (isn + offsets[k]) & _M
        if case == "loss" and k == 3:
            conv.segment(True, flags, parts[k], seq=seq)  # sent but not captured: only time passes
        else:
            frame = conv.put(True, flags, parts[k], seq=seq)
            if case == "retransmit" and k == 2:
                conv.t += 200_000_000  # RTO
                conv.emit(True, frame)
        got[k] = True
        if case == "overlap" and k == 3:
            start = offsets[2] + len(parts[2]) // 2
            end = min(start + conv.seg_size, len(data))
            conv.t += 200_000_000
            conv.put(True, ACK, data[start:end], seq=(isn + start) & _M)
        if pos % 2 == 1 or last:
            conv.put(False, ACK, ack=(isn + contiguous()) & _M)
    conv.nxt[0] = (isn + len(data)) & _M
    conv.send(False, reply(seed, i))
    if case == "rst":
        conv.rst(from_client=True)
    else:
        conv.fin(from_client=False)
    return conv.frames


def _generate(seed: int, count: int) -> Iterator[tuple[int, bytes]]:
    sched = random.Random(f"{seed}/tcpfaults/schedule")
    return interleave(
        lambda i: conversation(seed, random.Random(f"{seed}/tcpfaults/{i}"), i), count, sched, 5_000_000
    )


REGISTRY["tcpfaults"] = Scenario(
    "tcpfaults",
    "TCP with reordering, duplicate and overlapping retransmissions, seq wrap, loss, RST",
    "TCP connections (fault = tcpfaults.CASES[i % 6]; client port 20000 + i)",
    30,
    _generate,
)
