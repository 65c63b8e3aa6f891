"""The analysis node's HTTP query API is served over the gRPC TLS, and cluster-wide queries travel with
the caller's identity (collector/query_auth.py, docs/security.md).

Real processes (`celltap -v node`), a CA and certificates made by the openssl CLI, real HTTPS clients
(curl and Python's urllib with a client certificate), real gRPC between the nodes. Records are routed
to the nodes by a real ClusterRouter over mutual TLS, so a complete answer has a known total: the sum
of the octets the test generated.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from celltap.collector.cluster_collector import router_config, start_router
from celltap.proto import celltap_pb2 as pb
from celltap.proto import celltap_pb2_grpc as pb_grpc

from celltap.registry.tls import TLSConfig
from tests.cluster.procs import CELLTAP, Proc, free_port, wait_for
from tests.cluster.records import make_batch, make_records
from tests.conftest import require_tool
from tests.fixtures_etcd import PKI, make_pki

pytestmark = pytest.mark.timeout(120)
CLUSTER = "sec"


@dataclass
class Node:
    id: str
    grpc: str
    http: str
    proc: Proc


def start_node(tmp: Path, nid: str, registry: str, tls: dict | None, env: dict | None = None) -> Node:
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cfg = {
        "id": nid, "listen": grpc_addr, "http": http_addr, "registry": registry, "cluster": CLUSTER,
        "lease_ttl": 5, "apps": {"volume": {"kind": "volume", "key": "src"}},
    }  # fmt: skip
    if tls:
        cfg["tls"] = tls
    path = tmp / f"{nid}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    if env:
        os.environ.update(env)  # Proc passes os.environ on; restored by the caller's monkeypatch
    proc = Proc(nid, [*CELLTAP, "-v", "node", "--config", str(path)], tmp)
    wait_for(lambda: f"celltap node {nid}:" in proc.tail(), 30, f"node {nid} serving")
    return Node(nid, grpc_addr, http_addr, proc)


def curl(url: str, *args: str) -> subprocess.CompletedProcess:
    """curl URL; stdout is the body followed by a last line with the HTTP status."""
    return subprocess.run(
        [require_tool("curl"), "-sS", "--max-time", "20", "-w", "\n%{http_code}", *args, url],
        capture_output=True,
        text=True,
        timeout=30,
    )


def body_status(p: subprocess.CompletedProcess) -> tuple[object, int]:
    body, _, code = p.stdout.rpartition("\n")
    return (json.loads(body) if body.strip().startswith(("{", "[")) else body), int(code)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    require_tool("openssl")
    return make_pki(tmp_path / "pki")


@pytest.fixture
def mtls_pair(tmp_path: Path, pki: PKI) -> Iterator[tuple[list[Node], int, str]]:
    """Two mutual-TLS nodes holding routed records; yields (nodes, total octets, registry URL)."""
    registry = f"file://{tmp_path / 'registry'}"
    tls = {"ca": pki.ca, "cert": pki.server_cert, "key": pki.server_key}
    nodes = [start_node(tmp_path, nid, registry, tls) for nid in ("s1", "s2")]
    client = TLSConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    router, close = start_router(registry, CLUSTER, router_config("c-sec", {}, client))
    try:
        wait_for(lambda: sorted(router.members) == ["s1", "s2"], 20, "both nodes in the router's ring")
        # Each node's own view too (the file registry is polled): a query scatters over that view.
        cert = ("--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key)
        for n in nodes:
            url = f"https://{n.http}/nodes"
            wait_for(lambda url=url: sorted(body_status(curl(url, *cert))[0]) == ["s1", "s2"], 20,
                     f"{n.id} to see both nodes")  # fmt: skip
        recs = make_records(np.random.default_rng(7), 3000)
        router.on_batch(make_batch(recs))
        assert router.wait_idle(20)
        yield nodes, int(recs["octetDeltaCount"].sum()), registry
    finally:
        close()
        for n in nodes:
            n.proc.stop()


def test_https_query_with_a_client_certificate_is_forwarded_for_that_caller(
    mtls_pair: tuple[list[Node], int, str], pki: PKI
) -> None:
    nodes, total, _ = mtls_pair
    url = f"https://{nodes[0].http}/query/volume?n=1"
    answer, code = body_status(
        curl(url, "--cacert", pki.ca, "--cert", pki.client_cert, "--key", pki.client_key)
    )
    assert code == 200, answer
    assert answer["complete"] and answer["nodes"] == ["s1", "s2"], answer
    assert answer["total"]["bytes"] == total
    # The peer logged the query with the node it came through and the caller that node vouched for.
    wait_for(lambda: "for CN=celltap-client" in nodes[1].proc.tail(20000), 10, "s2's log of the caller")
    line = next(x for x in nodes[1].proc.tail(20000).splitlines() if "for CN=celltap-client" in x)
    assert "query volume from CN=celltap-server" in line, line
    # A second client library: Python's own TLS stack with the same client certificate.
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(pki.client_cert, pki.client_key)
    with urllib.request.urlopen(url, context=ctx, timeout=20) as resp:
        assert json.loads(resp.read())["total"]["bytes"] == total


def test_query_api_refuses_callers_without_a_certificate_of_the_cluster_ca(
    mtls_pair: tuple[list[Node], int, str], pki: PKI, tmp_path: Path
) -> None:
    nodes, _, _ = mtls_pair
    base = f"https://{nodes[0].http}"
    for path in ("/query/volume", "/status", "/nodes"):
        answer, code = body_status(curl(base + path, "--cacert", pki.ca))
        assert code == 403 and "client certificate required" in answer["error"], (path, answer)
    text, code = body_status(curl(base + "/metrics", "--cacert", pki.ca))  # probes and Prometheus
    assert code == 200 and "celltap_node_queries_total" in text
    # Plain HTTP to the TLS port gets no answer.
    plain = curl(f"http://{nodes[0].http}/query/volume", "--cacert", pki.ca)
    assert plain.returncode != 0 or body_status(plain)[1] != 200, plain
    # A certificate from another CA fails the handshake.
    rogue = make_pki(tmp_path / "rogue")
    p = curl(
        base + "/query/volume", "--cacert", pki.ca, "--cert", rogue.client_cert, "--key", rogue.client_key
    )
    assert p.returncode != 0 or body_status(p)[1] != 200, p
    assert "total" not in p.stdout


def test_a_node_without_client_authentication_does_not_lend_its_certificate(
    mtls_pair: tuple[list[Node], int, str], pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3 serves TLS without asking for client certificates (no `ca`; it trusts the cluster CA as its
    system roots). An anonymous caller's cluster-wide query reaches s3's own share, but s1 and s2,
    which require client certificates, refuse the anonymous forward: s3 never presents its own
    certificate for a caller who presented none."""
    _, _, registry = mtls_pair
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", pki.ca)
    s3 = start_node(tmp_path, "s3", registry, {"cert": pki.server_cert, "key": pki.server_key})
    try:
        wait_for(
            lambda: len(body_status(curl(f"https://{s3.http}/nodes", "--cacert", pki.ca))[0]) == 3,
            20,
            "s3 sees all three nodes",
        )
        answer, code = body_status(curl(f"https://{s3.http}/query/volume", "--cacert", pki.ca))
        assert code == 200, answer
        assert answer["nodes"] == ["s3"] and not answer["complete"], answer
        assert sorted(answer["errors"]) == ["s1", "s2"], answer
        # A gRPC caller without a certificate cannot speak for someone else: s3 ignores the claim.
        with grpc.secure_channel(s3.grpc, grpc.ssl_channel_credentials(open(pki.ca, "rb").read())) as ch:
            pb_grpc.AnalysisNodeStub(ch).Query(
                pb.QueryRequest(app="volume", params_json="{}"),
                timeout=10,
                metadata=[("celltap-caller", "CN=admin")],
            )
        wait_for(lambda: "unverifiable" in s3.proc.tail(20000), 10, "s3 logs the unverifiable claim")
        assert "for CN=admin" not in s3.proc.tail(20000)
    finally:
        s3.proc.stop()


