"""Prometheus metrics of analysis nodes (labelled by node, so several nodes can share a process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# Why a node does not apply records it received.
NODE_REJECT_REASONS = ("malformed", "count_overclaim", "app_error")


class NodeMetrics:
    """celltap_node_* metrics."""

    def __init__(self) -> None:
        self.records_in = Counter(
            "celltap_node_records_received_total",
            "records applied, as primary or as replica",
            ["node", "role"],
        )
        self.duplicates = Counter(
            "celltap_node_duplicate_records_total", "records received again and not re-applied", ["node"]
        )
        self.rejected = Counter(
            "celltap_node_rejected_records_total", "records not applied, by reason", ["node", "reason"]
        )
        self.fenced = Counter(
            "celltap_node_fenced_records_total",
            "records addressed to an earlier incarnation of this node, refused unapplied (re-routed)",
            ["node"],
        )
        self.membership_changes = Counter(
            "celltap_node_membership_changes_total", "node membership changes seen", ["node"]
        )
        self.promotions = Counter(
            "celltap_node_shadow_promotions_total",
            "shadow states absorbed after their primary left",
            ["node"],
        )
        self.state_entries = Gauge(
            "celltap_node_app_state_entries",
            "entries held by an app (live) or by all shadows",
            ["node", "app", "state"],
        )
        self.queries = Counter("celltap_node_queries_total", "queries answered", ["node", "api"])


NODE_METRICS = NodeMetrics()
