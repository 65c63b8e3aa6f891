"""The collector's side of the cluster: route record batches over the ring to analysis nodes.

`ClusterRouter.on_batch(RecordBatch)` is the hook the collector's ingestion calls.  Small batches
of one template are coalesced, then every partition key in use is hashed and owned in one pass;
each node gets one message per routed batch (records packed as IPFIX data records plus one mask
byte per record), and its backup for those keys gets a replica.  Messages stay pending until the
primary and its replicas acknowledge; the pending total is bounded, and when it is full the
router refuses batches at its ingress and counts them.  When membership changes, what a departed
node had not safely handed over is re-routed with the same identity, so nodes drop duplicates.

Re-routing goes first to the departed primary's *backups* (the nodes that got, or are getting, the
replica under that identity), not to the keys' new owners: a node that left and came back as a new
incarnation owns its keys again, and sending it a batch its backup also holds as a replica would
apply it twice.  Only (record, key) pairs whose backup left too go to the current owners, under a
fresh identity (nobody alive holds them).  Every message names the incarnation of the node it is
for; a node refuses (fences) one meant for an earlier incarnation of itself.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from celltap.collector.cluster_grpc import make_channel
from celltap.collector.cluster_metrics import CLUSTER_METRICS, ROUTER_DROP_REASONS
from celltap.collector.journal import Journal
from celltap.collector.routing import MAX_KEYS, Part, Router, key_hashes
from celltap.proto import celltap_pb2 as pb
from celltap.proto import celltap_pb2_grpc as pb_grpc

from celltap.ipfix.encoder import pack_fixed
from celltap.ipfix.records import RecordBatch, normalized_template
from celltap.ipfix.template import Template, template_set_bytes
from celltap.registry.tls import TLSConfig
from celltap.ring import Ring

log = logging.getLogger("celltap.collector.cluster")

RESTED = 1 << 63  # sequence bit of a message re-routed to new owners because primary and backup left
# Real memory a pending record takes besides its row, its packed copy and its key hashes (8 bytes per
# key): the replicas' indices, the masks (tests/cluster/test_pending_memory.py: 2 x the row + 56 bytes
# per record with one key, by tracemalloc).
PER_RECORD_EXTRA = 48


def pending_memory(records: np.ndarray, keys: int) -> int:
    """Real memory `records` take while pending: the rows, their packed wire copy, the hashes per key,
    index and mask; variable-length fields' objects by their own size (cf. max_pending_bytes)."""
    n = len(records)
    cost = 2 * records.nbytes + n * (PER_RECORD_EXTRA + 8 * keys)
    for dtype, offset in _object_fields(records.dtype):
        values = records.getfield(dtype, offset).tolist()  # getfield: ~10x faster than records[name]
        chars = sum(map(len, values))
        # bytes: len + 33 (header); str: at most 4 bytes a character + 80 (a UCS-4 string's header)
        cost += 4 * chars + 80 * n if values and isinstance(values[0], str) else chars + 40 * n
    return cost


@functools.lru_cache(maxsize=4096)
def _object_fields(dtype: np.dtype) -> tuple[tuple[np.dtype, int], ...]:
    """(dtype, offset) of the variable-length (object) columns of a record dtype, looked up once."""
    fields = dtype.fields or {}
    return tuple(fields[n][:2] for n in dtype.names or () if fields[n][0].hasobject)


@dataclass
class RouterConfig:
    """Tunables of the router (the collector config's `cluster:` section)."""

    collector_id: str
    seed: int = 0
    batch_records: int = 8192  # coalesce small IPFIX messages into batches of about this size
    flush_interval: float = 0.02  # seconds a partial batch may wait
    max_pending_records: int = 2_000_000  # bound on records held until acknowledged
    # ...and on their real memory (pending_memory: a wide template's records cost more each)
    max_pending_bytes: int = 128 << 20
    window: int = 8  # messages in flight per node stream
    replication: bool = True  # also send each record to its backup (exact totals across failures)
    tls: TLSConfig | None = None
    journal: str | None = None  # directory: routed messages kept until acknowledged (collector/journal.py)
    journal_fsync: bool = False  # also survive a machine crash, at one fsync per routed message
    close_timeout: float = 10.0  # at shutdown, seconds to wait for pending acknowledgements


