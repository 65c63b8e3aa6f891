"""`celltap status` (cluster view from the registry and the nodes) and `celltap top` (cluster-wide query)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from celltap.cli_types import bounded

DEFAULT_REGISTRY = "file:///tmp/celltap-registry"

# The counter that says how much work each kind of component takes in, for its rate.
INPUT_COUNTER = {
    "incubators": ("celltap_incubator_received_frames_total", "frames"),
    "cells": ("celltap_cell_packets_total", "packets"),
    "collectors": ("celltap_collector_records_total", "records"),
    "nodes": ("celltap_node_records_received_total", "records"),
}
DROP_WORDS = ("dropped", "_lost_", "errors", "drops")


def metrics_url(member: dict[str, Any]) -> str | None:
    """Where a registered member serves /metrics (its 'metrics' value, or a node's 'http' address)."""
    if member.get("metrics"):
        return str(member["metrics"])
    if member.get("http"):
        return f"http://{member['http']}/metrics"
    return None


def _drop_samples(samples: Any) -> dict[str, float]:
    """Non-zero drop / loss / error counters of one scrape, as 'name{labels}' -> value."""
    out = {}
    for (name, labels), value in samples.values.items():
        if value and name.endswith("_total") and any(w in name for w in DROP_WORDS):
            label_text = ",".join(f"{k}={v}" for k, v in labels)
            out[f"{name}{{{label_text}}}" if labels else name] = value
    return out


def component_metrics(
    members: dict[str, dict[str, dict[str, Any]]], interval: float, tls: Any = None
) -> dict[str, Any]:
    """Per member with a metrics endpoint: input rate over `interval` seconds and its drop counters.

    https:// endpoints (TLS analysis nodes) are verified against `tls.ca` (system roots without one).
    """
    import ssl

    from celltap.launcher.scrape import scrape

    context = ssl.create_default_context(cafile=tls.ca if tls is not None else None)
    if tls is not None and tls.mutual:
        context.load_cert_chain(tls.cert, tls.key)

    urls = {(kind, mid): metrics_url(v) for kind, ms in members.items() for mid, v in ms.items()}

    def sample() -> dict[tuple[str, str], Any]:
        got: dict[tuple[str, str], Any] = {}
        for key, url in urls.items():
            if url:
                try:
                    got[key] = scrape(url, timeout=5, context=context if url.startswith("https:") else None)
                except OSError as exc:
                    got[key] = exc
        return got

    first = sample()
    t0 = time.monotonic()
    if interval > 0:
        time.sleep(interval)
    second = sample() if interval > 0 else first
    elapsed = time.monotonic() - t0
    out: dict[str, Any] = {}
    for (kind, mid), url in urls.items():
        entry: dict[str, Any] = {"metrics": url}
        now, before = second.get((kind, mid)), first.get((kind, mid))
        if url is None:
            entry["error"] = "registers no metrics endpoint"
        elif isinstance(now, OSError):
            entry["error"] = str(now)
        else:
            counter, unit = INPUT_COUNTER.get(kind, ("", ""))
            if counter:
                total = now.total(counter)
                entry["input_total"] = total
                entry["unit"] = unit
                if interval > 0 and not isinstance(before, OSError) and before is not None:
                    entry["rate_per_s"] = round((total - before.total(counter)) / elapsed, 1)
            entry["drops"] = _drop_samples(now)
        out[f"{kind}/{mid}"] = entry
    return out


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry", default=DEFAULT_REGISTRY, help=f"registry URL (default {DEFAULT_REGISTRY})"
    )
    parser.add_argument("--cluster", default="default", help="cluster name (default 'default')")
    parser.add_argument("--tls-ca", help="CA bundle for gRPC / etcd TLS")
    parser.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="client key (mutual TLS)")
    parser.add_argument(
        "--timeout", type=bounded(float, 0.1, 3600), default=10.0, help="seconds to wait for each node"
    )
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
            for mid, value in out[kind].items():
                # A member lives as long as its lease: say how long that is from now.
                value["lease_seconds_left"] = reg.lease_ttl(prefix + mid)
        return out


def _secs(left: float | None) -> str:
    return "none" if left is None else f"{left:.0f}s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `celltap status`."""
    _common(parser)
    parser.add_argument(
        "--interval",
        type=bounded(float, 0, 3600),
        default=1.0,
        help="seconds between two samples for rates (0: no rates)",
    )


def main(args: argparse.Namespace) -> int:
    """Print members of every kind; per node its counters and state; per component its rate and drops."""
    from celltap.collector.cluster_query import node_status
    from celltap.registry.errors import RegistryError

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
    components = component_metrics(members, args.interval, tls)
    report = {
        "registry": args.registry, "cluster": args.cluster, "members": members, "nodes": second,
        "components": components,
    }  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"cluster {args.cluster!r} on {args.registry}")
    for kind, ms in members.items():
        listed = " ".join(f"{m}(lease {_secs(v.get('lease_seconds_left'))})" for m, v in sorted(ms.items()))
        print(f"  {kind}: {len(ms)}  {listed or '-'}")
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
    for name, entry in components.items():
        if "error" in entry:
            print(f"  {name}: metrics unavailable ({entry['error']})")
            continue
        rate = f"{entry['rate_per_s']:,.1f} {entry['unit']}/s" if "rate_per_s" in entry else "-"
        total = f"{entry['input_total']:,.0f} {entry['unit']}" if "input_total" in entry else ""
        drops = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(entry["drops"].items())) or "none"
        print(f"  {name}: in {total} ({rate}); drops: {drops}")
    return 0


def add_top_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `celltap top`."""
    parser.add_argument("app", help="app name as configured on the nodes (e.g. top_talkers, volume, app_mix)")
    parser.add_argument(
        "--by",
        default="bytes",
        help="bytes | packets (both directions of each flow) | orig_bytes, orig_packets (sent by the flows' "
        "originators) | resp_bytes, resp_packets (sent back by the responders) | records, flows (some apps)",
    )
    parser.add_argument("--n", type=bounded(int, 0, 10**6), default=10, help="rows to show (0: all)")
    parser.add_argument("--param", action="append", default=[], metavar="K=V", help="extra app parameter")
    _common(parser)


def _direction(by: str) -> str:
    """What direction of the flows a figure counts, for the answer's header line."""
    if by in ("bytes", "packets"):
        return " (both directions)"
    if by.startswith("orig_"):
        return " (sent by the flows' originators only)"
    if by.startswith("resp_"):
        return " (sent back by the flows' responders only)"
    return ""


def top_main(args: argparse.Namespace) -> int:
    """Ask every node for its share of APP, merge, print the answer."""
    from celltap.collector.cluster_query import settled_scatter_gather
    from celltap.registry.errors import RegistryError

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
        latest = {"nodes": nodes, "rounds": 0}  # the first round uses the membership read above

        def members() -> dict:
            if latest["rounds"]:
                try:
                    latest["nodes"] = _members(args, tls)["nodes"]
                except RegistryError:
                    pass  # asked again over the last membership read
            latest["rounds"] += 1
            return latest["nodes"]

        answer = settled_scatter_gather(members, args.app, params, tls=tls, timeout=args.timeout)
    except ValueError as exc:
        print(f"celltap top: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer, indent=1))
    else:
        print(
            f"{args.app} by {args.by}{_direction(args.by)} over {len(answer.get('nodes', []))} node(s)"
            + ("" if answer.get("complete") else f"  INCOMPLETE: {answer.get('errors')}")
        )
        rows = answer.get("top") or answer.get("scanners") or answer.get("flooded") or []
        for row in rows:
            print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0 if answer.get("complete") else 1
