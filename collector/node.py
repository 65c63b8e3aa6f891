"""The analysis node process: gRPC service, HTTP JSON query API, registry membership."""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from concurrent import futures
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
from celltap.collector.apps.users import UserAccountingApp, parse_user_map
from celltap.collector.cluster_grpc import CHANNEL_OPTIONS, add_port
from celltap.collector.cluster_query import scatter_gather, settled_scatter_gather
from celltap.collector.node_config import NodeConfig
from celltap.collector.node_metrics import NODE_METRICS
from celltap.collector.node_state import NodeState
from celltap.collector.query_auth import (
    OPEN_PATHS,
    TLSHTTPServer,
    forwarding_tls,
    grpc_peer,
    server_context,
    subject_text,
)
from celltap.proto import celltap_pb2 as pb
from celltap.proto import celltap_pb2_grpc as pb_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from celltap.registry import Membership, open_registry
from celltap.user_errors import explain

log = logging.getLogger("celltap.node")


class NodeServicer(pb_grpc.AnalysisNodeServicer):
    """gRPC front of a NodeState."""

    def __init__(self, state: NodeState) -> None:
        self.state = state

    def Push(self, request_iterator, context):
        """Apply each batch of the stream and acknowledge it, in order."""
        for msg in request_iterator:
            yield self.state.handle(msg)

    def Query(self, request, context):
        """This node's partial state of one app."""
        NODE_METRICS.queries.labels(self.state.node_id, "grpc").inc()
        peer, claimed = grpc_peer(context)
        if claimed is not None and peer is None:
            # Only a peer that proved its own identity may speak for someone else.
            log.warning("query %s: ignoring unverifiable %s claim %r from %s", request.app,
                        "celltap-caller", claimed, context.peer())  # fmt: skip
            claimed = None
        log.info("query %s from %s%s", request.app, peer or f"anonymous {context.peer()}",
                 f" for {claimed}" if claimed else "")  # fmt: skip
        try:
            body = self.state.partial(request.app)
        except KeyError:
            return pb.QueryReply(node=self.state.node_id, app=request.app, error=f"no app {request.app!r}")
        return pb.QueryReply(node=self.state.node_id, app=request.app, partial_json=json.dumps(body))

    def Status(self, request, context):
        """Counters, membership and state sizes."""
        return pb.StatusReply(node=self.state.node_id, status_json=json.dumps(self.state.status()))


