"""`dns`: DNS queries and responses over UDP and TCP (2-byte length prefix): A, AAAA, CNAME, NS, MX,
TXT, SOA, PTR, SRV answers, EDNS OPT records, compressed names, NXDOMAIN.
`--count` = transactions (one query + its response; TCP ones are a whole connection)."""

from __future__ import annotations

import random
import struct

from celltap.loadgen.dnsmsg import RCODE_NXDOMAIN, DnsMessage, rdata
from celltap.loadgen.link import Link, ephemeral_port, make_link
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation
from celltap.loadgen.udpflow import UdpExchange

NET = 2
ZONES = ("example.com", "example.net", "example.org", "corp.example", "mail.example.com")
QTYPES = ("A", "AAAA", "CNAME", "NS", "MX", "TXT", "SOA", "PTR", "SRV", "NXDOMAIN")


def _ip4(rng: random.Random) -> bytes:
    return bytes((203, 0, 113, rng.randint(1, 254)))


def _ip6(rng: random.Random) -> bytes:
    return bytes.fromhex("20010db8") + rng.randbytes(12)


def exchange(rng: random.Random, kind: str) -> tuple[str, bytes, bytes]:
    """(query name, query, response) for one question of `kind` (a QTYPES entry)."""
    zone = rng.choice(ZONES)
    ident = rng.getrandbits(16)
    edns = rng.random() < 0.6
    host = rng.choice(("www", "api", "mail", "cdn", "img", "vpn")) + "." + zone
    qtype = kind
    if kind == "PTR":
        host = f"{rng.randint(1, 254)}.113.0.203.in-addr.arpa"
    elif kind == "SRV":
        host = f"_{rng.choice(('sip', 'xmpp-client', 'ldap'))}._tcp.{zone}"
    elif kind in ("NS", "MX", "SOA", "TXT"):
        host = zone
    elif kind == "NXDOMAIN":
        host = f"nope-{rng.getrandbits(20):05x}.{zone}"
        qtype = rng.choice(("A", "AAAA"))
    q = DnsMessage(ident, 0x0100)  # RD
    q.question(host, qtype)
    if edns:
        q.opt(1232, cookie=rng.randbytes(8))
    flags = 0x8180 | (RCODE_NXDOMAIN if kind == "NXDOMAIN" else 0)  # QR RD RA
    r = DnsMessage(ident, flags)
    r.question(host, qtype)
    ttl = rng.choice((60, 300, 3600, 86400))
    ns1, ns2 = f"ns1.{zone}", f"ns2.{zone}"
    if kind == "A":
        for _ in range(rng.randint(1, 3)):
            r.record(1, host, "A", ttl, rdata("A", _ip4(rng)))
    elif kind == "AAAA":
        r.record(1, host, "AAAA", ttl, rdata("AAAA", _ip6(rng)))
    elif kind == "CNAME":
        target = f"edge{rng.randint(1, 9)}.cdn.{zone}"
        r.record(1, host, "CNAME", ttl, rdata("CNAME", target))
        r.record(1, target, "A", 60, rdata("A", _ip4(rng)))
    elif kind == "NS":
        r.record(1, host, "NS", ttl, rdata("NS", ns1))
        r.record(1, host, "NS", ttl, rdata("NS", ns2))
        r.record(3, ns1, "A", ttl, rdata("A", _ip4(rng)))
        r.record(3, ns2, "AAAA", ttl, rdata("AAAA", _ip6(rng)))
    elif kind == "MX":
        r.record(1, host, "MX", ttl, rdata("MX", (10, f"mx1.{zone}")))
        r.record(1, host, "MX", ttl, rdata("MX", (20, f"mx2.{zone}")))
        r.record(3, f"mx1.{zone}", "A", ttl, rdata("A", _ip4(rng)))
    elif kind == "TXT":
        r.record(1, host, "TXT", ttl, rdata("TXT", ["v=spf1 mx -all"]))
        r.record(1, host, "TXT", ttl, rdata("TXT", [f"site-verification={rng.getrandbits(96):024x}", "x=1"]))
    elif kind == "SOA":
        r.record(
            1, host, "SOA", ttl, rdata("SOA", (ns1, f"hostmaster.{zone}", 2023111400 + rng.randint(0, 99)))
        )
    elif kind == "PTR":
        r.record(1, host, "PTR", ttl, rdata("PTR", f"host-{rng.randint(1, 999)}.example.net"))
    elif kind == "SRV":
        target = f"srv{rng.randint(1, 4)}.{zone}"
        r.record(1, host, "SRV", ttl, rdata("SRV", (10, 60, rng.choice((5060, 5222, 389)), target)))
        r.record(3, target, "A", ttl, rdata("A", _ip4(rng)))
    elif kind == "NXDOMAIN":
        r.record(2, zone, "SOA", 300, rdata("SOA", (ns1, f"hostmaster.{zone}", 2023111401)))
    if edns:
        r.opt(1232)
    return host, q.to_bytes(), r.to_bytes()


def conversation(rng: random.Random, link: Link, kind: str, over_tcp: bool) -> Frames:
    """One DNS transaction of `kind` on `link`, over UDP or a short TCP connection."""
    _, query, resp = exchange(rng, kind)
    if over_tcp:
        conv = TcpConversation(link, ephemeral_port(rng), 53, rng)
        conv.handshake()
        conv.send(True, struct.pack("!H", len(query)) + query, peer_ack=False)
        conv.send(False, struct.pack("!H", len(resp)) + resp)
        conv.fin(from_client=True)
        return conv.frames
    ex = UdpExchange(link, ephemeral_port(rng), 53, rng)
    ex.send(True, query)
    ex.send(False, resp)
    return ex.frames


@register_flows(
    "dns",
    "DNS over UDP and TCP: A/AAAA/CNAME/NS/MX/TXT/SOA/PTR/SRV, EDNS, compression, NXDOMAIN",
    "transactions (query + response; every 7th over TCP)",
    100,
    mean_gap_ns=1_000_000,
)
def dns_flow(rng: random.Random, i: int) -> Frames:
    """Transaction number i of the dns scenario (query types rotate so every type appears)."""
    return conversation(rng, make_link(rng, NET, i), QTYPES[i % len(QTYPES)], over_tcp=i % 7 == 3)
