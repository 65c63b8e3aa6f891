"""Prometheus metrics of the cell, read from the core's plain counters at scrape time (zero hot-path cost)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from celltap.decode.reasons import Reason

if TYPE_CHECKING:
    from celltap.cell.runtime import Cell

# The reasons of the cell's drop counters, exported at 0 from the start so that a dashboard shows 0
# (not "No data") for a healthy cell.  Every status but OK drops a frame (decode_<reason>).
PACKET_DROP_REASONS = (
    "flow_table_full", "tcp_no_syn", "tcp_seq_out_of_window", "tcp_rst_out_of_window", "unsupported_l4",
    "fragment_truncated", "payload_truncated", "pcap_socket_bad_stream", "duplicate",
    *(f"decode_{r.label}" for r in Reason if r is not Reason.OK),
)  # fmt: skip
DEFRAG_DROP_REASONS = ("bad_header", "too_big", "bad_length", "timeout", "inconsistent", "memory")
INPUT_DROP_REASONS = (
    "vxlan_short",
    "vxlan_no_vni_flag",
    "vxlan_other_vni",
    "buffer_full",
    "capture_ring_full",
)
# Per interface (every interface the configuration serves), why events did not reach a reader.
INTERFACE_DROP_REASONS = ("no_reader", "reader_slow", "reader_stuck", "reader_closed")
# L7 loopback events not re-injected: the core's (abstractor) and the loopback parser's reasons.
LOOPBACK_DROP_REASONS = (
    "bad_event", "hop_limit", "header_too_long", "bad_header", "bad_address", "bad_port", "bad_hop",
    "bad_l3l4", "bad_len", "len_too_big", "bad_time",
)  # fmt: skip


def with_zeros(items: dict, reasons: tuple[str, ...]) -> dict:
    """The counts, with every known reason present (0 when never counted)."""
    return {**dict.fromkeys(reasons, 0), **items}


class CellCollector(Collector):
    """Exposes `celltap_cell_*` metrics of one running cell."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        """Build every metric family from the current counters."""
        c = self.cell
        a = c.abstractor
        cid = str(c.cell_id)

        def counter(name: str, doc: str, labels: list[str], items: dict) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=["cell", *labels])
            for k, v in items.items():
                m.add_metric([cid, *(k if isinstance(k, tuple) else (k,))], v)
            return m

        yield counter("celltap_cell_packets", "Frames received", [], {(): a.packets})
        yield counter("celltap_cell_bytes", "Bytes received (wire length)", [], {(): a.octets})
        g = GaugeMetricFamily("celltap_cell_flows_live", "Flows in the flow table", labels=["cell"])
        g.add_metric([cid], len(a.table))
        yield g
        yield counter("celltap_cell_flows_created", "Flows created", ["l4"], a.flows_created)
        yield counter("celltap_cell_flows_destroyed", "Flows ended, by reason", ["reason"], a.flows_destroyed)
        yield counter(
            "celltap_cell_classified_flows", "Flows classified, by rule", ["rule"], a.classifier.counts
        )
        yield counter(
            "celltap_cell_dropped_packets",
            "Packets not turned into flow data, by reason",
            ["reason"],
            with_zeros(a.drops, PACKET_DROP_REASONS),
        )
        yield counter(
            "celltap_cell_defrag_dropped_fragments",
            "IP fragments dropped by the defragmenter",
            ["reason"],
            with_zeros(a.defrag.drops, DEFRAG_DROP_REASONS),
        )
        yield counter(
            "celltap_cell_defrag_datagrams", "IP datagrams reassembled", [], {(): a.defrag.completed}
        )
        yield counter(
            "celltap_cell_unrouted_bytes",
            "Flow bytes with no interface (no rule, no default)",
            [],
            {(): a.unrouted_bytes},
        )
        ts = a.tcp_stats
        yield counter(
            "celltap_cell_tcp_retransmitted_bytes",
            "TCP bytes already delivered, seen again",
            [],
            {(): ts.retrans_bytes},
        )
        yield counter(
            "celltap_cell_tcp_overlap_bytes", "TCP bytes trimmed as overlaps", [], {(): ts.overlap_bytes}
        )
        yield counter(
            "celltap_cell_tcp_gap_bytes",
            "TCP sequence bytes never seen (holes skipped)",
            [],
            {(): ts.gap_bytes},
        )
        yield counter(
            "celltap_cell_tcp_resyncs",
            "TCP directions resynchronised by a SYN / SYN-ACK with a new ISN before any payload",
            [],
            {(): ts.resyncs},
        )
        g = GaugeMetricFamily(
            "celltap_cell_reassembly_buffer_bytes",
            "Bytes held out of order, defragmenting, or back for classification",
            labels=["cell", "buffer"],
        )
        g.add_metric([cid, "tcp"], ts.ooo_bytes)
        g.add_metric([cid, "defrag"], a.defrag.held)
        g.add_metric([cid, "classify"], a.held_total)
        yield g
        g = GaugeMetricFamily(
            "celltap_cell_reassembly_memory_bytes",
            "Real memory (allocations) of those buffers: what ooo_memory, defrag_memory, classify_memory cap",
            labels=["cell", "buffer"],
        )
        g.add_metric([cid, "tcp"], ts.ooo_mem)
        g.add_metric([cid, "defrag"], a.defrag.mem)
        g.add_metric([cid, "classify"], a.held_mem)
        yield g
        yield counter(
            "celltap_cell_tcp_buffer_cap_skips",
            "Holes skipped because an out-of-order cap was reached (ooo_limit: flow, ooo_memory: memory)",
            ["cap"],
            ts.cap_skips,
        )
        yield counter(
            "celltap_cell_classified_early_flows",
            "TCP flows classified before both sides spoke (classify_hold: hold, classify_memory: memory)",
            ["cap"],
            a.classified_early,
        )
        yield counter(
            "celltap_cell_interface_events",
            "Events produced per interface",
            ["interface"],
            {s.name: s.total_events for s in a.sinks.values()},
        )
        yield counter(
            "celltap_cell_interface_bytes",
            "Bytes produced per interface",
            ["interface"],
            {s.name: s.total_bytes for s in a.sinks.values()},
        )
        srv = c.server
        interface_zeros = {(name, r): 0 for name in list(srv.readers) for r in INTERFACE_DROP_REASONS}
        yield counter(
            "celltap_cell_interface_dropped_events",
            "Events not delivered to a reader",
            ["interface", "reason"],
            {**interface_zeros, **{k: v[0] for k, v in srv.drops.items()}},
        )
        yield counter(
            "celltap_cell_interface_dropped_bytes",
            "Bytes not delivered to a reader",
            ["interface", "reason"],
            {**interface_zeros, **{k: v[1] for k, v in srv.drops.items()}},
        )
        yield counter(
            "celltap_cell_loopback_dropped_events",
            "L7 loopback events not re-injected (hop limit, bad events)",
            ["reason"],
            with_zeros(a.loopback_drops, LOOPBACK_DROP_REASONS),
        )
        yield counter(
            "celltap_cell_loopback_events",
            "Events re-injected through the L7 loopback",
            [],
            {(): c.loopback_events},
        )
        yield counter(
            "celltap_cell_input_dropped_frames",
            "Frames dropped by an input",
            ["reason"],
            with_zeros(c.input_drops(), INPUT_DROP_REASONS),
        )
        yield counter(
            "celltap_cell_input_frames",
            "Live frames by the source of their time: sender (carried), receive, future (carried, rejected)",
            ["time"],
            {(k,): v for k, v in c.input_stamps().items()},
        )
        if c.exporter is not None:
            e = c.exporter
            yield counter("celltap_cell_ipfix_records", "IPFIX flow records exported", [], {(): e.records})
            yield counter(
                "celltap_cell_ipfix_send_errors",
                "IPFIX messages that could not be sent",
                [],
                {(): e.send_errors},
            )
