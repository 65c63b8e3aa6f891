"""Partition keys and ring splits, checked against scalar computations (xxhash package, Ring.owner_of)."""

from __future__ import annotations

import ipaddress

import numpy as np
import xxhash
from celltap.collector.routing import Router, key_hashes, split_by_owner

from celltap.flowkey import canonical_key
from celltap.ring import Ring
from tests.cluster.records import make_records

KEYS = ["dst", "exporter", "flow", "src"]


def _scalar_hash(rec: np.void, key: str, exporter: str) -> int:
    src = int(rec["sourceIPv4Address"]).to_bytes(4, "big")
    dst = int(rec["destinationIPv4Address"]).to_bytes(4, "big")
    if key == "src":
        return xxhash.xxh64_intdigest(src, 0)
    if key == "dst":
        return xxhash.xxh64_intdigest(dst, 0)
    if key == "exporter":
        return xxhash.xxh64_intdigest(exporter.encode(), 0)
    fk, _ = canonical_key(4, int(rec["protocolIdentifier"]), src, int(rec["sourceTransportPort"]), dst,
                          int(rec["destinationTransportPort"]))  # fmt: skip
    return xxhash.xxh64_intdigest(fk.to_bytes(), 0)


def test_key_hashes_match_scalar_xxhash() -> None:
    recs = make_records(np.random.default_rng(3), 200)
    for key in KEYS:
        got = key_hashes(recs, key, "192.0.2.7")
        want = [_scalar_hash(r, key, "192.0.2.7") for r in recs]
        assert got.tolist() == want, key


def test_ipv6_source_hash_is_xxh64_of_16_address_bytes() -> None:
    dtype = np.dtype([("sourceIPv6Address", "V16"), ("sourceIPv4Address", "<u4")])
    recs = np.zeros(2, dtype=dtype)
    a6 = ipaddress.IPv6Address("2001:db8::42").packed
    recs["sourceIPv6Address"][0] = np.frombuffer(a6, dtype="V16")[0]
    recs["sourceIPv4Address"][1] = int(ipaddress.IPv4Address("10.1.2.3"))
    got = key_hashes(recs, "src", "x")
    assert got.tolist() == [xxhash.xxh64_intdigest(a6), xxhash.xxh64_intdigest(bytes([10, 1, 2, 3]))]


def test_each_record_goes_once_to_each_distinct_owner_with_the_right_bits() -> None:
    ring = Ring({"a": 1, "b": 2, "c": 1})
    recs = make_records(np.random.default_rng(5), 500)
    hashes = [key_hashes(recs, k, "e") for k in KEYS]
    parts = Router(ring).primaries(hashes)
    seen: dict[tuple[int, str], int] = {}
    for part in parts:
        assert len(set(part.index.tolist())) == len(part.index)  # once per node
        for i, m in zip(part.index.tolist(), part.mask.tolist(), strict=True):
            seen[(i, part.node)] = m
    for i in range(len(recs)):
        want: dict[str, int] = {}
        for bit, h in enumerate(hashes):
            owner = ring.owner_of(int(h[i]))
            want[owner] = want.get(owner, 0) | (1 << bit)
        got = {node: m for (j, node), m in seen.items() if j == i}
        assert got == want


def test_backups_are_the_owners_once_the_primary_is_gone() -> None:
    ring = Ring({"a": 1, "b": 1, "c": 1, "d": 1})
    recs = make_records(np.random.default_rng(6), 400)
    hashes = [key_hashes(recs, k, "e") for k in ("src", "dst")]
    router = Router(ring)
    for part in router.primaries(hashes):
        without = ring.without_member(part.node)
        covered = 0
        for b in router.backups(part.node, hashes, part):
            assert b.node != part.node
            for i, m in zip(b.index.tolist(), b.mask.tolist(), strict=True):
                for bit in range(2):
                    if m >> bit & 1:
                        assert without.owner_of(int(hashes[bit][i])) == b.node
                        covered += 1
        assert covered == int(sum(bin(int(m)).count("1") for m in part.mask))


def test_split_respects_mask() -> None:
    owners = np.array([[0, 1, 0], [1, 1, 0]])
    parts = split_by_owner(owners, ["x", "y"], np.array([0b01, 0b10, 0b11], np.uint8))
    got = {p.node: (p.index.tolist(), p.mask.tolist()) for p in parts}
    assert got == {"x": ([0, 2], [1, 3]), "y": ([1], [2])}


def test_adding_a_member_moves_only_its_keys() -> None:
    hashes = key_hashes(make_records(np.random.default_rng(8), 20000, n_src=20000), "src", "e")
    r3 = Ring({"n1": 1, "n2": 1, "n3": 1})
    r4 = r3.with_member("n4")
    before = np.array(r3.ids)[r3.owner_index(hashes)]
    after = np.array(r4.ids)[r4.owner_index(hashes)]
    moved = before != after
    assert (after[moved] == "n4").all()
    assert 0.15 < moved.mean() < 0.35
