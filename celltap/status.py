"""`celltap status` (cluster view from the registry and the nodes) and `celltap top` (cluster-wide query)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

DEFAULT_REGISTRY = "file:///tmp/celltap-registry"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", default=DEFAULT_REGISTRY, help=f"registry URL (default {DEFAULT_REGISTRY})"
    )
    parser.add_argument("--cluster", default="default", help="cluster name (default 'default')")
    parser.add_argument("--tls-ca", help="CA bundle for gRPC / etcd TLS")
    parser.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="client key (mutual TLS)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each node")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _tls(args: argparse.Namespace):
    from celltap.registry.tls import TLSConfig

    if not (args.tls_ca or args.tls_cert):
        return None
    return TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)


def _members(args: argparse.Namespace, tls: Any) -> dict[str, dict[str, dict[str, Any]]]:
    from celltap.registry import kind_prefix, open_registry

    with open_registry(args.registry, tls=tls) as reg:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for kind in ("nodes", "collectors", "cells", "incubators"):
            prefix = kind_prefix(args.cluster, kind)
            out[kind] = {k[len(prefix) :]: json.loads(v) for k, v in reg.get_prefix(prefix).items()}
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `celltap status`."""
    _common(parser)
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between two samples for rates (0: no rates)"
    )


def main(args: argparse.Namespace) -> int:
    """Print members of every kind and, per node, its counters, rates, drops and state sizes."""
    from celltap.registry.errors import RegistryError
    from collector.cluster_query import node_status

    tls = _tls(args)
    try:
        members = _members(args, tls)
    except RegistryError as exc:
        print(f"celltap status: registry {args.registry}: {exc}", file=sys.stderr)
        return 1

    def sample() -> dict[str, dict[str, Any]]:
        out = {}
        for nid, v in sorted(members["nodes"].items()):
            try:
                out[nid] = node_status(str(v.get("grpc")), tls, args.timeout)
            except Exception as exc:
                out[nid] = {"error": str(exc)}
        return out

    first = sample()
    second, elapsed = first, 0.0
    if args.interval > 0:
        t0 = time.monotonic()
        time.sleep(args.interval)
        second = sample()
        elapsed = time.monotonic() - t0
    for nid, st in second.items():
        before = first.get(nid, {}).get("counts")
        if before and "counts" in st and elapsed:
            st["rates_per_s"] = {
                k: round((st["counts"][k] - before.get(k, 0)) / elapsed, 1)
                for k in ("records_primary", "records_replica", "duplicate_records", "rejected_records")
            }
    report = {"registry": args.registry, "cluster": args.cluster, "members": members, "nodes": second}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"cluster {args.cluster!r} on {args.registry}")
    for kind, ms in members.items():
        print(f"  {kind}: {len(ms)}  {' '.join(sorted(ms)) or '-'}")
    for nid, st in second.items():
        if "error" in st:
            print(f"  node {nid}: unreachable ({st['error']})")
            continue
        c = st["counts"]
        rates = st.get("rates_per_s", {})
        print(
            f"  node {nid} ({members['nodes'][nid].get('grpc')}): in primary {c['records_primary']} "
            f"replica {c['records_replica']} duplicates {c['duplicate_records']} "
            f"rejected {c['rejected_records']}"
            + (f"  rate {rates.get('records_primary', 0)}/s" if rates else "")
        )
        print(f"    members seen: {', '.join(st['members'])}; state: {st['state_sizes']}")
    return 0


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `celltap top`."""
    parser.add_argument("app", help="app name as configured on the nodes (e.g. top_talkers, volume, app_mix)")
    parser.add_argument("--by", default="bytes", help="bytes | packets (| records, flows for some apps)")
    parser.add_argument("--n", type=int, default=10, help="rows to show (0: all)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="extra app parameter")
    _common(parser)


def top_main(args: argparse.Namespace) -> int:
    """Ask every node for its share of APP, merge, print the answer."""
    from celltap.registry.errors import RegistryError
    from collector.cluster_query import scatter_gather

    tls = _tls(args)
    try:
        nodes = _members(args, tls)["nodes"]
    except RegistryError as exc:
        print(f"celltap top: registry {args.registry}: {exc}", file=sys.stderr)
        return 1
    if not nodes:
        print(f"celltap top: no analysis nodes registered in cluster {args.cluster!r}", file=sys.stderr)
        return 1
    params: dict[str, Any] = {"by": args.by, "n": args.n}
    for kv in args.param:
        k, sep, v = kv.partition("=")
        if not sep:
            print(f"celltap top: --param {kv!r}: expected K=V", file=sys.stderr)
            return 2
        params[k] = v
    try:
        answer = scatter_gather(nodes, args.app, params, tls, args.timeout)
    except ValueError as exc:
        print(f"celltap top: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=1))
    else:
        print(
            f"{args.app} by {args.by} over {len(answer.get('nodes', []))} node(s)"
            + ("" if answer.get("complete") else f"  INCOMPLETE: {answer.get('errors')}")
        )
        rows = answer.get("top") or answer.get("scanners") or answer.get("flooded") or []
        for row in rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0 if answer.get("complete") else 1
