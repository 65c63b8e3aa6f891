"""Consistent-hash ring: minimal movement on membership changes; scalar and batch agree."""

from __future__ import annotations

import numpy as np
import pytest

from celltap.flowhash import xxh64
from celltap.ring import POINTS_PER_WEIGHT, Ring

KEYS = np.random.default_rng(11).integers(0, 2**64 - 1, 1_000_000, dtype=np.uint64, endpoint=True)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 16])
def test_adding_a_member_moves_only_its_share(n: int) -> None:
    ring = Ring({f"cell-{i}": 1 for i in range(n)})
    grown = ring.with_member("cell-new")
    before = np.array(ring.ids)[ring.owner_index(KEYS)]
    after = np.array(grown.ids)[grown.owner_index(KEYS)]
    moved = before != after
    frac = moved.mean()
    assert 0.5 / (n + 1) <= frac <= 1.5 / (n + 1), frac
    assert np.all(after[moved] == "cell-new")


@pytest.mark.parametrize("n", [2, 4, 8])
def test_removing_a_member_moves_only_its_keys(n: int) -> None:
    ring = Ring({f"node-{i}": 1 + (i % 2) for i in range(n)})
    shrunk = ring.without_member("node-1")
    before = np.array(ring.ids)[ring.owner_index(KEYS)]
    after = np.array(shrunk.ids)[shrunk.owner_index(KEYS)]
    moved = before != after
    assert np.all(before[moved] == "node-1")
    assert not np.any(after == "node-1")


def test_points_follow_the_design() -> None:
    ring = Ring({"a": 2, "b": 1}, seed=5)
    assert ring.points.size == POINTS_PER_WEIGHT * 3
    want = sorted(
        [xxh64(f"a#{i}".encode(), 5) for i in range(128)] + [xxh64(f"b#{i}".encode(), 5) for i in range(64)]
    )
    assert ring.points.tolist() == want


def test_scalar_matches_batch_and_wraps() -> None:
    ring = Ring({"x": 1, "y": 1, "z": 1})
    top = int(ring.points[-1])
    # A hash above every point wraps to the first point's owner.
    assert ring.owner_of(top + 1 if top < 2**64 - 1 else top) in ring.ids
    assert ring.owner_of(2**64 - 1) == ring.ids[int(ring.owner[0])] or int(ring.points[-1]) == 2**64 - 1
    assert ring.owner_of(int(ring.points[3])) == ring.ids[int(ring.owner[3])]
    sample = KEYS[:1000]
    batch = ring.owner_index(sample)
    assert [ring.ids[i] for i in batch] == [ring.owner_of(int(k)) for k in sample]


def test_bad_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="weight"):
        Ring({"a": 0})
