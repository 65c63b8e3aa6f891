"""An analysis node's state machine: apps, shadow copies for other nodes, and duplicate detection.

No IO here: `handle(msg)` takes one decoded RecordBatchMsg and returns the Ack to send.

Exactly-once across failures works like this.  A collector sends each record (for the keys a node
owns) to that node as *primary*, and a *replica* of the same records to the node that takes those
keys over if the primary leaves (the owner on the ring without the primary).  The replica is
applied to a shadow instance of each app kept per primary.  When the primary leaves the cluster,
its shadow state is absorbed into the live state: the survivors then hold everything the dead node
had acknowledged, exactly once.  A batch is identified by (collector, origin node, sequence); a
re-sent batch keeps that identity, and a node drops what it already applied, live or in a shadow.

A node that was away long enough for its lease to expire (paused, partitioned) comes back as a
new *incarnation* with empty state: the others promoted its shadows meanwhile, so what it held
lives on there.  Batches the collector addressed to the earlier incarnation (still queued in its
sockets when it resumes) carry that incarnation and are *fenced*: refused unapplied, so nothing
the collector has since re-routed elsewhere is applied twice.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from celltap.collector.apps.base import App
from celltap.collector.node_metrics import NODE_METRICS, NODE_REJECT_REASONS
from celltap.proto import celltap_pb2 as pb

from celltap.ipfix.errors import MalformedError
from celltap.ipfix.records import RecordBatch
from celltap.ipfix.template import template_from_set_bytes

log = logging.getLogger("celltap.node")

SEEN_PER_STREAM = 200_000  # a collector never re-sends older than its bounded pending window
MAX_DEPARTED = 4096  # departed (node, incarnation) pairs remembered
MAX_STREAMS = 4096  # (collector run, origin) pairs remembered; the oldest stream is forgotten first


class SeenSet:
    """Bounded sets of applied batch sequence numbers per (collector, origin) stream."""

    def __init__(self, limit: int = SEEN_PER_STREAM, max_streams: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.max_streams = max_streams
        self._sets: dict[tuple[str, str], tuple[set[int], deque[int]]] = {}

    def __contains__(self, ident: tuple[str, str, int]) -> bool:
        entry = self._sets.get((ident[0], ident[1]))
        return entry is not None and ident[2] in entry[0]

    def add(self, ident: tuple[str, str, int]) -> None:
        """Remember one batch; the oldest of its stream is forgotten beyond the limit."""
        stream = (ident[0], ident[1])
        entry = self._sets.get(stream)
        if entry is None:
            if len(self._sets) >= self.max_streams:
                del self._sets[next(iter(self._sets))]  # dicts keep insertion order: the oldest
            entry = self._sets[stream] = (set(), deque())
        seqs, order = entry
        if ident[2] in seqs:
            return
        seqs.add(ident[2])
        order.append(ident[2])
        if len(order) > self.limit:
            seqs.discard(order.popleft())

    def update(self, other: SeenSet) -> None:
        """Add everything `other` remembers."""
        for (c, o), (seqs, order) in other._sets.items():
            for seq in order:
                if seq in seqs:
                    self.add((c, o, seq))

    def __len__(self) -> int:
        return sum(len(s) for s, _ in self._sets.values())


def plausible_records(msg: pb.RecordBatchMsg) -> int:
    """How many records a rejected batch can really have held: its claimed count, bounded by what its
    bytes allow (each record takes at least one byte, a fixed-length one exactly its length)."""
    claimed = int(msg.count)
    size = len(msg.records)
    try:
        t = template_from_set_bytes(msg.template)
        per = t.record_length or max(1, t.min_record_length)
    except Exception:
        per = 1
    return min(claimed, size // per)


@dataclass
class AppSet:
    """One instance of every configured app plus the batches applied to them."""

    apps: list[App]
    seen: SeenSet = field(default_factory=SeenSet)

    def apply(self, records: np.ndarray, exporter: str, keys: list[str], mask: np.ndarray | None) -> None:
        """Feed each app the records whose partition key (a bit of `mask`) this node owns."""
        for app in self.apps:
            if app.key not in keys:
                continue
            if mask is None:
                app.update(records, exporter)
                continue
            bit = np.uint8(1 << keys.index(app.key))
            sel = (mask & bit) != 0
            if sel.all():
                app.update(records, exporter)
            elif sel.any():
                app.update(records[sel], exporter)

    def absorb(self, other: AppSet) -> None:
        """Merge another set's state (a shadow being promoted) into this one."""
        for mine, theirs in zip(self.apps, other.apps, strict=True):
            mine.absorb(theirs.partial())
        self.seen.update(other.seen)


