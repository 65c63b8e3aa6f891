"""Prometheus metrics shared by the registry backends and the membership helper."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REGISTRY_ERRORS = Counter(
    "celltap_registry_errors",
    "Registry operations that failed, by operation (put, get, lease, keepalive, watch, register, ...)",
    ["op"],
)
# Every operation REGISTRY_ERRORS is counted under: each exists at 0 from this module's import, so
# before a process serves /metrics (dashboards show 0, not "No data"; tests/deploy/
# test_metrics_at_start.py checks the list against the code).
REGISTRY_OPS = (
    "put", "get", "get_prefix", "delete", "lease", "lease_ttl", "keepalive", "revoke", "watch",
    "watch_callback", "register", "member_value", "member_callback", "bad_file",
)  # fmt: skip
REGISTRY_CONNECTED = Gauge(
    "celltap_registry_connected",
    "1 while the last registry operation succeeded, 0 after it failed",
)
REGISTRY_REREGISTRATIONS = Counter(
    "celltap_registry_reregistrations",
    "Times this process registered a member again after losing its lease or the registry",
    ["kind"],
)
REGISTRY_WATCH_RESYNCS = Counter(
    "celltap_registry_watch_resyncs",
    "Times a prefix watch re-read its prefix after the registry came back",
    ["backend"],
)
for _op in REGISTRY_OPS:
    REGISTRY_ERRORS.labels(op=_op)