@dataclass(eq=False)
class Outgoing:
    """Records bound for one primary node (and replicas for its backups), pending until acknowledged."""

    seq: int
    origin: str
    exporter: str
    domain: int
    template: Template  # normalized (full-width) template
    template_bytes: bytes
    keys: tuple[str, ...]
    records: np.ndarray  # native records (for re-routing and variable-length packing)
    wire: np.ndarray | None  # fixed-length wire records (packed once)
    hashes: list[np.ndarray]
    mask: np.ndarray
    primary: str
    replicas: dict[str, Part] = field(default_factory=dict)  # node -> Part (indices into records)
    primary_incarnation: str = ""  # of the primary this was routed to; replicas name it
    primary_acked: bool = False
    replicas_acked: set[str] = field(default_factory=set)
    generation: int = 0
    wire_id: str = ""  # the collector run that first routed it (kept when a journal replays it)
    segment: int | None = None  # journal segment holding it
    memory: int = 0  # pending_memory() of its records, charged while it is pending

    @property
    def complete(self) -> bool:
        """Acknowledged by the primary and every replica."""
        return self.primary_acked and self.replicas_acked >= self.replicas.keys()

    def packed(self, index: np.ndarray | None) -> bytes:
        """Records (all, or a subset) as IPFIX data records of `template`."""
        if self.wire is not None:
            if index is None:
                return self.wire.tobytes()
            # Gathering rows of a byte matrix is much faster than of a structured array.
            return self.wire.view(np.uint8).reshape(len(self.wire), -1)[index].tobytes()
        recs = self.records if index is None else self.records[index]
        batch = RecordBatch(self.exporter, self.domain, self.template.template_id, self.template, recs)
        return batch.to_wire()[1]


@dataclass
class _Accumulator:
    exporter: str
    domain: int
    template: Template
    arrays: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    memory: int = 0  # pending_memory() of the arrays
    since: float = 0.0


Domain = tuple[str, int]  # (exporter, observation domain)
SequenceItem = tuple[str, int, int, str, float]  # exporter, domain, next sequence number, unit, seen