class AnalysisNode:
    """Everything one `celltap node` runs; start() returns once it is serving and registered."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.incarnation = uuid.uuid4().hex[:12]
        self.state = NodeState(config.id, config.build_apps(), self.incarnation)
        self.members: dict[str, dict[str, Any]] = {}
        self._registry_users: dict[str, str] = {}
        self._node_set: Any = None
        self._members_lock = threading.Lock()
        self.grpc_server: grpc.Server | None = None
        self.http_server: TLSHTTPServer | None = None
        self.membership: Membership | None = None
        self._stop = threading.Event()

    def value(self) -> dict[str, Any]:
        """What this node registers under /celltap/<cluster>/nodes/<id>."""
        c = self.config
        value = {
            "grpc": c.grpc_address, "http": c.http, "weight": c.weight, "incarnation": self.incarnation,
            "apps": [a.describe() for a in self.state.live.apps],
        }  # fmt: skip
        if c.http and c.tls is not None:
            value["metrics"] = f"https://{c.http}/metrics"  # `celltap status` scrapes it with its CA
        return value

    def start(self) -> None:
        """Serve gRPC and HTTP, then register and watch the cluster's nodes."""
        c = self.config
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=c.grpc_workers), options=CHANNEL_OPTIONS
        )
        pb_grpc.add_AnalysisNodeServicer_to_server(NodeServicer(self.state), self.grpc_server)
        # Asked of the kernel first: gRPC's own bind failure is a RuntimeError and a C-core log line
        # that do not say why (an address not on this host, a port in use).
        problem = _bind_problem(c.listen)
        if problem:
            raise OSError(f"cannot listen for gRPC on {c.listen}: {problem}")
        try:
            bound = add_port(self.grpc_server, c.listen, c.tls)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {c.listen}")
        self.grpc_server.start()
        if c.http:
            host, _, port = c.http.rpartition(":")
            try:
                context = server_context(c.tls) if c.tls is not None else None
                self.http_server = TLSHTTPServer((host, int(port)), _handler(self), context)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot serve the query API on {c.http}: {exc.strerror}") from None
            self.http_server.daemon_threads = True
            threading.Thread(target=self.http_server.serve_forever, name="node-http", daemon=True).start()
        registry = open_registry(c.registry, tls=c.etcd_tls)
        self.membership = Membership(registry, c.cluster, ttl=c.lease_ttl)
        if any(isinstance(a, UserAccountingApp) for a in self.state.live.apps):
            # Read the user mapping before joining, so no record is accounted before it is known.
            users = registry.watch_prefix(f"/celltap/{c.cluster}/users/", self._on_user_event, initial=True)
            users.wait_synced(timeout=5)
        self._node_set = self.membership.watch("nodes", self._on_members)
        self.registration = self.membership.register("nodes", c.id, self.value())
        self.registration.before_reregister = self._new_incarnation
        self._node_set.wait_synced(timeout=5)
        self._on_members()
        threading.Thread(target=self._refresh_gauges, name="node-gauges", daemon=True).start()

    def _on_members(self, _changed: object = None) -> None:
        # Always apply the set's current view under one lock: a snapshot handed to a callback
        # (or read at start-up) may be older than one already applied by another thread.
        if self._node_set is None:
            return  # the watch fired before start() kept it; start() applies the view itself
        with self._members_lock:
            members = self._node_set.members()
            self.members = members
            self.state.set_members(members)

    def _on_user_event(self, event: Any) -> None:
        prefix = f"/celltap/{self.config.cluster}/users/"
        name = event.key[len(prefix) :]
        if event.type == "delete":
            self._registry_users.pop(name, None)
        else:
            try:
                user = str(event.json()["user"])
                parse_user_map(f"{name.replace('_', '/')} {user}", event.key)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("registry user mapping %s ignored (want {\"user\": NAME} under an address): %s",
                            event.key, exc)  # fmt: skip
                return
            self._registry_users[name] = user
        lines = [f"{k.replace('_', '/')} {u}" for k, u in self._registry_users.items()]
        try:
            mapping = parse_user_map("\n".join(lines), "registry users")
        except ValueError as exc:
            log.warning("registry user mapping ignored: %s", exc)
            return
        for a in self.state.live.apps:
            if isinstance(a, UserAccountingApp):
                a.users.set_dynamic(mapping)

    def _new_incarnation(self) -> dict[str, Any]:
        """Before re-registering after a lost lease: reset, and come back as a new incarnation.

        We were out of the cluster long enough for the lease to expire: the others promoted our
        shadows, so our live state would be counted twice.  Resetting *before* the registry shows
        us again means no collector ever routes to the old incarnation after it left; batches still
        addressed to it are fenced by NodeState.
        """
        self.incarnation = uuid.uuid4().hex[:12]
        self.state.reset(self.incarnation)
        return self.value()

    def _refresh_gauges(self) -> None:
        while not self._stop.wait(1.0):
            self.state.status()  # refreshes the state-size gauges

    def cluster_nodes(self) -> dict[str, dict[str, Any]]:
        """The nodes this node currently knows (itself included)."""
        with self._members_lock:
            nodes = dict(self.members)
        nodes.setdefault(self.config.id, self.value())
        return nodes

    def query(
        self, app: str, params: dict[str, Any], local: bool = False, caller: str | None = None
    ) -> dict[str, Any]:
        """A cluster-wide answer (or this node's own share when `local`), asked with `caller`'s identity.

        `caller` is the verified certificate subject of whoever asked; None asks anonymously.
        """
        tls = forwarding_tls(self.config.tls, caller)
        if local:
            nodes = {self.config.id: self.cluster_nodes()[self.config.id]}
            return scatter_gather(nodes, app, params, tls, caller=caller, check_views=False)
        return settled_scatter_gather(self.cluster_nodes, app, params, tls=tls, caller=caller)

    def stop(self) -> None:
        """Withdraw from the registry, stop serving."""
        self._stop.set()
        if self.membership is not None:
            self.membership.close(withdraw=True)
        if self.http_server is not None:
            self.http_server.shutdown()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=2).wait(3)


def _handler(node: AnalysisNode) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 60  # seconds a connection may sit idle: a silent client does not hold a thread forever

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http: " + fmt, *args)

        def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, obj: Any) -> None:
            self._send(code, json.dumps(obj, indent=1).encode() + b"\n")

        def _caller(self) -> str | None:
            getpeercert = getattr(self.connection, "getpeercert", None)
            return subject_text(getpeercert()) if getpeercert is not None else None

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            parts = [p for p in url.path.split("/") if p]
            caller = self._caller()
            tls = node.config.tls
            if tls is not None and tls.ca and caller is None and (parts or [""])[0] not in OPEN_PATHS:
                self._json(403, {"error": "client certificate required (signed by the cluster's CA)"})
                return
            if parts == ["metrics"]:
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif parts == ["status"]:
                self._json(200, node.state.status())
            elif parts == ["nodes"]:
                self._json(200, node.cluster_nodes())
            elif len(parts) == 2 and parts[0] == "query":
                local = params.pop("local", "0") not in ("0", "", "false")
                NODE_METRICS.queries.labels(node.config.id, "http").inc()
                if node.state.app(parts[1]) is None:
                    self._json(404, {"error": f"no app {parts[1]!r}"})
                    return
                try:
                    self._json(200, node.query(parts[1], params, local, caller))
                except ValueError as exc:
                    self._json(400, {"error": str(exc)})
            else:
                self._json(404, {"error": "GET /query/<app>?by=&n=&local=1, /status, /nodes or /metrics"})

    return Handler


def _bind_problem(address: str) -> str:
    """Why `host:port` cannot be bound ("" when it can), asked of the kernel with a probe socket."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
    except (OSError, ValueError) as exc:
        return explain(exc, address) if isinstance(exc, OSError) else str(exc)
    return ""
