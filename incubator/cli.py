"""`celltap incubator`: live balancer from a config file, or offline split of a capture."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from celltap.incubator.dicap import MAX_BUCKETS_LOG2

from celltap.cli_types import PORT, SEED, bounded
from celltap.pcap import CaptureFormatError
from celltap.user_errors import add_metrics_addr_argument, explain

log = logging.getLogger("celltap.incubator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `celltap incubator`."""
    parser.add_argument("--config", help="YAML config (live mirror / inline / dicap mode)")
    parser.add_argument("--read", metavar="PCAP", help="offline split: capture to split ('-' for stdin)")
    parser.add_argument("--cells", type=bounded(int, 1, 4096), help="offline split: number of cells")
    parser.add_argument("--write-dir", metavar="DIR", help="offline split: writes DIR/cell-<i>.pcap")
    parser.add_argument("--seed", type=SEED, default=0, help="flow hash seed (cluster-wide)")
    parser.add_argument(
        "--partition",
        default="xxh64",
        choices=("xxh64", "dicap"),
        help="offline split: cell choice (xxh64 flow hash, or the DiCAP cells' kernel-filter partition)",
    )
    parser.add_argument(
        "--dicap-buckets-log2",
        type=bounded(int, 1, MAX_BUCKETS_LOG2),
        default=14,
        metavar="B",
        help="dicap partition: 2^B buckets (1..14)",
    )
    parser.add_argument(
        "--dicap-ports",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dicap partition: hash ports of unfragmented TCP/UDP/SCTP too (default on)",
    )
    parser.add_argument(
        "--non-ip", default="cell0", choices=("bridge", "cell0", "all"), help="where frames without IP go"
    )
    parser.add_argument("--metrics-port", type=PORT, help="serve Prometheus /metrics on this port")
    add_metrics_addr_argument(parser)
    parser.add_argument("--json", action="store_true", help="offline split: print the summary as JSON")


def main(args: argparse.Namespace) -> int:
    """Run the incubator."""
    if args.read is not None:
        return _offline(args)
    if args.config is None:
        print("celltap incubator: give --config F, or --read PCAP --cells N --write-dir DIR", file=sys.stderr)
        return 2
    from celltap.incubator.config import ConfigError, load_config
    from celltap.incubator.live import run_live

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"celltap incubator: {exc}", file=sys.stderr)
        return 2
    if args.metrics_port is not None:
        cfg.raw["metrics_port"] = args.metrics_port
    if args.metrics_addr is not None:
        cfg.raw["metrics_addr"] = args.metrics_addr
    try:
        return run_live(cfg)
    except ConfigError as exc:
        print(f"celltap incubator: {exc}", file=sys.stderr)
        return 2


def _offline(args: argparse.Namespace) -> int:
    from celltap.incubator.offline import split_capture

    if not args.cells or not args.write_dir:
        print("celltap incubator: --read needs --cells N and --write-dir DIR", file=sys.stderr)
        return 2
    if not 1 <= args.dicap_buckets_log2 <= 14:
        print("celltap incubator: --dicap-buckets-log2 must be 1..14", file=sys.stderr)
        return 2
    if args.metrics_port is not None:
        from celltap.user_errors import serve_metrics

        serve_metrics(args.metrics_port, args.metrics_addr or "")
    try:
        from prometheus_client import REGISTRY

        res = split_capture(
            args.read,
            args.cells,
            args.write_dir,
            args.seed,
            args.non_ip,
            REGISTRY,
            args.partition,
            args.dicap_buckets_log2,
            args.dicap_ports,
        )
    except OSError as exc:
        print(f"celltap incubator: {explain(exc, exc.filename or args.read)}", file=sys.stderr)
        return 2
    except (CaptureFormatError, ValueError) as exc:
        print(f"celltap incubator: {args.read}: {exc}", file=sys.stderr)
        return 2
    summary = {
        "received": res.received,
        "forwarded": res.forwarded,
        "dropped": res.dropped,
        "cells": res.per_cell,
        "files": res.paths,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for cid, n in res.per_cell.items():
            print(f"{cid}: {n} frames")
        drops = ", ".join(f"{k}={v}" for k, v in sorted(res.dropped.items())) or "none"
        total = sum(res.dropped.values())
        print(f"received {res.received}, forwarded {res.forwarded}, dropped {total} ({drops})")
    return 0
