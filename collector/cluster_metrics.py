"""Prometheus metrics of the collector's cluster routing (labelled by collector id)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# Why the router drops records: its ingress (no_nodes, buffer_full), a node's rejection, a send error,
# a full journal.
ROUTER_DROP_REASONS = ("no_nodes", "buffer_full", "rejected", "error", "journal")


class ClusterMetrics:
    """celltap_collector_cluster_* metrics."""

    def __init__(self) -> None:
        self.records_in = Counter(
            "celltap_collector_cluster_records_in_total",
            "records handed to the cluster router",
            ["collector"],
        )
        self.dropped = Counter(
            "celltap_collector_cluster_dropped_records_total",
            "records dropped at the router's ingress (buffer_full, no_nodes) or rejected by a node",
            ["collector", "reason"],
        )
        self.sent = Counter(
            "celltap_collector_cluster_sent_records_total",
            "records sent to nodes",
            ["collector", "node", "role"],
        )
        self.acked = Counter(
            "celltap_collector_cluster_acked_records_total",
            "records acknowledged by nodes",
            ["collector", "node", "role"],
        )
        self.resent = Counter(
            "celltap_collector_cluster_resent_records_total",
            "records re-routed to a new owner after a membership change",
            ["collector", "node"],
        )
        self.replicas_lost = Counter(
            "celltap_collector_cluster_replica_lost_records_total",
            "replica records whose backup node left before acknowledging (primary still holds them)",
            ["collector"],
        )
        self.pending = Gauge(
            "celltap_collector_cluster_pending_records", "records held until acknowledged", ["collector"]
        )
        self.ring_changes = Counter(
            "celltap_collector_cluster_ring_changes_total", "ring membership changes applied", ["collector"]
        )
        self.ring_members = Gauge(
            "celltap_collector_cluster_ring_members", "analysis nodes in the ring", ["collector"]
        )
        self.journal_bytes = Gauge(
            "celltap_collector_cluster_journal_bytes",
            "bytes of routed messages kept on disk until acknowledged (routing.journal)",
            ["collector"],
        )
        self.replayed = Counter(
            "celltap_collector_cluster_replayed_records_total",
            "records an earlier run journaled, re-delivered at start (nodes drop what they hold)",
            ["collector"],
        )
        self.journal_torn = Counter(
            "celltap_collector_cluster_journal_torn_total",
            "journal records found cut short at start (a crash mid-write): never sent, and the exporters'"
            " saved sequence numbers point before them, so their records count as sequence_lost",
            ["collector"],
        )


CLUSTER_METRICS = ClusterMetrics()
