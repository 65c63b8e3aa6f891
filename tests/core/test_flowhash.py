"""Flow hash: scalar == vectorised == the xxhash package; both directions give one key."""

from __future__ import annotations

import numpy as np
import xxhash

from celltap.flowhash import xxh64_rows
from celltap.flowkey import FlowKey, canonical_key, flow_hashes, key_rows

N = 100_000


def _random_flows(rng: np.random.Generator, version: int, n: int) -> tuple[np.ndarray, ...]:
    alen = 4 if version == 4 else 16
    src = np.zeros((n, 16), np.uint8)
    dst = np.zeros((n, 16), np.uint8)
    src[:, :alen] = rng.integers(0, 256, (n, alen), dtype=np.uint8)
    dst[:, :alen] = rng.integers(0, 256, (n, alen), dtype=np.uint8)
    # Some flows with equal addresses so that the port decides the order.
    same = rng.random(n) < 0.05
    dst[same] = src[same]
    sport = rng.integers(0, 65536, n).astype(np.uint16)
    dport = rng.integers(0, 65536, n).astype(np.uint16)
    l4 = rng.choice(np.array([1, 6, 17, 132], np.uint8), n)
    return l4, src, sport, dst, dport


def test_rows_hash_matches_xxhash_for_many_lengths() -> None:
    rng = np.random.default_rng(7)
    for length in (1, 4, 7, 8, 13, 14, 31, 32, 33, 38, 63, 64, 100):
        rows = rng.integers(0, 256, (200, length), dtype=np.uint8)
        for seed in (0, 1, 0xDEADBEEF, 2**64 - 1):
            got = xxh64_rows(rows, seed)
            want = [xxhash.xxh64_intdigest(r.tobytes(), seed) for r in rows]
            assert got.tolist() == want


def test_scalar_vectorised_and_package_agree_on_100k_keys() -> None:
    rng = np.random.default_rng(42)
    for version in (4, 6):
        alen = 4 if version == 4 else 16
        l4, src, sport, dst, dport = _random_flows(rng, version, N)
        seed = 12345
        vec = flow_hashes(np.full(N, version, np.uint8), l4, src, sport, dst, dport, seed)
        rows = key_rows(version, l4, src, sport, dst, dport)
        for i in range(N):
            key, _ = canonical_key(
                version,
                int(l4[i]),
                src[i, :alen].tobytes(),
                int(sport[i]),
                dst[i, :alen].tobytes(),
                int(dport[i]),
            )
            kb = key.to_bytes()
            assert rows[i].tobytes() == kb
            ref = xxhash.xxh64_intdigest(kb, seed)
            assert key.hash(seed) == ref
            assert int(vec[i]) == ref


def test_both_directions_one_key() -> None:
    rng = np.random.default_rng(3)
    for version in (4, 6):
        l4, src, sport, dst, dport = _random_flows(rng, version, 20_000)
        l3 = np.full(l4.size, version, np.uint8)
        fwd = flow_hashes(l3, l4, src, sport, dst, dport)
        rev = flow_hashes(l3, l4, dst, dport, src, sport)
        assert np.array_equal(fwd, rev)
    a, swapped_a = canonical_key(4, 6, b"\x0a\0\0\x02", 80, b"\x0a\0\0\x01", 5000)
    b, swapped_b = canonical_key(4, 6, b"\x0a\0\0\x01", 5000, b"\x0a\0\0\x02", 80)
    assert a == b == FlowKey(4, 6, b"\x0a\0\0\x01", 5000, b"\x0a\0\0\x02", 80)
    assert swapped_a and not swapped_b


def test_equal_addresses_ordered_by_port() -> None:
    key, swapped = canonical_key(4, 17, b"\x7f\0\0\x01", 9000, b"\x7f\0\0\x01", 53)
    assert (key.port1, key.port2, swapped) == (53, 9000, True)
