"""The collector's routing hook: each worker's records go through a ClusterRouter to the analysis nodes.

`celltap collector --config F` uses `cluster_hook_factory` when its config names a registry (and
`route_to_nodes` is not false); each UDP worker gets its own router, registered as collector
`<id>-w<index>`, since sequence numbers are per router.  Two optional sections of the YAML:

    routing: {batch_records: 8192, max_pending_records: 2000000, window: 8, replication: true, seed: 0,
              journal: /var/lib/celltap/journal}   # journal: re-deliver after a crash (collector/journal.py)
    tls: {ca: ..., cert: ..., key: ...}      # gRPC to nodes and etcd
    registry_tls: {}                          # etcd's own TLS when it differs ({}: plain etcd://)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from celltap.collector.cluster import ClusterRouter, RouterConfig

from celltap.ipfix.records import RecordBatch
from celltap.registry.tls import TLSConfig

log = logging.getLogger("celltap.collector.cluster")

ROUTING_KEYS = {
    "batch_records", "max_pending_records", "max_pending_bytes", "window", "replication", "seed",
    "flush_interval", "journal", "journal_fsync", "close_timeout",
}  # fmt: skip


def router_config(
    collector_id: str, section: Mapping[str, Any] | None, tls: TLSConfig | None
) -> RouterConfig:
    """RouterConfig from a `routing:` section (ValueError naming a bad key)."""
    section = dict(section or {})
    unknown = set(section) - ROUTING_KEYS
    if unknown:
        raise ValueError(
            f"routing: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(ROUTING_KEYS))})"
        )
    cfg = RouterConfig(collector_id=collector_id, tls=tls)
    for key, value in section.items():
        if key == "journal":
            if not isinstance(value, str) or not value:
                raise ValueError(f"routing.journal: must be a directory path, got {value!r}")
            cfg.journal = value
            continue
        try:
            setattr(cfg, key, type(getattr(cfg, key))(value))
        except (TypeError, ValueError):
            raise ValueError(f"routing.{key}: bad value {value!r}") from None
    return cfg


_SAME = object()  # registry_tls not given: etcd uses the gRPC TLS settings


def start_router(
    registry_url: str,
    cluster: str,
    config: RouterConfig,
    extra: Mapping[str, Any] | None = None,
    registry_tls: Any = _SAME,
) -> tuple[ClusterRouter, Callable[[], None]]:
    """A router fed by the registry's node membership, registered as a collector; returns (router, close)."""
    from celltap.registry import Membership, open_registry

    router = ClusterRouter(config)
    etcd_tls = config.tls if registry_tls is _SAME else registry_tls
    membership = Membership(open_registry(registry_url, tls=etcd_tls), cluster)
    sync_lock = threading.Lock()
    holder: list[Any] = []

    def sync(_changed: object = None) -> None:
        # Apply the current view under one lock, never a snapshot older than one applied already.
        with sync_lock:
            if holder:
                router.set_members(holder[0].members())

    holder.append(membership.watch("nodes", sync))
    synced = holder[0].wait_synced(timeout=5)
    sync()

    def replay_when_synced() -> None:
        # An earlier run's unacknowledged messages go out only over the complete view: the initial
        # listing arrives key by key, and a message whose primary is merely not listed *yet* would be
        # re-routed to its backups while the primary, alive, holds it too.
        holder[0].wait_synced()
        sync()
        router.replay_journal()

    if synced:
        router.replay_journal()
    elif router.has_replay():
        threading.Thread(target=replay_when_synced, name="journal-replay", daemon=True).start()
    value = {"pid": os.getpid(), "host": socket.gethostname(), **(extra or {})}
    membership.register("collectors", config.collector_id, value)

    def close() -> None:
        router.close(config.close_timeout)
        membership.close()

    return router, close


class RoutingSink:
    """What a collector worker feeds: `sink(batches)`; `close()` at worker exit delivers what is
    pending (bounded wait), then leaves the registry."""

    def __init__(self, router: ClusterRouter, close: Callable[[], None]) -> None:
        self.router = router
        self._close = close

    def __call__(self, batches: list[RecordBatch]) -> None:
        """Route a list of decoded batches."""
        self.router(batches)

    def close(self) -> None:
        """Flush, wait for acknowledgements, unregister."""
        self._close()

    def route_with_sequence(self, batches: list[RecordBatch], items: list) -> None:
        """Route batches; save their exporters' sequence state once they are journaled (ClusterRouter)."""
        self.router.route_with_sequence(batches, items)

    def bind_sequences(self, save: Callable[[list], None], restore: Callable[[dict], None]) -> None:
        """Let the router save the worker's sequence state, and restore what its journal recorded."""
        self.router.bind_sequences(save, restore)


def worker_collector_id(collector_id: str, index: int) -> str:
    """Id of one worker's router: the collector id for worker 0, '-tcp' for TCP, '-w<i>' otherwise."""
    if index == 0:
        return collector_id
    return f"{collector_id}-tcp" if index < 0 else f"{collector_id}-w{index}"


def cluster_hook_factory(
    registry_url: str,
    cluster: str,
    collector_id: str,
    routing: Mapping[str, Any] | None = None,
    tls: TLSConfig | None = None,
    started: list[RoutingSink] | None = None,
    extra: Mapping[str, Any] | None = None,
    registry_tls: Any = _SAME,
) -> Callable[[int], RoutingSink]:
    """The collector's HookFactory: each worker gets its own ClusterRouter (started inside the worker)."""
    router_config(collector_id, routing, tls)  # validate now, in the parent

    def factory(index: int) -> RoutingSink:
        cid = worker_collector_id(collector_id, index)
        # Only worker 0 names the collector's metrics endpoint, so `celltap status` counts it once.
        value = extra if index == 0 else None
        config = router_config(cid, routing, tls)
        sink = RoutingSink(*start_router(registry_url, cluster, config, value, registry_tls))
        if started is not None:
            started.append(sink)
        return sink

    return factory
