"""`icmp`: ICMP and ICMPv6 echo request/reply series, every 3rd IPv4 one with a Record Route option
as `ping -R` sends (`--count` = ping series).
`sctp`: SCTP associations on port 3868 (Diameter's): INIT, INIT-ACK, COOKIE-ECHO, COOKIE-ACK, DATA
and SACK both ways, then ABORT, every packet with its CRC32c (`--count` = associations)."""

from __future__ import annotations

import random
import struct

from celltap.loadgen.link import make_link
from celltap.loadgen.packets import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    icmp_echo,
    icmpv6_echo,
    ipv4_option_record_route,
    sctp_abort_chunk,
    sctp_init_chunk,
    sctp_packet,
)
from celltap.loadgen.scenario import Frames, register_flows

NET_ICMP, NET_SCTP = 13, 14


@register_flows(
    "icmp", "ICMP / ICMPv6 echo request and reply series (every 3rd over IPv6)", "ping series", 30
)
def icmp_flow(rng: random.Random, i: int) -> Frames:
    """Ping series number i: 2-5 echo pairs one second apart."""
    link = make_link(rng, NET_ICMP, i, v6=i % 3 == 2)
    if i % 3 == 1:
        link.v4_options = ipv4_option_record_route(9)
    ident, t, out = rng.getrandbits(16), 0, []
    data = struct.pack("!Q", 1_700_000_000 + i) + bytes(range(16, 56))
    for seq in range(1, rng.randint(3, 6)):
        for from_client in (True, False):
            if link.is_v6:
                src, dst = link.addrs(from_client)
                msg, proto = icmpv6_echo(src, dst, ident, seq, data, reply=not from_client), PROTO_ICMPV6
            else:
                msg, proto = icmp_echo(ident, seq, data, reply=not from_client), PROTO_ICMP
            out.append((t, link.frame(from_client, proto, msg)))
            t += rng.randint(300_000, 40_000_000)
        t += 1_000_000_000
    return out


def _chunk(kind: int, flags: int, body: bytes) -> bytes:
    return struct.pack("!BBH", kind, flags, 4 + len(body)) + body + bytes(-len(body) % 4)


@register_flows(
    "sctp", "SCTP associations: INIT/INIT-ACK/COOKIE, DATA/SACK, ABORT (CRC32c)", "associations", 20
)
def sctp_flow(rng: random.Random, i: int) -> Frames:
    """Association number i between a client and a Diameter-like server on port 3868."""
    link = make_link(rng, NET_SCTP, i, v6=i % 4 == 3)
    cport = rng.randint(55000, 59999)
    ctag, stag = rng.getrandbits(32) | 1, rng.getrandbits(32) | 1
    ctsn, stsn = rng.getrandbits(32), rng.getrandbits(32)
    cookie = rng.randbytes(rng.choice((20, 36, 64)))
    out: Frames = []
    t = 0

    def send(from_client: bool, vtag: int, chunks: bytes) -> None:
        nonlocal t
        sp, dp = (cport, 3868) if from_client else (3868, cport)
        out.append((t, link.frame(from_client, PROTO_SCTP, sctp_packet(sp, dp, vtag, chunks))))
        t += rng.randint(200_000, 20_000_000)

    send(True, 0, sctp_init_chunk(ctag, 106496, 10, 65535, ctsn))
    send(False, ctag, sctp_init_chunk(stag, 106496, 10, 10, stsn, ack=True, cookie=cookie))
    send(True, stag, _chunk(10, 0, cookie))  # COOKIE ECHO
    send(False, ctag, _chunk(11, 0, b""))  # COOKIE ACK
    for k in range(rng.randint(1, 4)):
        data = f"celltap sctp {i} message {k}".encode()
        send(True, stag, _chunk(0, 0x03, struct.pack("!IHHI", (ctsn + k) & 0xFFFFFFFF, 0, k, 46) + data))
        send(False, ctag, _chunk(3, 0, struct.pack("!IIHH", (ctsn + k) & 0xFFFFFFFF, 106496, 0, 0)))
    send(True, stag, sctp_abort_chunk())
    return out
