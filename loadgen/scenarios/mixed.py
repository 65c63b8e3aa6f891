"""`mixed`: a deterministic blend of the application scenarios (and some frag, vlan, ipv6, icmp
flows), all interleaved in time as on a real link. Each flow keeps its own scenario's client
subnet, so scenarios never share a client address. `--count` = flows; the scenario of flow i is
drawn with the WEIGHTS below from the seed's schedule RNG."""

from __future__ import annotations

import random
from collections.abc import Iterator

from celltap.loadgen.scenario import REGISTRY, Scenario, flow_rng, interleave

WEIGHTS = {
    "http": 25,
    "dns": 25,
    "tls": 15,
    "smtp": 5,
    "sip": 7,
    "ssh": 5,
    "torrent_tracker": 4,
    "frag": 4,
    "vlan": 4,
    "ipv6": 5,
    "icmp": 1,
}


def _generate(seed: int, count: int) -> Iterator[tuple[int, bytes]]:
    pick = random.Random(f"{seed}/mixed/pick")
    names = list(WEIGHTS)
    chosen = pick.choices(names, weights=[WEIGHTS[n] for n in names], k=count)
    # Cover every scenario at least once when there are enough flows.
    if count >= len(names):
        for k, name in enumerate(names):
            chosen[k * (count // len(names))] = name

    def flow_of(i: int) -> list[tuple[int, bytes]]:
        sc = REGISTRY[chosen[i]]
        assert sc.flow is not None
        return sc.flow(flow_rng(seed, f"mixed/{sc.name}", i), i)

    return interleave(flow_of, count, random.Random(f"{seed}/mixed/schedule"), 1_000_000)


REGISTRY["mixed"] = Scenario(
    "mixed",
    "interleaved blend of http, dns, tls, smtp, sip, ssh, torrent, frag, vlan, ipv6, icmp flows",
    "flows (scenario per flow drawn by mixed.WEIGHTS)",
    200,
    _generate,
)
