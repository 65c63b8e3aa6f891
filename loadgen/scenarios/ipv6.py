"""`ipv6`: HTTP, DNS, TLS and ICMPv6 echo over IPv6, with extension header chains cycling through
none, hop-by-hop, destination options, a segment routing header (type 4, segments left 0) and
hop-by-hop + destination options. `--count` = flows."""

from __future__ import annotations

import random

from celltap.loadgen.link import Link, make_link
from celltap.loadgen.packets import (
    PROTO_ICMPV6,
    ExtHeader,
    destination_options,
    hop_by_hop,
    icmpv6_echo,
    segment_routing,
)
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.scenarios import dns, http, tls

NET = 12
EXT_KINDS = ("none", "hbh", "dst", "srh", "hbh+dst")


def _ext(kind: str, src: bytes, dst: bytes) -> tuple[ExtHeader, ...]:
    if kind == "hbh":
        return (hop_by_hop(),)
    if kind == "dst":
        return (destination_options(),)
    if kind == "srh":
        # segments[0] is the final destination; segments left 0 means it is also the IPv6 dst.
        return (segment_routing([dst, bytes.fromhex("20010db80000ffff") + src[8:]]),)
    if kind == "hbh+dst":
        return (hop_by_hop(), destination_options(1))
    return ()


def ping(rng: random.Random, link: Link) -> Frames:
    """2-5 ICMPv6 echo request/reply pairs one second apart."""
    out: Frames = []
    ident, t = rng.getrandbits(16), 0
    data = bytes(range(56))
    for seq in range(1, rng.randint(3, 6)):
        for from_client in (True, False):
            src, dst = link.addrs(from_client)
            out.append(
                (
                    t,
                    link.frame(
                        from_client,
                        PROTO_ICMPV6,
                        icmpv6_echo(src, dst, ident, seq, data, reply=not from_client),
                    ),
                )
            )
            t += rng.randint(500_000, 30_000_000)
        t += 1_000_000_000
    return out


@register_flows(
    "ipv6",
    "HTTP/DNS/TLS/ICMPv6 over IPv6 with hop-by-hop, dest-options and SRH headers",
    "flows (extension headers cycle through ipv6.EXT_KINDS; app cycles http, dns, tls, ping)",
    40,
)
def ipv6_flow(rng: random.Random, i: int) -> Frames:
    """Flow number i of the ipv6 scenario."""
    link = make_link(rng, NET, i, v6=True)
    kind = EXT_KINDS[i % len(EXT_KINDS)]
    link.ext = (_ext(kind, link.caddr, link.saddr), _ext(kind, link.saddr, link.caddr))
    app = (i // len(EXT_KINDS) + i) % 4
    if app == 0:
        return http.conversation(rng, link)
    if app == 1:
        return dns.conversation(rng, link, dns.QTYPES[i % len(dns.QTYPES)], over_tcp=i % 3 == 0)
    if app == 2:
        return tls.conversation(rng, link, tls13=True, split=i % 2 == 0)
    return ping(rng, link)
