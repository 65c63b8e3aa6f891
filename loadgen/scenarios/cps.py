"""`cps`: SF-TAP's connections-per-second benchmark workload: per connection a 3-way handshake,
two 1400-byte data segments client->server (together one HTTP GET padded to 2800 bytes), the
server's ACK and a FIN teardown. Every connection has a distinct 5-tuple. `--count` = connections."""

from __future__ import annotations

import random

from celltap.loadgen.link import Link, client_v4, mac, server_v4
from celltap.loadgen.packets import ACK, PSH
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation

NET = 8
SEGMENT = 1400
_FILL = b"x" * (2 * SEGMENT)


def request(i: int) -> bytes:
    """The 2800-byte request of connection i."""
    head = f"GET /cps/{i} HTTP/1.1\r\nHost: bench.example.com\r\nX-Fill: ".encode()
    return head + _FILL[: 2 * SEGMENT - len(head) - 4] + b"\r\n\r\n"


@register_flows(
    "cps",
    "SF-TAP CPS benchmark: handshake, 2 x 1400-byte data, FIN; distinct 5-tuples",
    "TCP connections",
    1000,
    mean_gap_ns=20_000,
)
def cps_flow(rng: random.Random, i: int) -> Frames:
    """Connection number i: client 10.8.x.y (port 40000 + i // 65024) to 192.0.2.10:80."""
    link = Link(mac(0x0C, NET, i), mac(0x5E, 0, 0), client_v4(NET, i), server_v4(27), ipid=(i & 0xFFFF, 0))
    conv = TcpConversation(
        link,
        40000 + i // 65024,
        80,
        rng,
        rtt_ns=rng.randint(50_000, 200_000),
        timestamps=False,
        sack=False,
        wscale=None,
        mss=1460,
    )
    conv.handshake()
    data = request(i)
    conv.send_segment(True, ACK, data[:SEGMENT])
    conv.send_segment(True, ACK | PSH, data[SEGMENT:])
    conv.ack(False)
    conv.fin(from_client=True)
    return conv.frames
