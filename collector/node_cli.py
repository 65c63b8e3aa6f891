"""`celltap node --config F`: run an analysis node until SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from celltap.registry.errors import RegistryError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the node subcommand."""
    parser.add_argument(
        "--config", required=True, help="node YAML (id, listen, http, registry, cluster, apps, tls)"
    )


def main(args: argparse.Namespace) -> int:
    """Run one analysis node."""
    from celltap.collector.node import AnalysisNode
    from celltap.collector.node_config import NodeConfigError, load_node_config

    try:
        cfg = load_node_config(args.config)
    except NodeConfigError as exc:
        print(f"celltap node: {exc}", file=sys.stderr)
        return 2
    node = AnalysisNode(cfg)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        node.start()
    except (OSError, RegistryError) as exc:
        print(f"celltap node: cannot start: {exc}", file=sys.stderr)
        return 1
    print(
        f"celltap node {cfg.id}: gRPC {cfg.listen}, HTTP {cfg.http}, cluster {cfg.cluster!r} "
        f"on {cfg.registry}",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    node.stop()
    return 0
