"""Prometheus metrics of the collector, fed from IngestStats deltas once per interval."""

from __future__ import annotations

from celltap.collector.stats import MESSAGE_DROP_REASONS, SET_DROP_REASONS, IngestStats
from prometheus_client import CollectorRegistry, Counter, Gauge


class CollectorMetrics:
    """celltap_collector_* counters; `apply` adds one drained IngestStats delta."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        kw = {"registry": registry} if registry is not None else {}
        self.messages = Counter(
            "celltap_collector_messages_total", "IPFIX/NetFlow messages decoded", ["exporter"], **kw
        )
        self.records = Counter("celltap_collector_records_total", "flow records decoded", ["exporter"], **kw)
        self.bytes = Counter(
            "celltap_collector_received_bytes_total", "bytes of export messages received", ["exporter"], **kw
        )
        self.template_events = Counter(
            "celltap_collector_template_events_total",
            "template events: added, updated, refreshed, withdrawn, expired, restored, rejected",
            ["exporter", "event"],
            **kw,
        )
        self.sequence_gaps = Counter(
            "celltap_collector_sequence_gaps_total", "sequence number gaps seen", ["exporter", "domain"], **kw
        )
        self.sequence_lost = Counter(
            "celltap_collector_sequence_lost_total",
            "records (IPFIX, v5) or packets (v9) missing according to sequence numbers",
            ["exporter", "domain", "unit"],
            **kw,
        )
        self.sequence_reordered = Counter(
            "celltap_collector_sequence_reordered_total",
            "messages older than the expected sequence number",
            ["exporter", "domain"],
            **kw,
        )
        self.dropped_messages = Counter(
            "celltap_collector_dropped_messages_total", "messages (datagrams) dropped", ["reason"], **kw
        )
        self.dropped_sets = Counter(
            "celltap_collector_dropped_sets_total", "sets dropped inside messages", ["reason"], **kw
        )
        self.dropped_bytes = Counter(
            "celltap_collector_dropped_bytes_total", "bytes dropped", ["reason"], **kw
        )
        self.workers = Gauge("celltap_collector_workers", "UDP worker processes running", **kw)
        self.worker_restarts = Counter(
            "celltap_collector_worker_restarts_total", "UDP worker processes restarted after they died", **kw
        )
        # Every known drop reason exists from the start, at 0.
        for reason in MESSAGE_DROP_REASONS:
            self.dropped_messages.labels(reason)
        for reason in SET_DROP_REASONS:
            self.dropped_sets.labels(reason)
        for reason in dict.fromkeys(MESSAGE_DROP_REASONS + SET_DROP_REASONS):
            self.dropped_bytes.labels(reason)

    def apply(self, deltas: dict[str, dict]) -> None:
        """Add a drained IngestStats delta to the Prometheus counters."""
        for name in IngestStats.COUNTERS:
            metric = getattr(self, name)
            for key, value in deltas.get(name, {}).items():
                if not value:
                    continue
                labels = key if isinstance(key, tuple) else (key,)
                metric.labels(*[str(x) for x in labels]).inc(value)
