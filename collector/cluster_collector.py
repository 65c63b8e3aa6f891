"""A collector that routes to analysis nodes: the collector service with the cluster router as its hook.

`python -m collector.cluster_collector --config F` runs it; `cluster_hook_factory` is what
`celltap collector` uses when its config names a registry (each UDP worker process gets its own
router, registered as collector `<id>-w<index>`, since sequence numbers are per router).
The YAML is the collector's, plus two optional sections:

    routing: {batch_records: 8192, max_pending_records: 2000000, window: 8, replication: true, seed: 0}
    tls: {ca: ..., cert: ..., key: ...}      # gRPC to nodes and etcd
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from celltap.ipfix.records import RecordBatch
from celltap.registry.tls import TLSConfig
from collector.cluster import ClusterRouter, RouterConfig

log = logging.getLogger("celltap.collector.cluster")

ROUTING_KEYS = {"batch_records", "max_pending_records", "window", "replication", "seed", "flush_interval"}


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
        try:
            setattr(cfg, key, type(getattr(cfg, key))(value))
        except (TypeError, ValueError):
            raise ValueError(f"routing.{key}: bad value {value!r}") from None
    return cfg


def start_router(
    registry_url: str, cluster: str, config: RouterConfig
) -> tuple[ClusterRouter, Callable[[], None]]:
    """A router fed by the registry's node membership, registered as a collector; returns (router, close)."""
    from celltap.registry import Membership, open_registry

    router = ClusterRouter(config)
    membership = Membership(open_registry(registry_url, tls=config.tls), cluster)
    sync_lock = threading.Lock()
    holder: list[Any] = []

    def sync(_changed: object = None) -> None:
        # Apply the current view under one lock, never a snapshot older than one applied already.
        with sync_lock:
            if holder:
                router.set_members(holder[0].members())

    holder.append(membership.watch("nodes", sync))
    holder[0].wait_synced(timeout=5)
    sync()
    membership.register("collectors", config.collector_id, {"pid": os.getpid(), "host": socket.gethostname()})

    def close() -> None:
        router.close()
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
) -> Callable[[int], RoutingSink]:
    """The collector's HookFactory: each worker gets its own ClusterRouter (started inside the worker)."""
    router_config(collector_id, routing, tls)  # validate now, in the parent

    def factory(index: int) -> RoutingSink:
        cid = worker_collector_id(collector_id, index)
        sink = RoutingSink(*start_router(registry_url, cluster, router_config(cid, routing, tls)))
        if started is not None:
            started.append(sink)
        return sink

    return factory


def main(argv: list[str] | None = None) -> int:
    """Run a routing collector until SIGTERM; print the router stats as JSON at exit."""
    import json

    from collector.config import ConfigError, load_config
    from collector.service import CollectorService

    p = argparse.ArgumentParser(prog="collector.cluster_collector")
    p.add_argument("--config", required=True)
    p.add_argument("-v", "--verbose", action="count", default=0)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        cfg = load_config(args.config)
        if not cfg.registry:
            raise ConfigError(f"{args.config}: registry: required to route to analysis nodes")
        cid = cfg.collector_id or f"{socket.gethostname()}-{os.getpid()}"
        started: list[RoutingSink] = []
        tls = TLSConfig.from_mapping(cfg.tls or None)
        hook = cluster_hook_factory(cfg.registry, cfg.cluster, cid, cfg.routing, tls, started)
    except (OSError, ValueError) as exc:
        print(f"celltap collector: {exc}", file=sys.stderr)
        return 2
    # Worker threads, not processes, so the routers (and their stats) live in this process.
    service = CollectorService(cfg, hook, processes=False)
    signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
    service.start()
    print(
        f"celltap collector {cid}: routing to cluster {cfg.cluster!r} via {cfg.registry}",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not service.stopped():
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    service.stop()
    for sink in started:
        sink.close()
        print(json.dumps(sink.router.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
