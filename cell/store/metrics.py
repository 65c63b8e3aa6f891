"""Prometheus metrics of a cell's packet store (`celltap_cell_store_*`), read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from celltap.cell.runtime import Cell


class StoreCollector(Collector):
    """Bytes and frames written, files, retention removals, index size, drops by reason, queries."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Every store metric family from the writer's current counters."""
        s = self.cell.store
        if s is None:
            return
        cid = str(self.cell.cell_id)

        def counter(name: str, doc: str, labels: list[str], items: dict) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=["cell", *labels])
            for k, v in items.items():
                m.add_metric([cid, *(k if isinstance(k, tuple) else (k,))], v)
            return m

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            m = GaugeMetricFamily(name, doc, labels=["cell"])
            m.add_metric([cid], value)
            return m

        yield counter(
            "celltap_cell_store_written_bytes", "Bytes of pcap records written", [], {(): s.written_bytes}
        )
        yield counter(
            "celltap_cell_store_written_frames", "Frames written to the store", [], {(): s.written_frames}
        )
        yield counter("celltap_cell_store_files_created", "Capture files opened", [], {(): s.files_created})
        yield gauge("celltap_cell_store_files", "Capture files on disk (the open one included)", s.files())
        yield gauge("celltap_cell_store_disk_bytes", "Capture and index bytes on disk", s.disk_bytes())
        yield gauge("celltap_cell_store_index_bytes", "Index bytes on disk", s.index_bytes())
        yield gauge("celltap_cell_store_queue_bytes", "Bytes waiting for the writer thread", s.queued_bytes)
        yield counter(
            "celltap_cell_store_index_written_bytes", "Index bytes written", [], {(): s.index_bytes_written}
        )
        yield counter("celltap_cell_store_index_errors", "Indexes not written", [], {(): s.index_errors})
        yield counter(
            "celltap_cell_store_removed_files", "Files removed by retention, by reason", ["reason"],
            {r: s.removed_files.get(r, 0) for r in ("size", "age", "disk_full")},
        )  # fmt: skip
        yield counter(
            "celltap_cell_store_removed_bytes", "Bytes removed by retention, by reason", ["reason"],
            {r: s.removed_bytes.get(r, 0) for r in ("size", "age", "disk_full")},
        )  # fmt: skip
        yield counter(
            "celltap_cell_store_dropped_frames",
            "Frames not stored, by reason",
            ["reason"],
            dict(s.dropped_frames),
        )
        yield counter(
            "celltap_cell_store_dropped_bytes",
            "Record bytes not stored, by reason",
            ["reason"],
            dict(s.dropped_bytes),
        )
        server = self.cell.store_server
        if server is not None:
            yield counter(
                "celltap_cell_store_queries", "Retrieval queries, by result", ["result"], dict(server.queries)
            )
