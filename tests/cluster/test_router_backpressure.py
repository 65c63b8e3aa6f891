"""The router's bounded buffer: while a node cannot be reached its batches stay pending; once the
buffer is full the router refuses at its ingress and counts what it refused; nothing accepted is
lost, and the node gets it all once it is reachable again (real gRPC, file:// registry)."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
from celltap.collector.cluster_collector import router_config, start_router
from celltap.collector.cluster_grpc import add_port
from celltap.collector.node import AnalysisNode, NodeServicer
from celltap.collector.node_config import config_from_dict
from celltap.proto import celltap_pb2_grpc as pb_grpc

from tests.cluster.procs import free_port, wait_for
from tests.cluster.records import make_batch, make_records

pytestmark = pytest.mark.timeout(150)


def test_full_buffer_drops_at_ingress_and_counts_then_delivers_the_rest(tmp_path) -> None:
    registry = f"file://{tmp_path}/reg"
    listen = f"127.0.0.1:{free_port()}"
    cfg = config_from_dict({
        "id": "only", "listen": listen, "http": None, "registry": registry, "cluster": "bp",
        "apps": {"volume": {"kind": "volume", "key": "src"}},
    })  # fmt: skip
    node = AnalysisNode(cfg)
    node.start()
    router, close = start_router(
        registry, "bp", router_config("c-bp", {"batch_records": 1000, "max_pending_records": 5000}, None)
    )
    replacement = None
    try:
        assert node.grpc_server is not None
        # The node is registered but unreachable (gRPC binds with SO_REUSEPORT: the old listener
        # must be gone before the replacement binds, or it could still take connections).
        assert node.grpc_server.stop(grace=None).wait(30)
        rng = np.random.default_rng(1)
        accepted_bytes = 0
        refused = 0
        for _ in range(10):
            recs = make_records(rng, 1000)
            if router.on_batch(make_batch(recs)):
                accepted_bytes += int(recs["octetDeltaCount"].sum())
            else:
                refused += len(recs)
        router.flush()
        stats = router.stats()
        assert refused == 5000 and stats["dropped_buffer_full"] == 5000
        assert stats["pending_records"] == 5000

        # The node comes back on the same address with its state intact.
        replacement = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_AnalysisNodeServicer_to_server(NodeServicer(node.state), replacement)
        add_port(replacement, listen)
        replacement.start()
        assert router.wait_idle(60), (router.stats(), _senders(router), router.members)
        wait_for(lambda: node.state.app("volume").answer({"n": 1})["total"]["bytes"] == accepted_bytes, 5,
                 "the node to hold every accepted record")  # fmt: skip
        assert node.state.status()["counts"]["records_primary"] == 5000
    finally:
        close()
        node.stop()
        if replacement is not None:
            replacement.stop(None)


def _senders(router) -> dict:
    """Each sender's (connected, queued, in flight), for a failure message."""
    return {n: (s.connected, len(s.queue), len(s.inflight)) for n, s in router.senders.items()}
