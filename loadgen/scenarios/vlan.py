"""`vlan`: HTTP, DNS and TLS flows inside 802.1Q tags (VIDs 10, 20, 100, 4000) and QinQ stacks
(0x88a8 / 0x9100 / 0x8100 outer over 0x8100 inner). `--count` = flows; tags = TAGS[i % len(TAGS)]."""

from __future__ import annotations

import random

from celltap.loadgen.link import make_link
from celltap.loadgen.packets import TPID_8021AD, TPID_8021Q, TPID_QINQ_OLD
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.scenarios import dns, http, tls

NET = 11
TAGS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((TPID_8021Q, 10),),
    ((TPID_8021AD, 100), (TPID_8021Q, 10)),
    ((TPID_8021Q, 20),),
    ((TPID_QINQ_OLD, 200), (TPID_8021Q, 30)),
    ((TPID_8021Q, 100),),
    ((TPID_8021Q, 300), (TPID_8021Q, 40)),
    ((TPID_8021Q, 4000),),
)


@register_flows(
    "vlan",
    "HTTP/DNS/TLS flows in 802.1Q and QinQ (0x88a8, 0x9100, 0x8100 outer) tags",
    "flows (tag stack cycles through vlan.TAGS; app cycles http, dns, tls)",
    42,
)
def vlan_flow(rng: random.Random, i: int) -> Frames:
    """Flow number i of the vlan scenario."""
    link = make_link(rng, NET, i, tags=TAGS[i % len(TAGS)])
    app = (i // len(TAGS) + i) % 3
    if app == 0:
        return http.conversation(rng, link)
    if app == 1:
        return dns.conversation(rng, link, dns.QTYPES[i % len(dns.QTYPES)], over_tcp=False)
    return tls.conversation(rng, link, tls13=True, split=False)
