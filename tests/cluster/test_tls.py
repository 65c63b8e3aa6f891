"""Mutual TLS configured once (the node's `tls:` section) secures etcd and gRPC; plaintext and
certificate-less clients are refused."""

from __future__ import annotations

import numpy as np
import pytest
from celltap.collector.cluster_collector import router_config, start_router
from celltap.collector.cluster_query import node_partial, scatter_gather
from celltap.collector.node import AnalysisNode
from celltap.collector.node_config import config_from_dict

from celltap.registry.tls import TLSConfig
from tests.cluster.procs import free_port
from tests.cluster.records import make_batch, make_records
from tests.conftest import require_tool
from tests.fixtures_etcd import make_pki

pytestmark = pytest.mark.timeout(90)


def test_mutual_tls_for_etcd_and_grpc(etcd_factory, tmp_path) -> None:
    require_tool("openssl")
    pki = make_pki(tmp_path / "pki")
    etcd = etcd_factory(pki=pki)
    url = f"etcds://{etcd.endpoint}"
    node_tls = {"ca": pki.ca, "cert": pki.server_cert, "key": pki.server_key}
    listen = f"127.0.0.1:{free_port()}"
    cfg = config_from_dict({
        "id": "s1", "listen": listen, "http": None, "registry": url, "cluster": "tls", "lease_ttl": 3,
        "apps": {"volume": {"kind": "volume", "key": "src"}}, "tls": node_tls,
    })  # fmt: skip
    node = AnalysisNode(cfg)
    node.start()
    client_tls = TLSConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    router, close = start_router(url, "tls", router_config("c-tls", {}, client_tls))
    try:
        assert router.stats()["members"] == ["s1"]  # membership read from etcd over mutual TLS
        recs = make_records(np.random.default_rng(1), 2000)
        router.on_batch(make_batch(recs))
        assert router.wait_idle(20)
        answer = scatter_gather(router.members, "volume", {"n": 1}, client_tls)
        assert answer["complete"] and answer["total"]["bytes"] == int(recs["octetDeltaCount"].sum())
        with pytest.raises(RuntimeError, match="UNAVAILABLE"):
            node_partial(listen, "volume", {}, None, timeout=3)  # plaintext to a TLS port
        with pytest.raises(RuntimeError, match="UNAVAILABLE"):
            node_partial(listen, "volume", {}, TLSConfig(ca=pki.ca), timeout=3)  # no client certificate
    finally:
        close()
        node.stop()
