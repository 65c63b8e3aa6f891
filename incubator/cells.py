"""The set of cells the incubator balances over: stable slots plus the consistent-hash ring.

A cell keeps its slot (an index into `ids`) for the life of the process, so pinned flows keep
pointing at the right output while the ring is rebuilt around joins and leaves.  The incubator
scales every registry weight by `WEIGHT_SCALE`: the shared ring gives 64 points per weight unit,
whose shares vary by about +-12 %; 64 units (4096 points per cell) bring the spread of cell
shares to a few percent (tests/incubator/test_offline.py holds 4 cells within 10 % of each other
over 12,000 flows).

The partition table: a flow's cell is `table[hash >> (64 - TABLE_BITS)]`, where bucket b belongs
to the ring owner of its first hash value, b << (64 - TABLE_BITS).  The numpy path, the XDP
program and the DiCAP socket filter all read this one table (the kernel ones from a BPF array the
control plane writes), so they agree bit for bit.  It keeps the ring's properties: a joining cell
takes exactly the buckets whose first hash it now owns on the ring (about 1/(N+1) of them), and a
leaving cell's buckets go to their new ring owners; no other bucket moves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from celltap.ring import Ring

WEIGHT_SCALE = 64
TABLE_BITS = 16  # 65536 buckets: quantising the ring moves shares by well under 1 %


def partition_table(ring: Ring, bits: int = TABLE_BITS) -> np.ndarray:
    """Ring member index owning each of the 2**bits buckets (the owner of its first hash value)."""
    starts = np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
    return ring.owner_index(starts).astype(np.int32)


class CellSet:
    """Cell ids with stable slots, and the ring over the cells currently alive."""

    def __init__(
        self, members: Mapping[str, int] | None = None, seed: int = 0, weight_scale: int = WEIGHT_SCALE
    ) -> None:
        self.seed = seed
        self.weight_scale = weight_scale
        self.ids: list[str] = []
        self.slot_of: dict[str, int] = {}
        self.alive: dict[str, int] = {}
        self.ring = Ring({}, seed)
        self.table_bits = TABLE_BITS
        self._shift = np.uint64(64 - TABLE_BITS)
        self.table = np.full(1 << TABLE_BITS, -1, np.int32)  # bucket -> slot (-1: no cell alive)
        if members:
            self.update(members)

    def update(self, members: Mapping[str, int]) -> tuple[list[str], list[str]]:
        """Make `members` ({id: weight}) the live set; returns (joined ids, left ids)."""
        members = {str(k): int(v) for k, v in members.items()}
        joined = sorted(set(members) - set(self.alive))
        left = sorted(set(self.alive) - set(members))
        changed = joined or left or any(self.alive.get(k) != v for k, v in members.items())
        for cell in joined:
            if cell not in self.slot_of:
                self.slot_of[cell] = len(self.ids)
                self.ids.append(cell)
        self.alive = dict(members)
        if changed:
            self.ring = Ring({k: v * self.weight_scale for k, v in members.items()}, self.seed)
            if members:
                ring_to_slot = np.asarray([self.slot_of[c] for c in self.ring.ids], dtype=np.int32)
                self.table = ring_to_slot[partition_table(self.ring, self.table_bits)]
            else:
                self.table = np.full(1 << self.table_bits, -1, np.int32)
        return joined, left

    def __len__(self) -> int:
        return len(self.alive)

    def owner_slots(self, hashes: np.ndarray) -> np.ndarray:
        """Slot owning each flow hash through the partition table (-1 when no cell is alive)."""
        return self.table[hashes.astype(np.uint64, copy=False) >> self._shift]

    def first_slot(self) -> int:
        """Slot of the first live cell in id order ("cell 0"), -1 when none."""
        if not self.alive:
            return -1
        return self.slot_of[min(self.alive)]

    def alive_slots(self) -> list[int]:
        """Slots of all live cells, in id order."""
        return [self.slot_of[c] for c in sorted(self.alive)]
