"""`celltap pcap`: the frames of one flow from a cell's packet store, or from every cell of a cluster.

    celltap pcap --store DIR        (--uid UID | --flow 'tcp A:P B:P') [--from T] [--to T] -w OUT
    celltap pcap --registry URL [--cluster C] --token-file F  (--uid ... | --flow ...) ... -w OUT

With --registry the query goes to the store endpoint of every registered cell (the `store` URL in
its registry value), in parallel; the answers are merged by capture time. A flow lives on the cell
the incubator pinned it to, and a uid names no key to hash, so every cell is asked. T is epoch
seconds (`1700000000.5`) or an ISO 8601 time (UTC unless it says otherwise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import ssl
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

from celltap.cell.store.query import NS_MAX, Query, QueryError, merge, parse_flow, query_dir
from celltap.cell.store.serve import pcap_bytes, read_token

from celltap.cli_types import bounded
from celltap.flowid import flow_id_from_uid
from celltap.pcap.batch import FrameBatch
from celltap.pcap.reader import CaptureFormatError, read_all
from celltap.user_errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `celltap pcap`."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--uid", help="connection uid (conn.log's uid, the IPFIX celltapUid)")
    what.add_argument(
        "--flow",
        metavar="'PROTO A:P B:P'",
        help="5-tuple, either direction, e.g. 'tcp 10.0.0.1:80 10.0.0.2:5000'",
    )
    parser.add_argument(
        "--from", dest="t_from", metavar="T", help="first capture time (epoch seconds or ISO 8601)"
    )
    parser.add_argument("--to", dest="t_to", metavar="T", help="last capture time (inclusive)")
    parser.add_argument("-w", dest="out", required=True, metavar="OUT", help="output pcap ('-' for stdout)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", metavar="DIR", help="one cell's store directory")
    where.add_argument(
        "--registry", metavar="URL", help="ask every cell of the cluster (etcd://... or file://...)"
    )
    parser.add_argument("--cluster", default="default", help="cluster name (with --registry)")
    parser.add_argument("--token-file", metavar="F", help="bearer token of the cells' store endpoints")
    parser.add_argument("--tls-ca", metavar="F", help="CA that signed the cells' store certificates (https)")
    parser.add_argument("--tls-cert", metavar="F", help="client certificate (stores that require one)")
    parser.add_argument("--tls-key", metavar="F", help="key of --tls-cert")
    parser.add_argument(
        "--timeout", type=bounded(float, 0.1, 3600), default=60.0, help="seconds to wait for each cell"
    )


def parse_time(text: str | None, default: int) -> int:
    """Epoch seconds or ISO 8601 -> nanoseconds (default when None)."""
    if text is None:
        return default
    try:
        return int((decimal.Decimal(text) * 1_000_000_000).to_integral_value())  # exact: no float rounding
    except (decimal.InvalidOperation, ValueError, OverflowError):
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--from/--to: expected epoch seconds or ISO 8601, got {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return round(t.timestamp() * 1e6) * 1000


def main(args: argparse.Namespace) -> int:
    """Run the query; returns the exit code (0 also when no frame matched: the pcap is then empty)."""
    q = Query(uid=args.uid, t_from=parse_time(args.t_from, 0), t_to=parse_time(args.t_to, NS_MAX))
    try:
        if args.flow:
            q.key = parse_flow(args.flow)
        else:
            try:
                flow_id_from_uid(args.uid)
            except ValueError as exc:
                raise QueryError(f"--uid: {exc}") from None
        if args.store:
            batch, failed = query_dir(args.store, q), []
        else:
            if not args.token_file and not args.tls_cert:
                raise UserError(
                    "--registry needs --token-file or --tls-cert (the cells' store endpoints require one)"
                )
            batch, failed = _query_cluster(args, q)
    except QueryError as exc:
        raise UserError(str(exc)) from None
    body = pcap_bytes(batch)
    if args.out == "-":
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
    else:
        with open(args.out, "wb") as fh:
            fh.write(body)
    frames = 0 if batch is None else len(batch)
    print(f"celltap pcap: {frames} frames written to {args.out}", file=sys.stderr)
    for name, why in failed:
        print(f"celltap pcap: cell {name} did not answer: {why} (its frames are missing)", file=sys.stderr)
    return 1 if failed else 0


def cell_stores(registry_url: str, cluster: str) -> dict[str, str]:
    """Store endpoint URL of every registered cell that serves one."""
    from celltap.registry import kind_prefix, open_registry

    prefix = kind_prefix(cluster, "cells")
    with open_registry(registry_url) as reg:
        members = reg.get_prefix(prefix)
    out = {}
    for key, raw in members.items():
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict) and value.get("store"):
            out[key[len(prefix) :]] = str(value["store"])
    return out


def _client_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context for https store endpoints (None: the system's defaults)."""
    if not (args.tls_ca or args.tls_cert):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    try:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"--tls-*: {exc}") from None
    return ctx


def _query_cluster(args: argparse.Namespace, q: Query) -> tuple[FrameBatch | None, list[tuple[str, str]]]:
    token = None
    if args.token_file:
        try:
            token = read_token(args.token_file)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"--token-file {args.token_file}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    context = _client_context(args)
    stores = cell_stores(args.registry, args.cluster)
    if not stores:
        raise UserError(f"no cell of cluster {args.cluster!r} in {args.registry} serves a packet store")
    params: dict[str, str | int] = {"from": q.t_from, "to": q.t_to}
    if q.uid:
        params["uid"] = q.uid
    else:
        params["flow"] = args.flow
    query = urlencode(params)

    def fetch(item: tuple[str, str]) -> tuple[str, list[FrameBatch] | str]:
        name, base = item
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"{base.rstrip('/')}/pcap?{query}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=args.timeout, context=context) as resp:
                return name, read_all(resp.read())
        except urllib.error.HTTPError as exc:
            return name, f"HTTP {exc.code}: {exc.read().decode(errors='replace').strip()}"
        except (OSError, ValueError, CaptureFormatError) as exc:
            return name, str(exc) or type(exc).__name__

    parts: list[FrameBatch] = []
    failed: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=min(16, len(stores))) as pool:
        for name, got in pool.map(fetch, sorted(stores.items())):
            if isinstance(got, str):
                failed.append((name, got))
            else:
                parts += got
    return merge(parts), failed
