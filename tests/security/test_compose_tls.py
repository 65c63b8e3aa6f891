"""The compose cluster's certificates (docker/gen_certs.py, the `certs` service) secure the collector ->
node gRPC and the node's HTTPS query API, with the compose files' own configs (docker/config/).

No Docker here: the generator runs as the image runs it, the node runs from docker/config/node.yaml
(addresses moved to free loopback ports, the registry to a directory), and the collector's gRPC
client uses docker/config/collector.yaml's tls section and dials the name it dials in compose.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from celltap.collector.cluster_collector import router_config, start_router
from celltap.collector.config import config_from_dict as collector_config

from celltap.registry.tls import TLSConfig
from tests.cluster.procs import CELLTAP, Proc, free_port, wait_for
from tests.cluster.records import make_batch, make_records
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())

pytestmark = pytest.mark.timeout(120)


def gen_certs(out: Path) -> subprocess.CompletedProcess:
    svc = COMPOSE["services"]["certs"]
    args = [a.replace("/etc/celltap-tls", str(out)) for a in svc["command"]]
    return subprocess.run(
        [sys.executable, str(DOCKER / "gen_certs.py"), *args], capture_output=True, text=True
    )


def test_generated_certificates_are_kept_and_private(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert gen_certs(out).returncode == 0
    first = (out / "node" / "tls.crt").read_bytes()
    p = gen_certs(out)  # a restart of the stack keeps the cluster's identity
    assert p.returncode == 0 and "kept" in p.stderr
    assert (out / "node" / "tls.crt").read_bytes() == first
    for role in ("node", "collector", "client"):
        assert (out / role / "tls.key").stat().st_mode & 0o077 == 0, role
    openssl = require_tool("openssl")
    leaves = [str(out / r / "tls.crt") for r in ("node", "collector", "client")]
    v = subprocess.run(
        [openssl, "verify", "-CAfile", str(out / "ca.crt"), *leaves], capture_output=True, text=True
    )
    assert v.returncode == 0, v.stdout + v.stderr


def test_compose_configs_run_collector_to_node_over_mutual_tls(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert gen_certs(out).returncode == 0

    def local(section: dict) -> dict:
        return {k: v.replace("/etc/celltap-tls", str(out)) for k, v in section.items()}

    node_cfg = yaml.safe_load((DOCKER / "config" / "node.yaml").read_text())
    grpc_port, http_port = free_port(), free_port()
    registry = f"file://{tmp_path / 'registry'}"
    node_cfg.update({
        "listen": f"127.0.0.1:{grpc_port}", "advertise": f"127.0.0.1:{grpc_port}",
        "http": f"127.0.0.1:{http_port}", "registry": registry, "tls": local(node_cfg["tls"]),
    })  # fmt: skip
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(node_cfg))
    col = collector_config(yaml.safe_load((DOCKER / "config" / "collector.yaml").read_text()))
    assert col.registry_tls == {}  # plain etcd beside TLS gRPC
    tls = TLSConfig(**local(col.tls), server_name="node-0")  # compose: the collector dials node-0:50051
    node = Proc("node", [*CELLTAP, "node", "--config", str(tmp_path / "node.yaml")], tmp_path)
    close = None
    try:
        wait_for(lambda: "celltap node node-0:" in node.tail(), 30, "node serving")
        router, close = start_router(registry, node_cfg["cluster"], router_config("collector", {}, tls))
        wait_for(lambda: list(router.members) == ["node-0"], 20, "node in the ring")
        recs = make_records(np.random.default_rng(5), 1000)
        router.on_batch(make_batch(recs))
        assert router.wait_idle(20), router.stats()
        client = out / "client"
        p = subprocess.run(
            [require_tool("curl"), "-sS", "--max-time", "20", "--resolve", f"node-0:{http_port}:127.0.0.1",
             "--cacert", str(client / "ca.crt"), "--cert", str(client / "tls.crt"),
             "--key", str(client / "tls.key"),
             f"https://node-0:{http_port}/query/volume?n=1"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["total"]["bytes"] == int(recs["octetDeltaCount"].sum())
    finally:
        if close is not None:
            close()
        node.stop()
