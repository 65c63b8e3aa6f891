"""The router's bounded buffer: while a node cannot be reached its batches stay pending; once the
buffer is full the router refuses at its ingress and counts what it refused; nothing accepted is
lost, and the node gets it all once it is reachable again.

The node is a real `celltap node` process, made unreachable by SIGSTOP (its connections stay open,
nothing is answered) and reachable again by SIGCONT, with a lease long enough to outlive the pause,
so it comes back with its state intact.  The router runs here, over real gRPC and a file:// registry.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
from celltap.collector.cluster_collector import router_config, start_router

from tests.cluster.procs import Cluster, wait_for
from tests.cluster.records import make_batch, make_records

pytestmark = pytest.mark.timeout(150)


def test_full_buffer_drops_at_ingress_and_counts_then_delivers_the_rest(tmp_path) -> None:
    registry = f"file://{tmp_path}/reg"
    cluster = Cluster(tmp_path, registry, name="bp", ttl=60.0)
    cluster.start_node("only", {"volume": {"kind": "volume", "key": "src"}})
    node = cluster.nodes["only"]
    router = close = None
    try:
        cluster.wait_members({"only"}, timeout=30)
        router, close = start_router(
            registry, "bp", router_config("c-bp", {"batch_records": 1000, "max_pending_records": 5000}, None)
        )
        wait_for(lambda: set(router.members) == {"only"}, 10, "the router to see the node")
        node.p.send_signal(signal.SIGSTOP)  # registered, but nothing it is sent is answered
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

        node.p.send_signal(signal.SIGCONT)  # the node answers again, with its state intact
        assert router.wait_idle(60), (router.stats(), _senders(router), node.tail(1500))
        answer = cluster.query("only", "volume", n=1, local=1)
        assert answer["total"]["bytes"] == accepted_bytes
        counts = cluster.status("only")["counts"]
        assert counts["records_primary"] == 5000 and counts["resets"] == 0, counts
    finally:
        if node.alive():
            node.p.send_signal(signal.SIGCONT)
        if close is not None:
            close()
        cluster.stop_all()


def _senders(router) -> dict:
    """Each sender's (connected, queued, in flight), for a failure message."""
    return {n: (s.connected, len(s.queue), len(s.inflight)) for n, s in router.senders.items()}
