"""Cluster-wide queries: every node's partial state over gRPC (scatter), merged here (gather).

A node's share is only right once it has seen every membership change the asker's view contains:
a node that has not yet seen another leave (or come back as a new incarnation) still keeps what it
holds for the departed one in a shadow, outside its answer (collector/node_state.py).  Registry
watches lag after an etcd restart or a pause, by seconds.  So each node answers with its own
incarnation and its view of the others, and the gatherer marks the answer incomplete, naming the
node, when that view names a member the asker does not see, or another incarnation of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from celltap.collector.apps.base import merge_partials
from celltap.collector.cluster_grpc import make_channel
from celltap.collector.query_auth import caller_metadata
from celltap.proto import celltap_pb2 as pb
from celltap.proto import celltap_pb2_grpc as pb_grpc

from celltap.registry.tls import TLSConfig


def node_partial(
    address: str,
    app: str,
    params: Mapping[str, Any],
    tls: TLSConfig | None,
    timeout: float,
    caller: str | None = None,
) -> dict[str, Any]:
    """One node's {"describe", "partial"} for `app`, asked for `caller` (RuntimeError on failure)."""
    with make_channel(address, tls) as channel:
        stub = pb_grpc.AnalysisNodeStub(channel)
        try:
            reply = stub.Query(
                pb.QueryRequest(app=app, params_json=json.dumps(dict(params))),
                timeout=timeout,
                metadata=caller_metadata(caller),
            )
        except grpc.RpcError as exc:
            raise RuntimeError(f"{address}: {exc.code().name} {exc.details()}") from None
    if reply.error:
        raise RuntimeError(f"{reply.node or address}: {reply.error}")
    return json.loads(reply.partial_json)


def node_status(address: str, tls: TLSConfig | None, timeout: float) -> dict[str, Any]:
    """One node's status document."""
    with make_channel(address, tls) as channel:
        reply = pb_grpc.AnalysisNodeStub(channel).Status(pb.StatusRequest(), timeout=timeout)
    return json.loads(reply.status_json)


def scatter_gather(
    nodes: Mapping[str, Mapping[str, Any]],
    app: str,
    params: Mapping[str, Any] | None = None,
    tls: TLSConfig | None = None,
    timeout: float = 10.0,
    caller: str | None = None,
    check_views: bool = True,
) -> dict[str, Any]:
    """Ask every node {id: registry value with "grpc"} for `app`, merge, answer.

    `caller` (a certificate subject) travels in the `celltap-caller` metadata (collector/query_auth.py).

    The answer carries "nodes" (who answered) and "errors" {node: message}; "complete" is False
    when a node did not answer, since its share is then missing, or (with `check_views`, which needs
    `nodes` to be the whole membership) when a node's membership view is behind the asker's.
    """
    params = dict(params or {})
    errors: dict[str, str] = {}
    partials: list[dict[str, Any]] = []
    answered: list[str] = []
    lagging: list[str] = []  # answered, but with a membership view that differs from `nodes`
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(nodes)))) as pool:
        futures = {
            nid: pool.submit(node_partial, str(v.get("grpc")), app, params, tls, timeout, caller)
            for nid, v in nodes.items()
        }
        for nid, fut in sorted(futures.items()):
            try:
                reply = fut.result()
            except Exception as exc:
                errors[nid] = str(exc)
                continue
            partials.append(reply)
            answered.append(nid)
            behind = view_behind(nodes, nid, reply) if check_views else None
            if behind:
                errors[nid] = behind
                lagging.append(nid)
    if not partials:
        return {"app": app, "complete": False, "nodes": [], "errors": errors or {"*": "no analysis nodes"}}
    merged = merge_partials(partials[0]["describe"], [p["partial"] for p in partials])
    answer = merged.answer(params)
    answer.update({"complete": not errors, "nodes": answered, "errors": errors})
    if lagging:
        answer["views_differ"] = lagging  # those errors pass once the views converge
    return answer


def settled_scatter_gather(
    get_nodes: Callable[[], Mapping[str, Mapping[str, Any]]],
    app: str,
    params: Mapping[str, Any] | None = None,
    settle: float = 5.0,
    **kwargs: Any,
) -> dict[str, Any]:
    """scatter_gather over `get_nodes()`, asked again over a fresh membership while views differ
    (they converge within seconds of a change), for at most `settle` seconds."""
    deadline = time.monotonic() + settle
    while True:
        answer = scatter_gather(get_nodes(), app, params, **kwargs)
        lagging = answer.get("views_differ") or []
        if not lagging or set(answer["errors"]) != set(lagging) or time.monotonic() >= deadline:
            return answer
        time.sleep(0.2)


def view_behind(nodes: Mapping[str, Mapping[str, Any]], nid: str, reply: Mapping[str, Any]) -> str | None:
    """Why node `nid`'s answer may miss records, judged by its view against the asker's `nodes`
    (None when it has seen every departure and re-incarnation the asker has)."""
    mine = str(nodes.get(nid, {}).get("incarnation", ""))
    theirs = str(reply.get("incarnation", ""))
    if mine and theirs and mine != theirs:
        return f"{nid} is now incarnation {theirs}, not {mine}: the asker's view is behind"
    view = reply.get("view")
    if not isinstance(view, Mapping):
        return None  # a node of a version that does not say
    stale = []
    for member, incarnation in sorted(view.items()):
        if member == nid:
            continue
        current = nodes.get(member)
        if current is None:
            stale.append(f"{member} (left)")
        elif incarnation and current.get("incarnation") and str(current["incarnation"]) != str(incarnation):
            stale.append(f"{member}@{incarnation} (now {current['incarnation']})")
    if stale:
        return f"{nid} has not yet seen a membership change: {', '.join(stale)}; its share may miss records"
    return None
