"""The flow separator (sans-IO): a batch of frames in, a cell slot (or a drop reason) per frame out.

Per batch: classify (flow hash, status) -> pinned-flow lookup -> ring owner for new flows ->
fragment tracker for fragments -> non-IP policy.  It never touches sockets or files; the engine
hands each cell's frames to its output.

Two partitions decide the owner of a new flow:

* `xxh64` (default): the ring owner of the flow's XXH64; fragments follow their first fragment
  through the fragment tracker.
* `dicap`: the ring owner of the frame's DiCAP bucket (`incubator.dicap`), the function the DiCAP
  cells' kernel filters compute.  Every fragment goes to its own bucket's owner at once (as the
  filter does: no waiting), non-IP frames to bucket 0's owner.  Pins are keyed by flow hash *and*
  bucket, so a flow whose frames fall into different buckets (IPv6 extension headers hide the
  ports from the filter, an untaggable QinQ stack hides the IP header) still gets exactly the
  filter's choice per frame.  Between membership changes every frame goes where the DiCAP cells'
  filters send it; after a change, flows pinned before it stay put until they end, while DiCAP
  cells re-filter at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from celltap.incubator.cells import CellSet
from celltap.incubator.classify import Classified, classify
from celltap.incubator.dicap import DEFAULT_BUCKETS_LOG2, MAX_BUCKETS_LOG2, bucket_owner_slots, dicap_buckets
from celltap.incubator.flowtable import FlowTable
from celltap.incubator.fragments import (
    EXPIRED,
    OVERFLOW_BYTES,
    OVERFLOW_DATAGRAMS,
    DatagramKey,
    FragmentTracker,
    Released,
    datagram_key,
)

from celltap.decode import DEFAULT_OPTIONS, DecodeOptions, Reason
from celltap.decode.reasons import BENIGN
from celltap.pcap.batch import LINKTYPE_ETHERNET, FrameBatch

DROP = -1  # dropped: the reason is in Routing.drops
HELD = -2  # an early fragment now waiting for its first fragment
ALL = -3  # non-IP frame copied to every live cell

NONIP_POLICIES = ("bridge", "cell0", "all")
PARTITIONS = ("xxh64", "dicap")
NO_CELL = "no_cell"
NONIP_NOT_SEPARATED = "non_ip_policy"
NOT_ETHERNET = "not_ethernet"  # dicap partition: the kernel filter's offsets are Ethernet's
# Every reason the separator drops frames for (decode damage, placement, fragment tracking).
DROP_REASONS = (
    NO_CELL, NONIP_NOT_SEPARATED, NOT_ETHERNET, EXPIRED, OVERFLOW_BYTES, OVERFLOW_DATAGRAMS,
    *(r.label for r in Reason if r not in BENIGN),
)  # fmt: skip
# Odd 64-bit multiplier mixing the DiCAP bucket into the pin key (a flow hash per bucket).
_BUCKET_MIX = np.uint64(0xD6E8FEB86659FD93)


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
        partition: str = "xxh64",
        buckets_log2: int = DEFAULT_BUCKETS_LOG2,
        use_ports: bool = True,
        decode_options: DecodeOptions = DEFAULT_OPTIONS,
    ) -> None:
        if nonip_policy not in NONIP_POLICIES:
            raise ValueError(f"non-IP policy must be one of {NONIP_POLICIES}, got {nonip_policy!r}")
        if partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {PARTITIONS}, got {partition!r}")
        if not 1 <= buckets_log2 <= MAX_BUCKETS_LOG2:
            raise ValueError(f"DiCAP buckets_log2 must be 1..{MAX_BUCKETS_LOG2}, got {buckets_log2}")
        self.partition = partition
        self.buckets_log2 = buckets_log2
        self.use_ports = use_ports
        self._bucket_owners: np.ndarray | None = None  # dicap: owner slot per bucket, per membership
        self.seed = seed
        self.decode_options = decode_options
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
        self._bucket_owners = None
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
        if self.partition == "dicap":
            return self._route_dicap(batch, self.now_ns)
        now = self.now_ns
        c = classify(batch, self.seed, self.decode_options)
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

    def bucket_owners(self) -> np.ndarray:
        """dicap partition: the owner slot of every bucket under the current membership."""
        if self._bucket_owners is None:
            self._bucket_owners = bucket_owner_slots(self.cells, self.buckets_log2)
        return self._bucket_owners

    def _route_dicap(self, batch: FrameBatch, now: int) -> Routing:
        n = len(batch)
        slots = np.full(n, DROP, dtype=np.int32)
        r = Routing(slots)
        if batch.linktype != LINKTYPE_ETHERNET:
            _add(r.drops, NOT_ETHERNET, n)
            return r
        c = classify(batch, self.seed, self.decode_options)
        bucket = dicap_buckets(batch, self.buckets_log2, self.use_ports).astype(np.int64)
        owner = self.bucket_owners()[bucket] if self.cells.alive else np.full(n, -1, np.int32)
        ok = c.status == Reason.OK
        flows = np.flatnonzero(ok & ~c.frag)
        frags = np.flatnonzero(ok & c.frag)
        if not self.cells.alive:
            _add(r.drops, NO_CELL, int(flows.size + frags.size))
        else:
            if flows.size:
                with np.errstate(over="ignore"):
                    keys = c.hashes[flows] ^ ((bucket[flows].astype(np.uint64) + np.uint64(1)) * _BUCKET_MIX)
                slots[flows] = self._flow_slots(c, flows, now, r, keys, owner[flows])
            # Stateless, like the filter: each fragment's own bucket (addresses only) decides.
            slots[frags] = owner[frags]
        bad = ~ok & (c.status != Reason.NON_IP)
        if bad.any():
            for code, cnt in enumerate(np.bincount(c.status[bad], minlength=len(Reason)).tolist()):
                _add(r.drops, Reason(code).label, cnt)
        # The filter's h = 0 for frames without IPv4/IPv6: their own bucket is bucket 0.
        self._non_ip(c, slots, r, owner)
        return r

    def _flow_slots(
        self,
        c: Classified,
        idx: np.ndarray,
        now: int,
        r: Routing,
        keys: np.ndarray | None = None,
        owners: np.ndarray | None = None,
    ) -> np.ndarray:
        h = c.hashes[idx] if keys is None else keys
        if not self.pin_flows:
            return self.cells.owner_slots(h) if owners is None else owners
        closing = c.closing[idx]
        got = self.table.lookup(h, now, closing)
        new = got < 0
        if new.any():
            owners = self.cells.owner_slots(h[new]) if owners is None else owners[new]
            got[new] = owners
            before = len(self.table)
            evicted = self.table.insert(h[new], owners, now, closing[new])
            r.evicted_flows += evicted
            r.new_flows += len(self.table) - before + evicted
        sw = self.table.sweep(now)
        r.expired_flows += sw.expired_idle + sw.expired_closed
        return got

    def _non_ip(self, c: Classified, slots: np.ndarray, r: Routing, owner: np.ndarray | None = None) -> None:
        nonip = np.flatnonzero(c.status == Reason.NON_IP)
        if not nonip.size:
            return
        if not self.cells.alive:
            _add(r.drops, NO_CELL, int(nonip.size))
        elif self.nonip_policy == "bridge":
            _add(r.drops, NONIP_NOT_SEPARATED, int(nonip.size))
        elif self.nonip_policy == "cell0":
            slots[nonip] = self.cells.first_slot() if owner is None else owner[nonip]
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
