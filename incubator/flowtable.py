"""Pinned-flow table: flow hash -> cell slot, a numpy open-addressing table with vectorised ops.

Keys are 64-bit flow hashes; 0 marks an empty slot and 1 a deleted one (tombstone), so hashes 0
and 1 are stored as 2 (a flow whose hash is 0 or 1 shares the pin of hash 2: harmless, it only
keeps them on one cell).  Every operation works on a whole batch: probing walks all pending keys
one step at a time, so the Python loop runs once per probe depth, never once per packet.
Entries carry a deadline: idle timeout after the last packet, or a short linger after FIN/RST so
the final ACKs still follow the pin.  Expiry runs in partial sweeps; a memory cap evicts the
entries closest to their deadline and counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY = np.uint64(0)
TOMBSTONE = np.uint64(1)
MAX_PROBE = 64


@dataclass
class SweepResult:
    """What one maintenance step removed."""

    expired_idle: int = 0
    expired_closed: int = 0
    evicted: int = 0


class FlowTable:
    """A bounded map from flow hash to cell slot with per-entry deadlines (nanoseconds)."""

    def __init__(
        self,
        max_flows: int = 1 << 20,
        idle_timeout_s: float = 60.0,
        close_linger_s: float = 2.0,
        sweep_slots: int = 4096,
    ) -> None:
        self.max_flows = max(16, int(max_flows))
        size = 1
        while size < self.max_flows * 2:
            size <<= 1
        self.mask = np.uint64(size - 1)
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self.keys = np.zeros(size, dtype=np.uint64)
        self.cells = np.zeros(size, dtype=np.int32)
        self.deadline = np.zeros(size, dtype=np.int64)
        self.closing = np.zeros(size, dtype=bool)
        self.idle_ns = int(idle_timeout_s * 1e9)
        self.linger_ns = int(close_linger_s * 1e9)
        self.sweep_slots = sweep_slots
        self.count = 0
        self.tombstones = 0
        self._cursor = 0

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        """Memory held by the table's arrays."""
        return self.keys.nbytes + self.cells.nbytes + self.deadline.nbytes + self.closing.nbytes

    @staticmethod
    def _norm(hashes: np.ndarray) -> np.ndarray:
        h = hashes.astype(np.uint64, copy=True)
        h[h < np.uint64(2)] = np.uint64(2)
        return h

    def _home(self, h: np.ndarray) -> np.ndarray:
        # Fibonacci hashing spreads even sequential keys; flow hashes are random anyway.
        with np.errstate(over="ignore"):
            return (h * np.uint64(0x9E3779B97F4A7C15)) >> self._shift

    def _find(self, h: np.ndarray) -> np.ndarray:
        """Slot of each key, or -1 where absent."""
        n = h.shape[0]
        slot = np.full(n, -1, dtype=np.int64)
        pending = np.arange(n, dtype=np.int64)
        pos = self._home(h)
        for _ in range(MAX_PROBE):
            if pending.size == 0:
                break
            p = pos[pending].astype(np.int64)
            k = self.keys[p]
            hit = k == h[pending]
            slot[pending[hit]] = p[hit]
            go_on = ~hit & (k != EMPTY)
            pending = pending[go_on]
            pos[pending] = (pos[pending] + np.uint64(1)) & self.mask
        return slot

    def lookup(self, hashes: np.ndarray, now_ns: int, closing: np.ndarray | None = None) -> np.ndarray:
        """Pinned cell slot per hash (-1 where not pinned); refreshes the deadlines of hits."""
        h = self._norm(hashes)
        slot = self._find(h)
        found = slot >= 0
        if found.any():
            s = slot[found]
            if closing is not None:
                self.closing[s[closing[found]]] = True
            self.deadline[s] = now_ns + np.where(self.closing[s], self.linger_ns, self.idle_ns)
        out = np.full(h.shape[0], -1, dtype=np.int32)
        out[found] = self.cells[slot[found]]
        return out

    def insert(
        self, hashes: np.ndarray, cells: np.ndarray, now_ns: int, closing: np.ndarray | None = None
    ) -> int:
        """Pin absent hashes to cells (duplicates in the batch must agree); returns evictions."""
        h, first = np.unique(self._norm(hashes), return_index=True)
        c = np.asarray(cells, dtype=np.int32)[first]
        cl = np.zeros(h.shape[0], bool) if closing is None else np.asarray(closing, bool)[first]
        evicted = 0
        if self.count + h.shape[0] > self.max_flows:
            evicted = self.evict(self.count + h.shape[0] - self.max_flows + self.max_flows // 16)
        if self.count + self.tombstones + h.shape[0] > (int(self.mask) + 1) * 3 // 4:
            evicted += self._rehash()
        pending = np.arange(h.shape[0], dtype=np.int64)
        pos = self._home(h)
        for _ in range(MAX_PROBE):
            if pending.size == 0:
                break
            p = pos[pending].astype(np.int64)
            free = self.keys[p] <= TOMBSTONE
            cand = pending[free]
            # Two new keys may race for one free slot: write, then read back who won.
            self.keys[p[free]] = h[cand]
            won = self.keys[p[free]] == h[cand]
            winners = cand[won]
            ws = p[free][won]
            self.tombstones -= int((self.cells[ws] == -2).sum())
            self.cells[ws] = c[winners]
            self.closing[ws] = cl[winners]
            self.deadline[ws] = now_ns + np.where(cl[winners], self.linger_ns, self.idle_ns)
            self.count += winners.size
            done = np.zeros(h.shape[0], bool)
            done[winners] = True
            pending = pending[~done[pending]]
            pos[pending] = (pos[pending] + np.uint64(1)) & self.mask
        if pending.size:
            # Pathological clustering: these flows stay unpinned and simply follow the ring.
            evicted += int(pending.size)
        return evicted

    def _delete_slots(self, slots: np.ndarray) -> None:
        self.keys[slots] = TOMBSTONE
        self.cells[slots] = -2  # marks a tombstone so re-use can be counted
        self.count -= int(slots.size)
        self.tombstones += int(slots.size)

    def _rehash(self) -> int:
        used = np.flatnonzero(self.keys > TOMBSTONE)
        keys, cells = self.keys[used], self.cells[used]
        deadline, closing = self.deadline[used], self.closing[used]
        self.keys[:] = EMPTY
        self.cells[:] = 0
        self.count = 0
        self.tombstones = 0
        pending = np.arange(keys.shape[0], dtype=np.int64)
        pos = self._home(keys)
        for _ in range(MAX_PROBE):
            if not pending.size:
                break
            p = pos[pending].astype(np.int64)
            free = self.keys[p] == EMPTY
            cand = pending[free]
            self.keys[p[free]] = keys[cand]
            won = self.keys[p[free]] == keys[cand]
            winners, ws = cand[won], p[free][won]
            self.cells[ws] = cells[winners]
            self.deadline[ws] = deadline[winners]
            self.closing[ws] = closing[winners]
            self.count += winners.size
            done = np.zeros(keys.shape[0], bool)
            done[winners] = True
            pending = pending[~done[pending]]
            pos[pending] = (pos[pending] + np.uint64(1)) & self.mask
        return int(pending.size)  # could not be placed: unpinned, they follow the ring again

    def sweep(self, now_ns: int, slots: int | None = None) -> SweepResult:
        """Expire entries past their deadline in the next `slots` slots (a partial sweep)."""
        size = int(self.mask) + 1
        k = min(size, slots or self.sweep_slots)
        idx = (np.arange(self._cursor, self._cursor + k, dtype=np.int64)) % size
        self._cursor = (self._cursor + k) % size
        live = self.keys[idx] > TOMBSTONE
        dead = idx[live & (self.deadline[idx] <= now_ns)]
        res = SweepResult()
        if dead.size:
            closed = int(self.closing[dead].sum())
            res.expired_closed = closed
            res.expired_idle = int(dead.size) - closed
            self._delete_slots(dead)
        return res

    def evict(self, n: int) -> int:
        """Remove the n entries nearest their deadline (memory cap); returns how many went."""
        used = np.flatnonzero(self.keys > TOMBSTONE)
        if used.size == 0 or n <= 0:
            return 0
        n = min(n, used.size)
        victims = used[np.argpartition(self.deadline[used], n - 1)[:n]]
        self._delete_slots(victims)
        return int(n)

    def drop_cells(self, slots: np.ndarray | list[int]) -> int:
        """Unpin every flow on the given cell slots (the cell left); returns how many."""
        used = np.flatnonzero(self.keys > TOMBSTONE)
        gone = used[np.isin(self.cells[used], np.asarray(slots, dtype=np.int32))]
        if gone.size:
            self._delete_slots(gone)
        return int(gone.size)

    def per_cell(self, n_slots: int) -> np.ndarray:
        """Number of pinned flows per cell slot."""
        used = np.flatnonzero(self.keys > TOMBSTONE)
        return np.bincount(self.cells[used], minlength=n_slots)
