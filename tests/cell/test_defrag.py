"""IP defragmentation: IPv4 and IPv6, any order, first-wins overlaps, timeouts, memory cap."""

from __future__ import annotations

import itertools
import random

from celltap.cell.defrag import Defragmenter
from celltap.loadgen.fragment import ipv4_fragments, ipv6_fragments
from celltap.loadgen.packets import PROTO_UDP, udp

SRC4, DST4 = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
SRC6 = bytes.fromhex("20010db8000000000000000000000001")
DST6 = bytes.fromhex("20010db8000000000000000000000002")


def _payload(n: int, seed: int = 1) -> bytes:
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(n))


def test_ipv4_every_order():
    dgram = udp(SRC4, DST4, 1000, 53, _payload(2000))
    frags = ipv4_fragments(SRC4, DST4, PROTO_UDP, dgram, 77, [(0, 800), (800, 1600), (1600, len(dgram))])
    for perm in itertools.permutations(frags):
        d = Defragmenter()
        results = [d.push(f, 1, len(f)) for f in perm]
        assert results[:-1] == [None, None]
        whole, nfrags, wire = results[-1]
        assert whole[20:] == dgram and nfrags == 3 and wire == sum(len(f) for f in frags)
        assert int.from_bytes(whole[2:4], "big") == 20 + len(dgram) and whole[6:8] == b"\0\0"
        assert not d.pending and d.held == 0


def test_ipv6_every_order():
    dgram = udp(SRC6, DST6, 1000, 53, _payload(3000, 2))
    pieces = [(0, 1000), (1000, 2000), (2000, len(dgram))]
    frags = ipv6_fragments(SRC6, DST6, PROTO_UDP, dgram, 0xABCDEF, pieces)
    for perm in itertools.permutations(frags):
        d = Defragmenter()
        out = [d.push(f, 1, len(f)) for f in perm]
        whole = out[-1][0]
        assert whole[6] == PROTO_UDP and whole[40:] == dgram
        assert int.from_bytes(whole[4:6], "big") == len(dgram)


def test_overlap_first_wins():
    dgram = udp(SRC4, DST4, 1000, 53, _payload(1000, 3))
    evil = bytearray(dgram)
    evil[400:600] = b"X" * 200
    first = ipv4_fragments(SRC4, DST4, PROTO_UDP, dgram, 5, [(0, 600)])
    second = ipv4_fragments(SRC4, DST4, PROTO_UDP, bytes(evil), 5, [(400, len(dgram))])
    d = Defragmenter()
    assert d.push(first[0], 1, 1) is None
    whole = d.push(second[0], 2, 1)[0]
    assert whole[20:] == dgram  # the bytes held first were kept
    assert d.overlaps == 1


def test_timeout_and_memory_cap_are_counted():
    d = Defragmenter(timeout_s=1.0, memory_cap=5000)
    for ident in range(10):
        dgram = udp(SRC4, DST4, 1000, 53, _payload(2000, ident))
        head = ipv4_fragments(SRC4, DST4, PROTO_UDP, dgram, ident, [(0, 1000)])[0]
        d.push(head, ident * 10_000_000, len(head))
    assert d.held <= 5000
    assert d.drops["memory"] == 10 - len(d.pending)
    d.expire(5_000_000_000)
    assert not d.pending and d.held == 0
    assert d.drops["memory"] + d.drops["timeout"] == 10


def test_bad_fragments_are_counted():
    dgram = udp(SRC4, DST4, 1000, 53, _payload(100, 4))
    frag = bytearray(ipv4_fragments(SRC4, DST4, PROTO_UDP, dgram, 9, [(0, 60)])[0])
    frag[2:4] = (20 + 61).to_bytes(2, "big")  # MF set but a length that is not a multiple of 8
    d = Defragmenter()
    assert d.push(bytes(frag[: 20 + 61]), 1, 81) is None
    assert d.drops == {"bad_length": 1}