def test_https_without_a_ca_still_encrypts(pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tls: {cert, key}` alone: the query API is HTTPS (curl verifies the server against the CA)."""
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", pki.ca)
    node = start_node(
        tmp_path, "solo", f"file://{tmp_path / 'reg'}", {"cert": pki.server_cert, "key": pki.server_key}
    )
    try:
        answer, code = body_status(curl(f"https://{node.http}/query/volume", "--cacert", pki.ca))
        assert code == 200 and answer["complete"] and answer["nodes"] == ["solo"], answer
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets no answer
            urllib.request.urlopen(f"http://{node.http}/query/volume", timeout=10).read()
    finally:
        node.proc.stop()


def test_status_reads_tls_nodes_metrics_over_https(mtls_pair: tuple[list[Node], int, str], pki: PKI) -> None:
    """A TLS node registers an https:// metrics endpoint; `celltap status` reads it with its CA."""
    nodes, _, registry = mtls_pair
    p = subprocess.run(
        [*CELLTAP, "status", "--registry", registry, "--cluster", CLUSTER, "--json", "--interval", "0",
         "--tls-ca", pki.ca, "--tls-cert", pki.client_cert, "--tls-key", pki.client_key],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    components = json.loads(p.stdout)["components"]
    for n in nodes:
        entry = components[f"nodes/{n.id}"]
        assert entry["metrics"] == f"https://{n.http}/metrics", entry
        assert "error" not in entry, entry
    assert sum(components[f"nodes/{n.id}"]["input_total"] for n in nodes) > 0


def test_a_silent_client_neither_stalls_others_nor_holds_its_connection(
    mtls_pair: tuple[list[Node], int, str], pki: PKI
) -> None:
    """The TLS handshake runs in the request's thread with a deadline (query_auth.HANDSHAKE_SECONDS)."""
    import socket
    import time

    from celltap.collector.query_auth import HANDSHAKE_SECONDS

    nodes, total, _ = mtls_pair
    host, port = nodes[0].http.rsplit(":", 1)
    silent = socket.create_connection((host, int(port)))  # connects, never says a word
    try:
        t0 = time.monotonic()
        answer, code = body_status(
            curl(f"https://{nodes[0].http}/query/volume", "--cacert", pki.ca,
                 "--cert", pki.client_cert, "--key", pki.client_key)
        )  # fmt: skip
        assert code == 200 and answer["total"]["bytes"] == total
        assert time.monotonic() - t0 < HANDSHAKE_SECONDS / 2  # served while the silent one waits
        silent.settimeout(HANDSHAKE_SECONDS + 10)
        t1 = time.monotonic()
        assert silent.recv(1) == b""  # the server hung up on it ...
        assert time.monotonic() - t1 < HANDSHAKE_SECONDS + 5  # ... at the handshake deadline
    finally:
        silent.close()
