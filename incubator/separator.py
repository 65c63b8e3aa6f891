"""The flow separator (sans-IO): a batch of frames in, a cell slot (or a drop reason) per frame out.

Per batch: classify (flow hash, status) -> pinned-flow lookup -> ring owner for new flows ->
fragment tracker for fragments -> non-IP policy.  It never touches sockets or files; the engine
hands each cell's frames to its output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from celltap.decode import Reason
from celltap.pcap.batch import FrameBatch
from incubator.cells import CellSet
from incubator.classify import Classified, classify
from incubator.flowtable import FlowTable
from incubator.fragments import DatagramKey, FragmentTracker, Released, datagram_key

DROP = -1  # dropped: the reason is in Routing.drops
HELD = -2  # an early fragment now waiting for its first fragment
ALL = -3  # non-IP frame copied to every live cell

NONIP_POLICIES = ("bridge", "cell0", "all")
NO_CELL = "no_cell"
NONIP_NOT_SEPARATED = "non_ip_policy"


@dataclass
class Routing:
    """Where each frame of one batch goes, plus what the batch released or dropped."""

    slots: np.ndarray  # int32 per frame: cell slot, DROP, HELD or ALL
    drops: dict[str, int] = field(default_factory=dict)  # reason -> frames (this batch's and held ones)
    released: list[Released] = field(default_factory=list)
    new_flows: int = 0
    expired_flows: int = 0
    evicted_flows: int = 0


def _add(drops: dict[str, int], reason: str, n: int) -> None:
    if n:
        drops[reason] = drops.get(reason, 0) + n


class Separator:
    """Routes frames to cells by flow; live flows stay pinned across membership changes."""

    def __init__(
        self,
        cells: Mapping[str, int] | None = None,
        seed: int = 0,
        pin_flows: bool = True,
        nonip_policy: str = "cell0",
        flow_table: FlowTable | None = None,
        fragments: FragmentTracker | None = None,
    ) -> None:
        if nonip_policy not in NONIP_POLICIES:
            raise ValueError(f"non-IP policy must be one of {NONIP_POLICIES}, got {nonip_policy!r}")
        self.seed = seed
        self.cells = CellSet(cells or {}, seed)
        self.pin_flows = pin_flows
        self.nonip_policy = nonip_policy
        self.table = flow_table or FlowTable()
        self.frags = fragments or FragmentTracker()
        self.rehomed_total = 0
        self.now_ns = 0

    def set_cells(self, members: Mapping[str, int]) -> tuple[list[str], list[str], int]:
        """Apply a membership change; returns (joined, left, re-homed flow count)."""
        joined, left = self.cells.update(members)
        rehomed = 0
        if left:
            gone = [self.cells.slot_of[c] for c in left]
            rehomed = self.table.drop_cells(gone)
            gone_set = set(gone)
            for key in [k for k, (s, _e) in self.frags.known.items() if s in gone_set]:
                del self.frags.known[key]
            self.rehomed_total += rehomed
        return joined, left, rehomed

    def route(self, batch: FrameBatch) -> Routing:
        """Decide the cell of every frame of `batch`."""
        n = len(batch)
        if n:
            self.now_ns = max(self.now_ns, int(batch.ts_ns.max()))
        now = self.now_ns
        c = classify(batch, self.seed)
        slots = np.full(n, DROP, dtype=np.int32)
        r = Routing(slots)
        ok = c.status == Reason.OK
        routable = ok & ~(c.frag & ~c.frag_first)
        idx = np.flatnonzero(routable)
        if idx.size:
            if not self.cells.alive:
                _add(r.drops, NO_CELL, int(idx.size))
            else:
                slots[idx] = self._flow_slots(c, idx, now, r)
        bad = ~ok & (c.status != Reason.NON_IP)
        if bad.any():
            for code, cnt in enumerate(np.bincount(c.status[bad], minlength=len(Reason)).tolist()):
                _add(r.drops, Reason(code).label, cnt)
        self._non_ip(c, slots, r)
        if c.frag_index.size:
            self._fragments(batch, c, slots, now, r)
        self.frags.expire(now, r.drops)
        return r

    def _flow_slots(self, c: Classified, idx: np.ndarray, now: int, r: Routing) -> np.ndarray:
        h = c.hashes[idx]
        if not self.pin_flows:
            return self.cells.owner_slots(h)
        closing = c.closing[idx]
        got = self.table.lookup(h, now, closing)
        new = got < 0
        if new.any():
            owners = self.cells.owner_slots(h[new])
            got[new] = owners
            before = len(self.table)
            evicted = self.table.insert(h[new], owners, now, closing[new])
            r.evicted_flows += evicted
            r.new_flows += len(self.table) - before + evicted
        sw = self.table.sweep(now)
        r.expired_flows += sw.expired_idle + sw.expired_closed
        return got

    def _non_ip(self, c: Classified, slots: np.ndarray, r: Routing) -> None:
        nonip = np.flatnonzero(c.status == Reason.NON_IP)
        if not nonip.size:
            return
        if not self.cells.alive:
            _add(r.drops, NO_CELL, int(nonip.size))
        elif self.nonip_policy == "bridge":
            _add(r.drops, NONIP_NOT_SEPARATED, int(nonip.size))
        elif self.nonip_policy == "cell0":
            slots[nonip] = self.cells.first_slot()
        else:
            slots[nonip] = ALL

    def _fragments(self, batch: FrameBatch, c: Classified, slots: np.ndarray, now: int, r: Routing) -> None:
        ts = batch.ts_ns
        for j, i in enumerate(c.frag_index.tolist()):
            l3 = int(c.frag_l3[j])
            alen = 4 if l3 == 4 else 16
            key: DatagramKey = datagram_key(
                l3,
                c.frag_src[j, :alen].tobytes(),
                c.frag_dst[j, :alen].tobytes(),
                int(c.frag_l4[j]),
                int(c.frag_id[j]),
            )
            if c.frag_first[i]:
                if slots[i] >= 0:
                    rel = self.frags.first_fragment(key, int(slots[i]), now)
                    if rel is not None:
                        r.released.append(rel)
                continue
            if not self.cells.alive:
                _add(r.drops, NO_CELL, 1)
                continue
            slot = self.frags.later_fragment(key, int(ts[i]), batch.frame(i), now, r.drops)
            slots[i] = slot if slot >= 0 else (HELD if slot == -1 else DROP)

    def flush(self) -> Routing:
        """End of input: count every fragment still waiting as expired."""
        r = Routing(np.zeros(0, np.int32))
        self.frags.flush(r.drops)
        return r
