"""Consistent-hash ring shared by the incubator (cells) and the collector (analysis nodes).

Each member (id, weight) gets `64 * weight` points at xxh64("id#i", seed).  A key belongs to the
member owning the first point at or after the key's hash, wrapping at the top.  A batch of hashes
is routed with one `numpy.searchsorted`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from celltap.flowhash import xxh64

POINTS_PER_WEIGHT = 64


class Ring:
    """An immutable ring over members {id: weight}; build a new one when membership changes."""

    def __init__(self, members: Mapping[str, int] | None = None, seed: int = 0) -> None:
        self.seed = seed
        self.weights: dict[str, int] = dict(sorted((members or {}).items()))
        for member, weight in self.weights.items():
            if int(weight) < 1:
                raise ValueError(f"ring member {member!r} needs a weight >= 1, got {weight}")
        self.ids: list[str] = list(self.weights)
        pts: list[int] = []
        owners: list[int] = []
        for idx, member in enumerate(self.ids):
            for i in range(POINTS_PER_WEIGHT * int(self.weights[member])):
                pts.append(xxh64(f"{member}#{i}".encode(), seed))
                owners.append(idx)
        points = np.asarray(pts, dtype=np.uint64)
        owner = np.asarray(owners, dtype=np.int32)
        # Ties between two members' points are broken by member order so every process agrees.
        order = np.lexsort((owner, points))
        self.points = points[order]
        self.owner = owner[order]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, member: str) -> bool:
        return member in self.weights

    def owner_index(self, hashes: np.ndarray) -> np.ndarray:
        """Index into `self.ids` of the owner of each uint64 hash (one searchsorted)."""
        if not self.ids:
            raise LookupError("the ring has no members")
        idx = np.searchsorted(self.points, hashes.astype(np.uint64, copy=False), side="left")
        idx[idx == self.points.size] = 0
        return self.owner[idx]

    def owner_of(self, key_hash: int) -> str:
        """Owner id of one hash (scalar path)."""
        return self.ids[int(self.owner_index(np.asarray([key_hash], dtype=np.uint64))[0])]

    def with_member(self, member: str, weight: int = 1) -> Ring:
        """A new ring with `member` added (or re-weighted)."""
        return Ring({**self.weights, member: weight}, self.seed)

    def without_member(self, member: str) -> Ring:
        """A new ring with `member` removed."""
        return Ring({k: v for k, v in self.weights.items() if k != member}, self.seed)
