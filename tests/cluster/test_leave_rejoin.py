"""A node that leaves gracefully mid-stream and comes back under the same id (a new incarnation,
empty state): the survivors absorb what it held, the newcomer starts empty, totals stay exact.
Nodes run in this process with real gRPC and a file:// registry."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from celltap.collector.cluster_collector import router_config, start_router
from celltap.collector.cluster_query import scatter_gather
from celltap.collector.node import AnalysisNode
from celltap.collector.node_config import config_from_dict

from tests.cluster.procs import free_port, wait_for
from tests.cluster.records import make_batch, make_records

pytestmark = pytest.mark.timeout(120)


def test_leave_and_rejoin_mid_stream_keeps_totals_exact(tmp_path) -> None:
    registry = f"file://{tmp_path}/reg?poll=0.05"
    configs = {
        nid: config_from_dict(
            {
                "id": nid,
                "listen": f"127.0.0.1:{free_port()}",
                "http": None,
                "registry": registry,
                "cluster": "rj",
                "lease_ttl": 2,
                "apps": {
                    "volume": {"kind": "volume", "key": "src"},
                    "mix": {"kind": "app_mix", "key": "flow"},
                },
            }
        )
        for nid in ("a", "b", "c")
    }
    nodes = {nid: AnalysisNode(cfg) for nid, cfg in configs.items()}
    for n in nodes.values():
        n.start()
    router, close = start_router(registry, "rj", router_config("c-rj", {"batch_records": 2000}, None))
    fed = {"bytes": 0, "records": 0}
    stop = threading.Event()

    def feed() -> None:
        rng = np.random.default_rng(3)
        while not stop.is_set():
            recs = make_records(rng, 500)
            assert router.on_batch(make_batch(recs))
            fed["bytes"] += int(recs["octetDeltaCount"].sum())
            fed["records"] += len(recs)
            time.sleep(0.005)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_for(lambda: len(router.members) == 3, 10, "three nodes in the ring")
        time.sleep(1.0)
        nodes["b"].stop()  # graceful: withdraws its lease at once
        wait_for(lambda: len(router.members) == 2, 10, "b to leave the ring")
        time.sleep(1.0)
        nodes["b"] = AnalysisNode(configs["b"])  # same id and address, new incarnation
        nodes["b"].start()
        wait_for(lambda: len(router.members) == 3, 10, "b to rejoin")
        time.sleep(1.0)
    finally:
        stop.set()
        feeder.join()
    try:
        assert router.wait_idle(20)
        for n in nodes.values():
            wait_for(lambda n=n: sorted(n.state.members) == ["a", "b", "c"], 10, "every node to see a, b, c")
        answer = scatter_gather(router.members, "volume", {"n": 1})
        assert answer["complete"]
        assert answer["total"]["bytes"] == fed["bytes"] and answer["total"]["records"] == fed["records"]
        mix = scatter_gather(router.members, "mix", {"n": 0})
        assert sum(row["flows"] for row in mix["top"]) == fed["records"]
        assert sum(n.state.counts["promotions"] for n in nodes.values()) >= 1
    finally:
        close()
        for n in nodes.values():
            n.stop()