class NodeSender:
    """One gRPC stream to one node: sends queued deliveries, at most `window` unacknowledged."""

    def __init__(self, router: ClusterRouter, node: str, address: str) -> None:
        self.router = router
        self.node = node
        self.address = address
        self.queue: deque[int] = deque()
        self.inflight: dict[int, None] = {}
        self.cond = threading.Condition()
        self.stopped = False
        self.stream_id = 0
        self.connected = False
        self.thread = threading.Thread(target=self._run, name=f"send-{node}", daemon=True)
        self.thread.start()

    def enqueue(self, delivery: int) -> None:
        """Send this delivery when the window allows."""
        with self.cond:
            self.queue.append(delivery)
            self.cond.notify_all()

    def stop(self) -> None:
        """Stop sending (queued deliveries are the router's to re-route)."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _requests(self, stream_id: int):
        while True:
            with self.cond:
                while (
                    not self.stopped
                    and self.stream_id == stream_id
                    and (not self.queue or len(self.inflight) >= self.router.config.window)
                ):
                    self.cond.wait(0.1)
                if self.stopped or self.stream_id != stream_id:
                    return
                delivery = self.queue.popleft()
                self.inflight[delivery] = None
            msg = self.router._message(delivery)
            if msg is None:
                with self.cond:
                    self.inflight.pop(delivery, None)
                continue
            yield msg

    def _run(self) -> None:
        backoff = 0.05
        while not self.stopped:
            channel = make_channel(self.address, self.router.config.tls)
            stream_id = self.stream_id
            try:
                call = pb_grpc.AnalysisNodeStub(channel).Push(self._requests(stream_id))
                for ack in call:
                    if not self.connected:
                        self.connected, backoff = True, 0.05
                    self.router._on_ack(self.node, ack)
                    with self.cond:
                        self.inflight.pop(ack.delivery, None)
                        self.cond.notify_all()
            except grpc.RpcError as exc:
                if not self.stopped:
                    log.debug("stream to %s (%s) broke: %s", self.node, self.address, exc.code())
            finally:
                with self.cond:
                    # Unacknowledged sends go out again on the next stream (the node drops repeats).
                    self.stream_id += 1
                    self.queue.extendleft(reversed(list(self.inflight)))
                    self.inflight.clear()
                    self.connected = False
                    self.cond.notify_all()
                channel.close()
            if not self.stopped:
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)


class ClusterRouter:
    """Routes RecordBatches to analysis nodes; membership comes from `set_members` (registry watch)."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.cid = config.collector_id
        CLUSTER_METRICS.replicas_lost.labels(self.cid)  # a loss too: at 0 from the start
        for reason in ROUTER_DROP_REASONS:  # exported at 0 from the start
            CLUSTER_METRICS.dropped.labels(self.cid, reason)
        # Sequence numbers restart with the process; a fresh wire identity keeps a restarted
        # collector's batches from looking like duplicates of its previous life.
        self.wire_id = f"{config.collector_id}@{uuid.uuid4().hex[:8]}"
        self.lock = threading.RLock()
        self.router = Router(Ring({}, config.seed))
        self.members: dict[str, dict[str, Any]] = {}
        self.keys: tuple[str, ...] = ()
        self.senders: dict[str, NodeSender] = {}
        self.pending: dict[int, Outgoing] = {}  # id(outgoing) -> outgoing
        # delivery -> (out, node, generation, the node's incarnation when sent)
        self.deliveries: dict[int, tuple[Outgoing, str, int, str]] = {}
        self.pending_records = 0
        self.accumulated = 0
        self.pending_bytes = 0  # real memory of pending and accumulated records (max_pending_bytes)
        # Records wait per (exporter, domain), one accumulator per template, and a domain's
        # accumulators are routed together (see _route_domain).
        self._acc: dict[Domain, dict[tuple, _Accumulator]] = {}
        self._acc_lock = threading.Lock()
        self._route_lock = threading.RLock()  # one group routed at a time, in the order taken
        self._seq_due: dict[Domain, SequenceItem] = {}  # sequence state waiting for its records' routing
        self._save_sequences: Callable[[list[SequenceItem]], None] | None = None
        self._seq = itertools.count(1)
        self._delivery = itertools.count(1)
        self.idle = threading.Condition(self.lock)
        self.counts: dict[str, int] = {
            "records_in": 0, "dropped_buffer_full": 0, "dropped_no_nodes": 0, "rejected": 0,
            "sent_primary": 0, "sent_replica": 0, "acked": 0, "resent": 0, "replica_lost": 0,
            "ring_changes": 0, "fenced": 0,
        }  # fmt: skip
        self.journal: Journal | None = None
        self._replay: list[tuple[int, pb.JournalEntry]] = []
        self.recovered_sequences: dict[Domain, tuple[int, str, float]] = {}  # as the journal recorded them
        self._replay_armed = False  # set by replay_journal() once the membership view is complete
        if config.journal:
            self.journal = Journal(Path(config.journal) / config.collector_id, fsync=config.journal_fsync)
            self._replay, sequences = self.journal.recover()
            self.recovered_sequences = _sequences_from_journal(sequences)
            CLUSTER_METRICS.journal_torn.labels(config.collector_id).inc(self.journal.torn)
            if self._replay:
                log.warning("journal holds %d messages of an earlier run; re-delivering them once nodes "
                            "are known", len(self._replay))  # fmt: skip
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="cluster-flush", daemon=True)
        self._flusher.start()

    # ---- ingress -------------------------------------------------------------------------

    def __call__(self, batches: list[RecordBatch]) -> None:
        """The collector's sink signature: a list of batches."""
        self.route_with_sequence(batches, [])

    def on_batch(self, batch: RecordBatch) -> bool:
        """Accept a batch for routing; False if it was dropped at ingress (and counted)."""
        accepted, ready = self._accept(batch)
        if ready is not None:
            self._route_domain(ready)
        return accepted

    def bind_sequences(
        self,
        save: Callable[[list[SequenceItem]], None],
        restore: Callable[[dict[Domain, tuple[int, str, float]]], None],
    ) -> None:
        """Take over saving the ingest's sequence state (see route_with_sequence) and hand it what
        the journal recorded of it (`restore` keeps the newer of that and its own saved state)."""
        self._save_sequences = save
        if self.recovered_sequences:
            restore(dict(self.recovered_sequences))

    def route_with_sequence(self, batches: list[RecordBatch], items: list[SequenceItem]) -> None:
        """Route decoded batches; `items` are their exporters' sequence state after them.

        A domain's sequence entry is saved (journaled with the records, then through the bound
        saver) only once every record it covers is journaled: after a crash, each record is either
        re-delivered from the journal or inside the gap the restarted collector counts as lost,
        never both and never neither.
        """
        ready: set[Domain] = set()
        for b in batches:
            _, due = self._accept(b)
            if due is not None:
                ready.add(due)
        with self._route_lock:
            if items:
                now: list[SequenceItem] = []
                with self._acc_lock:
                    for item in items:
                        dom = (item[0], item[1])
                        if dom in self._acc:
                            self._seq_due[dom] = item
                        else:
                            now.append(item)  # nothing waits (and no group is in flight: we hold the lock)
                if now and self._save_sequences is not None:
                    self._save_sequences(now)
            for dom in ready:
                self._route_domain(dom)

    def _accept(self, batch: RecordBatch) -> tuple[bool, Domain | None]:
        """Add a batch to its accumulator: (accepted, its domain if that is now due for routing)."""
        n = len(batch.records)
        if n == 0:
            return True, None
        CLUSTER_METRICS.records_in.labels(self.cid).inc(n)
        memory = pending_memory(batch.records, max(1, len(self.keys)))
        with self.lock:
            self.counts["records_in"] += n
            reason = None
            if not self.members:
                reason = "no_nodes"
            elif (
                self.pending_records + self.accumulated + n > self.config.max_pending_records
                or self.pending_bytes + memory > self.config.max_pending_bytes
            ):
                reason = "buffer_full"
            if reason is not None:
                self.counts[f"dropped_{reason}"] += n
                CLUSTER_METRICS.dropped.labels(self.cid, reason).inc(n)
                return False, None
            self.accumulated += n
            self.pending_bytes += memory
        t = batch.template
        dom = (batch.exporter, batch.domain)
        key = (t.template_id, t.record_bytes())
        with self._acc_lock:
            accs = self._acc.setdefault(dom, {})
            acc = accs.get(key)
            if acc is None:
                acc = accs[key] = _Accumulator(batch.exporter, batch.domain, t, since=time.monotonic())
            acc.arrays.append(batch.records)
            acc.count += n
            acc.memory += memory
            return True, dom if acc.count >= self.config.batch_records else None

    def flush(self) -> None:
        """Route every partially filled batch now."""
        with self._acc_lock:
            doms = list(self._acc)
        for dom in doms:
            self._route_domain(dom)

    def _flush_loop(self) -> None:
        next_collect = 0.0
        while not self._stop.wait(self.config.flush_interval / 2):
            now = time.monotonic()
            if self.journal is not None and now >= next_collect:
                next_collect = now + 0.5
                with self.lock:  # no segment is deleted between a re-route's release and retain
                    self.journal.collect()
                CLUSTER_METRICS.journal_bytes.labels(self.cid).set(self.journal.size())
            with self._acc_lock:
                due = [
                    dom for dom, accs in self._acc.items()
                    if any(now - a.since >= self.config.flush_interval for a in accs.values())
                ]  # fmt: skip
            for dom in due:
                try:
                    self._route_domain(dom)
                except Exception:  # _route_domain counts its own failures; this only guards the thread
                    log.exception("routing a batch failed")

    # ---- routing -------------------------------------------------------------------------

    def _route_domain(self, dom: Domain) -> None:
        """Route everything a domain has waiting, as one group, with its due sequence state.

        Groups are taken and routed under one lock, so they reach the journal in the order their
        records arrived: a sequence entry journaled with a group never covers records of a group
        taken before it and not yet written.
        """
        with self._route_lock:
            with self._acc_lock:
                accs = list(self._acc.pop(dom, {}).values())
                item = self._seq_due.pop(dom, None)
            if not accs and item is None:
                return
            count = sum(a.count for a in accs)
            try:
                self._route_group(accs, item)
            except Exception:
                # A batch we cannot route must not wedge the buffer accounting: count it and go on.
                log.exception("could not route %d records from %s; dropped", count, dom[0])
                with self.lock:
                    self.accumulated -= count
                    self.pending_bytes -= sum(a.memory for a in accs)
                    self.counts["dropped_error"] = self.counts.get("dropped_error", 0) + count
                CLUSTER_METRICS.dropped.labels(self.cid, "error").inc(count)

    def _outgoing(self, acc: _Accumulator, router: Router, keys: tuple[str, ...]) -> list[Outgoing]:
        """One message per primary owner of an accumulator's records (hashing, no lock held)."""
        records = acc.arrays[0] if len(acc.arrays) == 1 else np.concatenate(acc.arrays)
        template = normalized_template(acc.template)
        hashes = [key_hashes(records, k, acc.exporter, self.config.seed) for k in keys]
        wire = None
        if template.record_length is not None:
            cols = {name: records[name] for name in records.dtype.names or ()}
            wire = pack_fixed(template, cols, len(records))
        tbytes = template_set_bytes(template)
        outs = []
        for part in router.primaries(hashes) if router.ring.ids else []:
            sub = [h[part.index] for h in hashes]
            out = Outgoing(
                wire_id=self.wire_id,
                seq=next(self._seq), origin=part.node, exporter=acc.exporter, domain=acc.domain,
                template=template, template_bytes=tbytes, keys=keys, records=records[part.index],
                wire=None if wire is None else wire[part.index], hashes=sub, mask=part.mask,
                primary=part.node,
            )  # fmt: skip
            if self.config.replication:
                whole = Part(part.node, np.arange(len(part.index)), part.mask)
                out.replicas = {p.node: p for p in router.backups(part.node, sub, whole)}
            outs.append(out)
        left = acc.memory  # the accumulator's charge moves to its messages, in shares of their records
        for i, out in enumerate(outs):
            out.memory = left if i == len(outs) - 1 else acc.memory * len(out.records) // acc.count
            left -= out.memory
        return outs

    def _route_group(self, accs: list[_Accumulator], item: SequenceItem | None) -> None:
        """Hash, journal (one record for the whole group and its sequence entry), then send."""
        with self.lock:
            router, keys = self.router, self.keys
        outs = [out for acc in accs for out in self._outgoing(acc, router, keys)]
        with self.lock:
            for acc in accs:
                self.accumulated -= acc.count
                self.pending_bytes -= acc.memory  # charged again per message in _add_pending
                if router.ring.ids:
                    continue
                # The ring emptied meanwhile: nobody to route to.
                self.counts["dropped_no_nodes"] += acc.count
                CLUSTER_METRICS.dropped.labels(self.cid, "no_nodes").inc(acc.count)
            if self.journal is not None:
                self._journal(outs, item)
            if item is not None and self._save_sequences is not None:
                self._save_sequences([item])
            for out in outs:
                self._add_pending(out)
                if router is not self.router:
                    self._repair(out)  # membership changed while we hashed
                else:
                    self._dispatch(out)

    def _journal(self, outs: list[Outgoing], item: SequenceItem | None) -> None:
        """Append the messages of one group, as their primaries get them, and the sequence entry they
        bring up to date, as one journal record (under self.lock)."""
        assert self.journal is not None
        entries = []
        for out in outs:
            out.primary_incarnation = str(self.members.get(out.primary, {}).get("incarnation", ""))
            batch = pb.RecordBatchMsg(
                collector=out.wire_id, sequence=out.seq, origin=out.origin, exporter=out.exporter,
                domain=out.domain, template=out.template_bytes, records=out.packed(None),
                count=len(out.mask), keys=list(out.keys), key_mask=out.mask.tobytes(),
                incarnation=out.primary_incarnation,
            )  # fmt: skip
            replicas = [
                pb.JournalReplica(node=n, index=p.index.astype("<u4").tobytes(), mask=p.mask.tobytes())
                for n, p in out.replicas.items()
            ]
            entries.append(pb.JournalEntry(batch=batch, primary=out.primary, replicas=replicas))
        sequences = {f"{item[0]}|{item[1]}": list(item[2:])} if item is not None else None
        if not entries and not sequences:
            return
        segment = self.journal.append_group(entries, sequences)
        for out in outs:
            out.segment = segment

    def _add_pending(self, out: Outgoing) -> None:
        out.primary_incarnation = str(self.members.get(out.primary, {}).get("incarnation", ""))
        if out.segment is not None and self.journal is not None:
            self.journal.retain(out.segment)
        self.pending[id(out)] = out
        self.pending_records += len(out.records)
        if not out.memory:  # a re-sent part or a journal replay: charged by its own records
            out.memory = pending_memory(out.records, len(out.keys))
        self.pending_bytes += out.memory
        CLUSTER_METRICS.pending.labels(self.cid).set(self.pending_records)

    def _drop_pending(self, out: Outgoing) -> None:
        if self.pending.pop(id(out), None) is not None:
            if out.segment is not None and self.journal is not None:
                self.journal.release(out.segment)
            self.pending_records -= len(out.records)
            self.pending_bytes -= out.memory
            CLUSTER_METRICS.pending.labels(self.cid).set(self.pending_records)
            if not self.pending:
                self.idle.notify_all()

    def _send(self, out: Outgoing, node: str) -> None:
        sender = self.senders.get(node)
        if sender is None:
            return  # not a member (any more): _repair handles it at the membership change
        delivery = next(self._delivery)
        incarnation = str(self.members.get(node, {}).get("incarnation", ""))
        self.deliveries[delivery] = (out, node, out.generation, incarnation)
        role = "primary" if node == out.primary else "replica"
        n = len(out.records) if role == "primary" else len(out.replicas[node].index)
        self.counts[f"sent_{role}"] += n
        CLUSTER_METRICS.sent.labels(self.cid, node, role).inc(n)
        sender.enqueue(delivery)

    def _dispatch(self, out: Outgoing) -> None:
        if not out.primary_acked:
            self._send(out, out.primary)
        for node in out.replicas:
            if node not in out.replicas_acked:
                self._send(out, node)

    def _message(self, delivery: int) -> pb.RecordBatchMsg | None:
        with self.lock:
            entry = self.deliveries.get(delivery)
            if entry is None or entry[0].generation != entry[2]:
                self.deliveries.pop(delivery, None)
                return None
            out, node, _, incarnation = entry
            part = out.replicas.get(node) if node != out.primary else None
            if node != out.primary and part is None:
                return None
        index = None if part is None else part.index
        mask = out.mask if part is None else part.mask
        return pb.RecordBatchMsg(
            collector=out.wire_id, sequence=out.seq, origin=out.origin,
            replica_of=out.primary if part is not None else "",
            replica_incarnation=out.primary_incarnation if part is not None else "",
            exporter=out.exporter, domain=out.domain,
            template=out.template_bytes, records=out.packed(index), count=len(mask), keys=list(out.keys),
            key_mask=mask.tobytes(), delivery=delivery, incarnation=incarnation,
        )  # fmt: skip

    def _on_ack(self, node: str, ack: pb.Ack) -> None:
        with self.lock:
            entry = self.deliveries.pop(ack.delivery, None)
            if entry is None:
                return
            out, target, generation, _ = entry
            if generation != out.generation or id(out) not in self.pending:
                return
            role = "primary" if target == out.primary else "replica"
            n = len(out.records) if role == "primary" else len(out.replicas[target].index)
            if ack.fenced:
                # Sent to an incarnation of the node that has since been replaced: not applied.
                # The registry shows the new incarnation shortly, and the membership change
                # re-routes this message (_repair), so it stays pending.
                self.counts["fenced"] += n
                return
            if ack.error:
                # The node could not decode what we sent: a bug, not a transient; count, do not retry.
                self.counts["rejected"] += n
                CLUSTER_METRICS.dropped.labels(self.cid, "rejected").inc(n)
                log.error("node %s rejected batch %d: %s", node, out.seq, ack.error)
            CLUSTER_METRICS.acked.labels(self.cid, target, role).inc(n)
            if role == "primary":
                out.primary_acked = True
                self.counts["acked"] += n
            else:
                out.replicas_acked.add(target)
            if out.complete:
                self._drop_pending(out)

    # ---- membership ----------------------------------------------------------------------

    def set_members(self, members: Mapping[str, Mapping[str, Any]]) -> None:
        """Apply a new node membership {id: registry value with grpc, weight, apps, incarnation}."""
        with self.lock:
            old = self.members
            new = {m: dict(v) for m, v in members.items() if v.get("grpc")}
            gone = [m for m in old if m not in new or old[m].get("incarnation") != new[m].get("incarnation")]
            if (
                not gone
                and new.keys() == old.keys()
                and all(
                    old[m].get("grpc") == new[m].get("grpc") and old[m].get("weight") == new[m].get("weight")
                    for m in new
                )
            ):
                self.members = new
                return
            self.members = new
            ring = Ring({m: int(v.get("weight", 1)) for m, v in new.items()}, self.config.seed)
            self.router = Router(ring)
            keys = sorted(
                {str(a.get("key")) for v in new.values() for a in v.get("apps", []) if a.get("key")}
            )
            app_sets = {
                tuple(
                    sorted(
                        (str(a.get("name")), str(a.get("kind")), str(a.get("key"))) for a in v.get("apps", [])
                    )
                )
                for v in new.values()
            }
            if len(app_sets) > 1:
                log.warning("nodes host different apps; an app missing on a node misses that node's share")
            if len(keys) > MAX_KEYS:
                log.error("more than %d partition keys in use (%s); routing only the first", MAX_KEYS, keys)
                keys = keys[:MAX_KEYS]
            self.keys = tuple(keys)
            for m in gone:
                sender = self.senders.pop(m, None)
                if sender is not None:
                    sender.stop()
            if gone:  # their acknowledgements will never come
                self.deliveries = {d: e for d, e in self.deliveries.items() if e[1] not in gone}
            for m, v in new.items():
                sender = self.senders.get(m)
                if sender is not None and sender.address != v["grpc"]:
                    sender.stop()
                    sender = None
                if sender is None:
                    self.senders[m] = NodeSender(self, m, str(v["grpc"]))
            self.counts["ring_changes"] += 1
            CLUSTER_METRICS.ring_changes.labels(self.cid).inc()
            CLUSTER_METRICS.ring_members.labels(self.cid).set(len(new))
            log.info("ring now %s (left: %s)", sorted(new), gone or "-")
            for out in list(self.pending.values()):
                self._repair(out, set(gone))
            if self._replay and self._replay_armed and ring.ids:
                self._replay_journal()

    def _repair(self, out: Outgoing, gone: set[str] | None = None) -> None:
        """Bring one pending message in line with the current membership."""
        members = self.members
        lost = [n for n in out.replicas if n not in members or (gone and n in gone)]
        for node in lost:
            if node not in out.replicas_acked:
                n = len(out.replicas[node].index)
                self.counts["replica_lost"] += n
                CLUSTER_METRICS.replicas_lost.labels(self.cid).inc(n)
            # A backup that left takes nothing with it; the primary still holds the records.
            out.replicas.pop(node)
            out.replicas_acked.discard(node)
        primary_gone = out.primary not in members or (gone is not None and out.primary in gone)
        if not primary_gone:
            if out.complete:
                self._drop_pending(out)
            elif gone is None:
                self._dispatch(out)  # routed on a ring that changed meanwhile: its owner is still here
            return
        if out.replicas and out.replicas.keys() <= out.replicas_acked:
            # Every backup holds a replica; they absorb it when they see the primary leave.
            self._drop_pending(out)
            return
        self._drop_pending(out)
        if not self.router.ring.ids:
            log.warning("no analysis nodes left; holding %d records for later", len(out.records))
            self._add_pending(out)  # re-routed at the next membership change
            return
        self.counts["resent"] += len(out.records)
        adopted, rest = self._adoptions(out)
        for node, (index, mask) in adopted.items():
            self._resend(out, node, index, mask, out.seq)
        if rest.any():
            # Pairs whose backup left too: nobody alive holds them, so a new identity is safe and
            # cannot collide with what an adopting backup got under the old one.  It is derived
            # from the old one (top bit set) so that a journal replay of the same message derives
            # the same identity again; deeper re-routes take a fresh one.
            sel = np.flatnonzero(rest)
            hashes = [h[sel] for h in out.hashes]
            seq = out.seq | RESTED if not out.seq & RESTED else next(self._seq) | RESTED
            for part in self.router.primaries(hashes, rest[sel]):
                self._resend(out, part.node, sel[part.index], part.mask, seq)

    def _adoptions(self, out: Outgoing) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """Per surviving backup of a departed primary, the (indices, masks) it takes over as primary;
        and the per-record mask of (record, key) pairs no surviving backup covers."""
        rest = out.mask.copy()
        adopted = {}
        for node, part in out.replicas.items():
            if node in self.members:
                adopted[node] = (part.index, part.mask)
                rest[part.index] &= ~part.mask
        return adopted, rest

    def _resend(self, out: Outgoing, node: str, index: np.ndarray, mask: np.ndarray, seq: int) -> None:
        """Route records `index` of a departed primary's message to `node` as its new primary."""
        CLUSTER_METRICS.resent.labels(self.cid, node).inc(len(index))
        sub = [h[index] for h in out.hashes]
        new = Outgoing(
            wire_id=out.wire_id, segment=out.segment, seq=seq, origin=out.origin, exporter=out.exporter,
            domain=out.domain, template=out.template,
            template_bytes=out.template_bytes, keys=out.keys, records=out.records[index],
            wire=None if out.wire is None else out.wire[index], hashes=sub, mask=mask, primary=node,
        )  # fmt: skip
        if self.config.replication:
            whole = Part(node, np.arange(len(index)), mask)
            new.replicas = {p.node: p for p in self.router.backups(node, sub, whole)}
        self._add_pending(new)
        self._dispatch(new)

    def has_replay(self) -> bool:
        """True while messages of an earlier run wait to be re-delivered."""
        with self.lock:
            return bool(self._replay)

    def replay_journal(self) -> None:
        """Re-deliver the journal of an earlier run now, or at the first membership with nodes.

        Call once the registry view is synced: replaying over a partial ring would re-route
        messages away from owners that are in fact present.
        """
        with self.lock:
            self._replay_armed = True
            if self._replay and self.router.ring.ids:
                self._replay_journal()

    def _replay_journal(self) -> None:
        """Re-deliver what an earlier run journaled (under self.lock, with a non-empty ring).

        Each message goes back to its primary if that node is still the same incarnation (it, and
        the backups, drop what they hold already); otherwise it is re-routed like any message of a
        departed primary: to its backups, under its identity.
        """
        assert self.journal is not None
        entries, self._replay = self._replay, []
        replayed = 0
        for seg, entry in entries:
            try:
                out = self._outgoing_from_journal(entry, seg)
            except Exception as exc:  # a damaged entry costs that entry, counted
                n = entry.batch.count
                log.error("journal entry %s/%d cannot be re-delivered (%s): %d records lost",
                          entry.batch.collector, entry.batch.sequence, exc, n)  # fmt: skip
                self.counts["dropped_journal"] = self.counts.get("dropped_journal", 0) + n
                CLUSTER_METRICS.dropped.labels(self.cid, "journal").inc(n)
                self.journal.release(seg)
                continue
            same = str(self.members.get(out.primary, {}).get("incarnation", "")) == entry.batch.incarnation
            self._add_pending(out)
            self.journal.release(seg)  # the pending message holds the segment now
            replayed += len(out.records)
            # Same primary: send to it and to the replicas still present (the rest are dropped
            # as any departed backup is); otherwise re-route as for a departed primary.
            self._repair(out, None if same else {out.primary})
        self.counts["replayed"] = self.counts.get("replayed", 0) + replayed
        CLUSTER_METRICS.replayed.labels(self.cid).inc(replayed)
        log.warning("re-delivered %d records from the journal", replayed)

    def _outgoing_from_journal(self, entry: pb.JournalEntry, segment: int) -> Outgoing:
        b = entry.batch
        batch = RecordBatch.from_wire(b.exporter, b.domain, b.template, b.records)
        records, template = batch.records, batch.template
        keys = tuple(b.keys)
        hashes = [key_hashes(records, k, b.exporter, self.config.seed) for k in keys]
        wire = None
        if template.record_length is not None:
            cols = {name: records[name] for name in records.dtype.names or ()}
            wire = pack_fixed(template, cols, len(records))
        out = Outgoing(
            wire_id=b.collector, segment=segment, seq=b.sequence, origin=b.origin, exporter=b.exporter,
            domain=b.domain, template=template, template_bytes=bytes(b.template), keys=keys, records=records,
            wire=wire, hashes=hashes, mask=np.frombuffer(b.key_mask, dtype=np.uint8).copy(),
            primary=entry.primary,
        )  # fmt: skip
        for r in entry.replicas:
            index = np.frombuffer(r.index, dtype="<u4").astype(np.int64)
            out.replicas[r.node] = Part(r.node, index, np.frombuffer(r.mask, dtype=np.uint8).copy())
        return out

    # ---- lifecycle -----------------------------------------------------------------------

    def wait_idle(self, timeout: float) -> bool:
        """Flush, then wait until nothing is pending; False on timeout."""
        self.flush()
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.pending or self.accumulated:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.idle.wait(min(left, 0.1))
        return True

    def stats(self) -> dict[str, Any]:
        """Counters and the current ring."""
        with self.lock:
            return {
                "collector": self.cid, **self.counts, "pending_records": self.pending_records,
                "pending_bytes": self.pending_bytes,
                "members": sorted(self.members), "keys": list(self.keys),
            }  # fmt: skip

    def close(self, timeout: float = 10.0) -> bool:
        """Deliver what is pending (up to `timeout`), then stop; True if nothing was left."""
        done = self.wait_idle(timeout)
        self._stop.set()
        with self.lock:
            for sender in self.senders.values():
                sender.stop()
            left = self.pending_records
        if left:
            log.error("closing with %d records unacknowledged", left)
        if self.journal is not None:
            with self.lock:
                self.journal.close()
                if not self.pending and not self._replay:
                    self.journal.discard()  # everything acknowledged: nothing to re-deliver
        return done


def _sequences_from_journal(state: dict[str, list]) -> dict[Domain, tuple[int, str, float]]:
    """The journal's sequence entries ({"exporter|domain": [next, unit, seen]}) by domain; a damaged
    entry is skipped (the mmap'd state still has it)."""
    out: dict[Domain, tuple[int, str, float]] = {}
    for key, value in state.items():
        try:
            exporter, _, domain = key.rpartition("|")
            nxt, unit, seen = value
            out[(exporter, int(domain))] = (int(nxt), str(unit), float(seen))
        except (TypeError, ValueError):
            log.warning("journal: damaged sequence entry %r ignored", key)
    return out
