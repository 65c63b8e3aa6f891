"""The incubator's data path: separator decisions applied to per-cell outputs, with metrics.

This is the IO edge around the sans-IO separator: it owns the outputs, opens and closes them as
cells come and go, and keeps the counters that prove conservation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from celltap.incubator.fragments import Released
from celltap.incubator.metrics import IncubatorMetrics
from celltap.incubator.outputs import SEND_ERROR_REASONS, Output, open_output
from celltap.incubator.separator import ALL, DROP_REASONS, Routing, Separator

from celltap.pcap.batch import FrameBatch

log = logging.getLogger("celltap.incubator")

FEW_CELLS = 16
# Drop reasons of the engine itself and of the live capture; a failed send adds its errno's name (those
# an output is known to meet are declared, outputs.SEND_ERROR_REASONS).
ENGINE_DROP_REASONS = ("no_output", "output_all_cells_failed", "capture_ring_full")
# Why a cell's copy of an all-cell frame failed: no output, or its send's errno.
OUTPUT_ERROR_REASONS = ("no_output", *SEND_ERROR_REASONS)


@dataclass(frozen=True)
class CellSpec:
    """One cell as the incubator sees it: where its frames go and its ring weight."""

    id: str
    output: str
    weight: int = 1


OutputFactory = Callable[[str], Output]


class Engine:
    """Feeds batches through the separator and out to the cells' outputs."""

    def __init__(
        self,
        separator: Separator,
        metrics: IncubatorMetrics,
        open_fn: OutputFactory = open_output,
        linktype: int = 1,
    ) -> None:
        self.sep = separator
        self.metrics = metrics
        for reason in (*DROP_REASONS, *ENGINE_DROP_REASONS, *SEND_ERROR_REASONS):  # at 0 from the start
            metrics.dropped_frames.labels(reason)
        self.open_fn = open_fn
        self.linktype = linktype
        self.outputs: dict[int, Output] = {}
        self.specs: dict[str, CellSpec] = {}
        # Plain totals alongside the Prometheus counters: tests and the offline summary read them.
        self.received = 0
        self.forwarded = 0
        self.dropped: dict[str, int] = {}
        self.out_frames: dict[str, int] = {}
        self.rehomed = 0
        # False behind the XDP path: the kernel already counted these frames as received.
        self.count_received = True
        # Behind the XDP path: programs the kernel with each membership before it is announced.
        self.after_set_cells: Callable[[], None] | None = None

    def set_cells(self, cells: Mapping[str, CellSpec]) -> None:
        """Apply a membership snapshot: open outputs of new cells, re-home flows of gone ones."""
        for cid, spec in cells.items():
            old = self.specs.get(cid)
            if old is not None and old.output != spec.output:
                slot = self.sep.cells.slot_of[cid]
                self.outputs.pop(slot).close()
        opened: dict[str, Output] = {}
        for cid, spec in cells.items():
            slot = self.sep.cells.slot_of.get(cid)
            if slot is None or slot not in self.outputs:
                try:
                    opened[cid] = self.open_fn(spec.output)
                except (OSError, ValueError) as exc:
                    log.error("cell %s: cannot open output %s: %s; cell left out", cid, spec.output, exc)
        usable = {
            cid: s
            for cid, s in cells.items()
            if cid in opened or self.sep.cells.slot_of.get(cid) in self.outputs
        }
        joined, left, rehomed = self.sep.set_cells({cid: s.weight for cid, s in usable.items()})
        for cid, out in opened.items():
            self.outputs[self.sep.cells.slot_of[cid]] = out
            # each cell's series exist at 0 from its output's start (dashboards show 0, not No data)
            self.metrics.out_frames.labels(cid)
            self.metrics.out_bytes.labels(cid)
            for reason in OUTPUT_ERROR_REASONS:
                self.metrics.output_errors.labels(cid, reason)
        for cid in left:
            out = self.outputs.pop(self.sep.cells.slot_of[cid], None)
            if out is not None:
                out.close()
        self.specs = dict(usable)
        if rehomed:
            self.rehomed += rehomed
            self.metrics.rehomed_flows.inc(rehomed)
        if joined or left:
            log.info("cells joined %s left %s; %d flows re-homed", joined, left, rehomed)
        if self.after_set_cells is not None:
            self.after_set_cells()
        self.metrics.cells.set(len(self.sep.cells))

    def _drop(self, reason: str, n: int) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
            self.metrics.dropped_frames.labels(reason).inc(n)

    def _send(self, slot: int, batch: FrameBatch) -> tuple[int, dict[str, int]]:
        out = self.outputs.get(slot)
        cid = self.sep.cells.ids[slot]
        if out is None:
            return 0, {"no_output": len(batch)}
        sent, nbytes, drops = out.send(batch)
        if sent:
            self.out_frames[cid] = self.out_frames.get(cid, 0) + sent
            self.metrics.out_frames.labels(cid).inc(sent)
            self.metrics.out_bytes.labels(cid).inc(nbytes)
        return sent, drops

    def process(self, batch: FrameBatch, interface: str = "") -> Routing:
        """Separate one batch to the cells."""
        n = len(batch)
        self.received += n
        if self.count_received:
            self.metrics.received_frames.labels(interface).inc(n)
            self.metrics.received_bytes.labels(interface).inc(batch.nbytes)
        r = self.sep.route(batch)
        slots = r.slots
        live = sorted(self.outputs)
        if len(live) <= FEW_CELLS:
            groups = [(s, np.flatnonzero(slots == s)) for s in live]
        else:
            order = np.argsort(slots, kind="stable")
            bounds = np.searchsorted(slots[order], [*live, max(live) + 1])
            groups = [(s, order[bounds[i] : bounds[i + 1]]) for i, s in enumerate(live)]
        for slot, idx in groups:
            if idx.size:
                sent, drops = self._send(slot, batch.select(idx))
                self.forwarded += sent
                for reason, k in drops.items():
                    self._drop(reason, k)
        every = np.flatnonzero(slots == ALL)
        if every.size:
            self._send_all(batch.select(every))
        for rel in r.released:
            self.send_released(rel, batch.linktype)
        for reason, k in r.drops.items():
            self._drop(reason, k)
        self.forwarded_metric_sync()
        self._gauges(r)
        return r

    def send_released(self, rel: Released, linktype: int | None = None) -> None:
        """Send fragments the tracker released to their datagram's cell."""
        sub = FrameBatch.from_frames(
            [f for _t, f in rel.frames], [t for t, _f in rel.frames], linktype or self.linktype
        )
        sent, drops = self._send(rel.slot, sub)
        self.forwarded += sent
        self.forwarded_metric_sync()
        for reason, k in drops.items():
            self._drop(reason, k)

    def _send_all(self, sub: FrameBatch) -> None:
        best = 0
        for slot in self.sep.cells.alive_slots():
            sent, drops = self._send(slot, sub)
            best = max(best, sent)
            for reason, k in drops.items():
                self.metrics.output_errors.labels(self.sep.cells.ids[slot], reason).inc(k)
        self.forwarded += best
        self._drop("output_all_cells_failed", len(sub) - best)

    def forwarded_metric_sync(self) -> None:
        """Bring the forwarded counter up to the running total."""
        c = self.metrics.forwarded_frames
        delta = self.forwarded - getattr(self, "_fwd_reported", 0)
        if delta:
            c.inc(delta)
            self._fwd_reported = self.forwarded

    def _gauges(self, r: Routing) -> None:
        m = self.metrics
        fr = self.sep.frags
        m.fragments_held.set(fr.waiting_frames)
        m.fragments_held_bytes.set(fr.waiting_bytes)
        m.fragment_datagrams.set(len(fr.known))
        m.flows.set(len(self.sep.table))
        m.flow_table_bytes.set(self.sep.table.nbytes)
        if r.new_flows:
            m.flows_new.inc(r.new_flows)
        if r.expired_flows:
            m.flows_ended.labels("expired").inc(r.expired_flows)
        if r.evicted_flows:
            m.flows_ended.labels("evicted_memory_cap").inc(r.evicted_flows)
        counts = [self.out_frames.get(c, 0) for c in self.sep.cells.alive]
        if counts and sum(counts):
            m.imbalance.set(max(counts) / (sum(counts) / len(counts)))

    @property
    def held(self) -> int:
        """Fragments received but still waiting for their first fragment."""
        return self.sep.frags.waiting_frames

    def finish(self) -> None:
        """End of input: expire waiting fragments (counted) and close the outputs."""
        r = self.sep.flush()
        for reason, k in r.drops.items():
            self._drop(reason, k)
        self._gauges(r)
        for out in self.outputs.values():
            out.close()
        self.outputs.clear()

    def conservation(self) -> tuple[int, int]:
        """(received, forwarded + dropped + held): equal in every consistent state."""
        return self.received, self.forwarded + sum(self.dropped.values()) + self.held