class NodeState:
    """Live apps, shadows per primary node, membership view; thread-safe."""

    def __init__(self, node_id: str, apps: list[App], incarnation: str = "") -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        for reason in NODE_REJECT_REASONS:  # exported at 0 from the start
            NODE_METRICS.rejected.labels(node_id, reason)
        self.live = AppSet(apps)
        # Shadows and departures are per (node id, incarnation): a node that restarts under the
        # same id is a new node, and its replicas must not land in its predecessor's state.
        self.shadows: dict[tuple[str, str], AppSet] = {}
        self.departed: dict[tuple[str, str], None] = {}  # insertion-ordered, bounded
        self.members: dict[str, str] = {}  # id -> incarnation
        self.lock = threading.RLock()
        self.counts: dict[str, int] = {
            "batches_primary": 0, "batches_replica": 0, "records_primary": 0, "records_replica": 0,
            "duplicate_batches": 0, "duplicate_records": 0, "rejected_batches": 0, "rejected_records": 0,
            "promotions": 0, "membership_changes": 0, "fenced_batches": 0, "fenced_records": 0,
            "resets": 0, "overclaimed_records": 0,
        }  # fmt: skip

    def _empty_set(self) -> AppSet:
        return AppSet([a.empty() for a in self.live.apps])

    def handle(self, msg: pb.RecordBatchMsg) -> pb.Ack:
        """Apply one batch (or recognise a duplicate) and return its Ack."""
        ack = pb.Ack(collector=msg.collector, sequence=msg.sequence, delivery=msg.delivery)
        ident = (msg.collector, msg.origin, msg.sequence)
        role = "replica" if msg.replica_of else "primary"
        try:
            batch = RecordBatch.from_wire(msg.exporter, msg.domain, msg.template, msg.records)
            if len(batch.records) != msg.count:
                raise MalformedError(
                    "count_mismatch", f"{len(batch.records)} records, header says {msg.count}"
                )
            mask = np.frombuffer(msg.key_mask, dtype=np.uint8) if msg.key_mask else None
            if mask is not None and len(mask) != msg.count:
                raise MalformedError("mask_length", f"key mask of {len(mask)} bytes for {msg.count} records")
        except Exception as exc:  # whatever a bad batch raises, it must not end the stream
            # The sender's count is a claim: count only what the message could really hold, and the
            # difference (a sender that claims more than it sent) separately.
            n = plausible_records(msg)
            NODE_METRICS.rejected.labels(self.node_id, "malformed").inc(n)
            if msg.count > n:
                NODE_METRICS.rejected.labels(self.node_id, "count_overclaim").inc(msg.count - n)
                self.counts["overclaimed_records"] += msg.count - n
            self.counts["rejected_batches"] += 1
            self.counts["rejected_records"] += n
            log.warning(
                "rejected batch %s/%d from collector %s: %s", msg.origin, msg.sequence, msg.collector, exc
            )
            ack.error = str(exc)
            return ack
        keys = list(msg.keys)
        with self.lock:
            if msg.incarnation and msg.incarnation != self.incarnation:
                # Routed to an earlier life of this node; the collector re-routes it elsewhere.
                self.counts["fenced_batches"] += 1
                self.counts["fenced_records"] += msg.count
                NODE_METRICS.fenced.labels(self.node_id).inc(msg.count)
                ack.fenced = True
                return ack
            target = self._target(msg.replica_of, msg.replica_incarnation)
            if self._is_duplicate(ident, msg.replica_of, target):
                self.counts["duplicate_batches"] += 1
                self.counts["duplicate_records"] += msg.count
                NODE_METRICS.duplicates.labels(self.node_id).inc(msg.count)
                ack.duplicate = True
                return ack
            try:
                target.apply(batch.records, msg.exporter, keys, mask)
            except Exception as exc:  # an app that cannot take this batch must not end the stream
                NODE_METRICS.rejected.labels(self.node_id, "app_error").inc(msg.count)
                self.counts["rejected_batches"] += 1
                self.counts["rejected_records"] += msg.count
                log.exception("batch %s/%d from collector %s: an app failed on it", msg.origin, msg.sequence,
                              msg.collector)  # fmt: skip
                ack.error = f"app_error: {exc!r}"
                return ack
            target.seen.add(ident)
        self.counts[f"batches_{role}"] += 1
        self.counts[f"records_{role}"] += msg.count
        NODE_METRICS.records_in.labels(self.node_id, role).inc(msg.count)
        return ack

    def _target(self, replica_of: str, incarnation: str) -> AppSet:
        primary = (replica_of, incarnation)
        if not replica_of or replica_of == self.node_id or primary in self.departed:
            return self.live  # the primary is gone already: we own these keys now
        shadow = self.shadows.get(primary)
        if shadow is None:
            shadow = self.shadows[primary] = self._empty_set()
        return shadow

    def _is_duplicate(self, ident: tuple[str, str, int], replica_of: str, target: AppSet) -> bool:
        if ident in target.seen or ident in self.live.seen:
            return True
        # A re-send after the origin left: we may hold it in the origin's shadow, not yet promoted.
        return any(ident in shadow.seen for (node, _), shadow in self.shadows.items() if node == ident[1])

    def set_members(self, members: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """New membership view {id: registry value}; promotes the shadows of nodes that left.

        A node whose incarnation changed restarted with empty state: it counts as having left.
        Returns the ids whose shadows were promoted.
        """
        now = {mid: str(v.get("incarnation", "")) for mid, v in members.items()}
        promoted = []
        with self.lock:
            gone = [(m, inc) for m, inc in self.members.items() if m != self.node_id and now.get(m) != inc]
            for primary in gone:
                shadow = self.shadows.pop(primary, None)
                if shadow is not None:
                    self.live.absorb(shadow)
                    promoted.append(primary[0])
                self.departed[primary] = None
                while len(self.departed) > MAX_DEPARTED:
                    del self.departed[next(iter(self.departed))]
            if now != self.members:
                self.counts["membership_changes"] += 1
                NODE_METRICS.membership_changes.labels(self.node_id).inc()
            self.members = now
            self.counts["promotions"] += len(promoted)
        for m in promoted:
            NODE_METRICS.promotions.labels(self.node_id).inc()
            log.warning("node %s left; absorbed the shadow state held for it", m)
        return promoted

    def reset(self, incarnation: str) -> None:
        """Drop all state and become `incarnation`: our lease was lost, so the others absorbed our shadows.

        Batches addressed to the previous incarnation are fenced from now on (see the module doc).
        """
        with self.lock:
            self.live = self._empty_set()
            self.shadows.clear()
            self.incarnation = incarnation
            self.counts["resets"] += 1
            log.warning(
                "node %s lost its registration; state reset, now incarnation %s (its backups took it over)",
                self.node_id, incarnation,
            )  # fmt: skip

    def app(self, name: str) -> App | None:
        """The live app called `name`."""
        for a in self.live.apps:
            if a.name == name:
                return a
        return None

    def partial(self, name: str) -> dict[str, Any]:
        """{"describe", "partial"} of the live app `name` (KeyError if unknown)."""
        with self.lock:
            a = self.app(name)
            if a is None:
                raise KeyError(name)
            return {"describe": a.describe(), "partial": a.partial()}

    def status(self) -> dict[str, Any]:
        """Counters, membership and state sizes."""
        with self.lock:
            sizes = {a.name: a.size() for a in self.live.apps}
            shadow_sizes = {
                f"{p}@{inc}": sum(a.size() for a in s.apps) for (p, inc), s in self.shadows.items()
            }
            for a in self.live.apps:
                NODE_METRICS.state_entries.labels(self.node_id, a.name, "live").set(sizes[a.name])
            NODE_METRICS.state_entries.labels(self.node_id, "*", "shadow").set(sum(shadow_sizes.values()))
            return {
                "node": self.node_id, "incarnation": self.incarnation, "counts": dict(self.counts),
                "members": sorted(self.members), "member_incarnations": dict(self.members),
                "departed": sorted(f"{m}@{inc}" for m, inc in self.departed),
                "apps": [a.describe() for a in self.live.apps],
                "state_sizes": sizes, "shadow_sizes": shadow_sizes,
            }  # fmt: skip
