"""Prometheus metrics of the incubator (counted per batch, never per packet).

Conservation, per run: received == forwarded + dropped (all reasons) + fragments still held.
`forwarded` counts frames handed to at least one cell output; copies per cell are `out_*`.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


class IncubatorMetrics:
    """All incubator metrics in one registry (a private one per instance in tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else REGISTRY
        p = "celltap_incubator_"
        self.registry = reg
        self.received_frames = Counter(
            p + "received_frames_total", "Frames captured", ["interface"], registry=reg
        )
        self.received_bytes = Counter(
            p + "received_bytes_total", "Bytes captured", ["interface"], registry=reg
        )
        self.forwarded_frames = Counter(
            p + "forwarded_frames_total", "Frames handed to at least one cell output", registry=reg
        )
        self.out_frames = Counter(p + "out_frames_total", "Frames sent to a cell", ["cell"], registry=reg)
        self.out_bytes = Counter(p + "out_bytes_total", "Bytes sent to a cell", ["cell"], registry=reg)
        self.dropped_frames = Counter(
            p + "dropped_frames_total",
            "Frames not separated to any cell, by reason",
            ["reason"],
            registry=reg,
        )
        self.output_errors = Counter(
            p + "output_errors_total",
            "Copies of all-cell frames a cell output failed",
            ["cell", "reason"],
            registry=reg,
        )
        self.bridged_frames = Counter(
            p + "bridged_frames_total", "Frames forwarded by the inline bridge", ["to"], registry=reg
        )
        self.bridge_dropped_frames = Counter(
            p + "bridge_dropped_frames_total",
            "Frames the inline bridge failed to forward",
            ["to", "reason"],
            registry=reg,
        )
        self.fragments_held = Gauge(p + "fragments_held_frames", "Early fragments waiting", registry=reg)
        self.fragments_held_bytes = Gauge(
            p + "fragments_held_bytes", "Bytes of early fragments waiting", registry=reg
        )
        self.fragment_datagrams = Gauge(
            p + "fragment_datagrams", "Datagrams the fragment tracker knows the cell of", registry=reg
        )
        self.flows = Gauge(p + "flows", "Pinned flows in the flow table", registry=reg)
        self.flow_table_bytes = Gauge(p + "flow_table_bytes", "Memory of the flow table", registry=reg)
        self.flows_new = Counter(p + "flows_new_total", "Flows pinned", registry=reg)
        self.flows_ended = Counter(
            p + "flows_ended_total", "Pins removed, by reason", ["reason"], registry=reg
        )
        self.rehomed_flows = Counter(
            p + "rehomed_flows_total", "Flows re-homed because their cell left", registry=reg
        )
        self.xdp_passed_frames = Counter(
            p + "xdp_passed_frames_total",
            "Frames the XDP program handed to the Python path, by reason",
            ["reason"],
            registry=reg,
        )
        self.cells = Gauge(p + "cells", "Live cells", registry=reg)
        self.imbalance = Gauge(
            p + "imbalance_ratio", "Frames of the busiest cell over the mean of all live cells", registry=reg
        )
