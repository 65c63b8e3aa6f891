"""Seed conversations for the harnesses, from loadgen's scenarios (their frames' payloads, per flow).

A loadgen scenario yields Ethernet frames; this reads back each flow's TCP/UDP payloads in order,
with the direction taken from the flow's first frame (the client's). Only what loadgen itself builds
is decoded (Ethernet, optional 802.1Q, IPv4 without fragments, IPv6 with TCP/UDP next), so a minimal
reader suffices.
"""

from __future__ import annotations

import struct

import celltap.loadgen.scenarios  # noqa: F401  (registers every scenario)
from celltap.loadgen.scenario import REGISTRY, flow_rng

Turns = list[tuple[bool, bytes]]


def _payload(frame: bytes) -> tuple[tuple, int, bytes] | None:
    """((src, sport), (dst, dport)), l4 protocol and payload of an Ethernet frame, or None."""
    pos = 12
    etype = struct.unpack_from("!H", frame, pos)[0]
    while etype in (0x8100, 0x88A8):
        pos += 4
        etype = struct.unpack_from("!H", frame, pos)[0]
    pos += 2
    if etype == 0x0800:
        ihl = (frame[pos] & 0xF) * 4
        total = struct.unpack_from("!H", frame, pos + 2)[0]
        if struct.unpack_from("!H", frame, pos + 6)[0] & 0x3FFF:
            return None  # a fragment
        proto = frame[pos + 9]
        src, dst = frame[pos + 12 : pos + 16], frame[pos + 16 : pos + 20]
        end = pos + total
        pos += ihl
    elif etype == 0x86DD:
        proto = frame[pos + 6]
        end = pos + 40 + struct.unpack_from("!H", frame, pos + 4)[0]
        src, dst = frame[pos + 8 : pos + 24], frame[pos + 24 : pos + 40]
        pos += 40
    else:
        return None
    if proto == 6:
        sport, dport = struct.unpack_from("!HH", frame, pos)
        body = frame[pos + (frame[pos + 12] >> 4) * 4 : end]
    elif proto == 17:
        sport, dport = struct.unpack_from("!HH", frame, pos)
        body = frame[pos + 8 : end]
    else:
        return None
    return ((src, sport), (dst, dport)), proto, body


def scenario_conversations(name: str, flows: int = 4, seed: int = 1) -> list[tuple[int, Turns]]:
    """(l4 protocol, turns) of the first `flows` flows of loadgen scenario `name`.

    A flow is one connection of the scenario (its `flow(rng, i)`); datagram flows with several
    5-tuples (DNS over UDP per query) give one conversation per 5-tuple.
    """
    scenario = REGISTRY[name]
    out: list[tuple[int, Turns]] = []
    for i in range(flows):
        frames = scenario.flow(flow_rng(seed, name, i), i) if scenario.flow else []
        convs: dict[frozenset, tuple[int, tuple, Turns]] = {}
        for _ts, frame in frames:
            got = _payload(frame)
            if got is None:
                continue
            (a, b), proto, body = got
            key = frozenset((a, b))
            if key not in convs:
                convs[key] = (proto, a, [])
            _proto0, client, turns = convs[key]
            if body:
                turns.append((a == client, bytes(body)))
        out += [(proto, turns) for proto, _c, turns in convs.values() if turns]
    return out
