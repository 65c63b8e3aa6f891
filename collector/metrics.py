"""Prometheus metrics of the collector, fed from IngestStats deltas once per interval."""

from __future__ import annotations

from celltap.collector.stats import (
    MESSAGE_DROP_REASONS,
    RECORD_DROP_REASONS,
    SET_DROP_REASONS,
    STORE_DROP_REASONS,
    IngestStats,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

# Counters whose first label is the exporter address.  Addresses can be spoofed, so the number of
# distinct exporter label values is capped: beyond the cap, new addresses are reported as "other".
EXPORTER_LABELLED = frozenset(
    {
        "messages",
        "records",
        "bytes",
        "template_events",
        "sequence_gaps",
        "sequence_lost",
        "sequence_reordered",
        "domain_events",
    }
)
OTHER_EXPORTERS = "other"


class CollectorMetrics:
    """celltap_collector_* counters; `apply` adds one drained IngestStats delta."""

    def __init__(self, registry: CollectorRegistry | None = None, max_exporter_labels: int = 4096) -> None:
        kw = {"registry": registry} if registry is not None else {}
        self.max_exporter_labels = max_exporter_labels
        self._exporter_labels: set[str] = set()
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
        self.dropped_records = Counter(
            "celltap_collector_dropped_records_total",
            "decoded records lost after decoding (sink_error: the record consumer failed)",
            ["reason"],
            **kw,
        )
        self.domain_events = Counter(
            "celltap_collector_domain_events_total",
            "observation domain state events: expired (idle), restored (sequence state of a previous run)",
            ["exporter", "event"],
            **kw,
        )
        self.store_dropped = Counter(
            "celltap_collector_template_store_dropped_total",
            "template writes to the store (registry, snapshot) given up: queue_full, stop_timeout; the "
            "templates are still decoded, only their sharing is lost",
            ["reason"],
            **kw,
        )
        self.workers = Gauge("celltap_collector_workers", "UDP worker processes running", **kw)
        self.worker_restarts = Counter(
            "celltap_collector_worker_restarts_total",
            "UDP workers (processes or threads) restarted after they died",
            **kw,
        )
        # Every known drop reason exists from the start, at 0.
        for reason in MESSAGE_DROP_REASONS:
            self.dropped_messages.labels(reason)
        for reason in SET_DROP_REASONS:
            self.dropped_sets.labels(reason)
        for reason in dict.fromkeys(MESSAGE_DROP_REASONS + SET_DROP_REASONS):
            self.dropped_bytes.labels(reason)
        for reason in RECORD_DROP_REASONS:
            self.dropped_records.labels(reason)
        for reason in STORE_DROP_REASONS:
            self.store_dropped.labels(reason)

    def apply(self, deltas: dict[str, dict]) -> None:
        """Add a drained IngestStats delta to the Prometheus counters."""
        for name in IngestStats.COUNTERS:
            metric = getattr(self, name)
            capped = name in EXPORTER_LABELLED
            for key, value in deltas.get(name, {}).items():
                if not value:
                    continue
                labels = [str(x) for x in (key if isinstance(key, tuple) else (key,))]
                if capped:
                    labels[0] = self._exporter_label(labels[0])
                metric.labels(*labels).inc(value)

    def _exporter_label(self, exporter: str) -> str:
        seen = self._exporter_labels
        if exporter in seen:
            return exporter
        if len(seen) >= self.max_exporter_labels:
            return OTHER_EXPORTERS
        seen.add(exporter)
        return exporter
