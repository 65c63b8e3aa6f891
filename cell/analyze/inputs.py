"""Frames for `celltap analyze`: several capture files merged in time order, or a live interface.

Merging keeps batches: of the files' current batches, the one that starts earliest gives up its
frames up to the next file's first timestamp (one searchsorted when its timestamps are sorted, as a
capture's nearly always are; otherwise up to the first frame past that time), so a capture that does
not overlap the others passes whole, batch by batch, and overlapping ones interleave in time order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np

from celltap.pcap import open_capture
from celltap.pcap.batch import FrameBatch


def _split(batch: FrameBatch, limit: int) -> tuple[FrameBatch | None, FrameBatch | None]:
    """(frames before any frame later than `limit`, the rest)."""
    ts = batch.ts_ns
    later = np.flatnonzero(ts > limit)
    if later.size == 0:
        return batch, None
    cut = int(later[0])
    if cut == 0:
        return None, batch
    n = len(batch)
    return batch.select(np.arange(cut)), batch.select(np.arange(cut, n))


def merged_batches(paths: list[str]) -> Iterator[FrameBatch]:
    """Batches of every capture in `paths`, in timestamp order across files."""
    if len(paths) == 1:
        with open_capture(paths[0]) as cap:
            yield from (b for b in cap if len(b))
        return
    readers = [open_capture(p) for p in paths]
    try:
        iters = [iter(r) for r in readers]
        heap: list[tuple[int, int, FrameBatch]] = []

        def refill(i: int) -> None:
            for b in iters[i]:
                if len(b):
                    heapq.heappush(heap, (int(b.ts_ns[0]), i, b))
                    return

        for i in range(len(iters)):
            refill(i)
        while heap:
            _, i, batch = heapq.heappop(heap)
            if not heap:
                yield batch
                refill(i)
                continue
            head, rest = _split(batch, heap[0][0])
            if head is None:
                # its first frame is already later than another file's: take that one first
                head, rest = batch.select(np.arange(1)), batch.select(np.arange(1, len(batch)))
                if not len(rest):
                    rest = None
            yield head
            if rest is not None:
                heapq.heappush(heap, (int(rest.ts_ns[0]), i, rest))
            else:
                refill(i)
    finally:
        for r in readers:
            r.close()
