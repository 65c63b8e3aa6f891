"""The chart's registrar sidecar, run as rendered, beside a real cell against a real etcd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.deploy.chart import REPO, find
from tests.deploy.pods import config_data, expand, pod_env
from tests.deploy.processes import CELLTAP, free_port, wait_for
from tests.fixtures_etcd import etcd_server  # noqa: F401  (fixture)


def test_registrar_holds_the_cell_lease_while_the_cell_answers(
    etcd_server: Any,  # noqa: F811
    rendered: dict[str, list[dict[str, Any]]],
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    from celltap.incubator.cellsource import RegistryCells

    docs = rendered["default"]
    sts = find(docs, "StatefulSet", "-cell")
    containers = sts["spec"]["template"]["spec"]["containers"]
    (reg,) = [c for c in containers if c["name"] == "registrar"]
    env = {**pod_env(reg, f"{sts['metadata']['name']}-3"), "POD_IP": "127.0.0.1"}
    args = expand(reg["args"], env)
    vxlan, metrics = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    cluster = f"deploy-{uuid.uuid4().hex[:8]}"
    # The rendered argv with this machine's etcd, ports and a private cluster name; a long lease so
    # that a cell vanishing quickly proves the lease was withdrawn, not left to expire.
    override = {
        "--registry": etcd_server.url,
        "--cluster": cluster,
        "--input": f"vxlan://127.0.0.1:{vxlan}",
        "--health": f"http://127.0.0.1:{metrics}/metrics",
    }
    args = [override.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    assert args[args.index("--id") + 1] == "3"
    registrar_cmd = [sys.executable, str(REPO / "docker/cell_registrar.py"), *args]
    registrar_cmd += ["--interval", "0.2", "--failures", "2", "--ttl", "60"]

    sftap = tmp_path / "sftap.yaml"
    sftap.write_text(config_data(docs, "sftap.yaml"))
    home = tmp_path / "home"
    cell_cmd = [*CELLTAP, "cell", "--config", str(sftap), "--input", f"vxlan://127.0.0.1:{vxlan}",
                "--cell-id", "3", "--home", str(home), "--metrics-port", str(metrics)]  # fmt: skip
    run_env = {**os.environ, "PYTHONPATH": str(REPO)}

    watcher = RegistryCells(etcd_server.url, cluster, "input")
    try:
        # Before the cell answers, nothing is registered.
        registrar = subprocess.Popen(registrar_cmd, env=run_env, stderr=subprocess.PIPE)
        procs.append(registrar)
        time.sleep(1.0)
        assert watcher.current() == {}
        cell = subprocess.Popen(cell_cmd, env=run_env, stderr=subprocess.DEVNULL)
        procs.append(cell)
        wait_for(lambda: "3" in watcher.current(), 20, "the cell to be registered")
        spec = watcher.current()["3"]
        assert (spec.output, spec.weight) == (f"vxlan://127.0.0.1:{vxlan}", 1)

        # The cell dies: the registrar withdraws the lease (well before its 60 s expiry) and exits 1.
        cell.send_signal(signal.SIGKILL)
        wait_for(lambda: watcher.current() == {}, 10, "the dead cell to be withdrawn")
        assert registrar.wait(10) == 1

        # Restarted (as the kubelet would), it registers again; SIGTERM withdraws and exits 0.
        cell = subprocess.Popen(cell_cmd, env=run_env, stderr=subprocess.DEVNULL)
        procs.append(cell)
        registrar = subprocess.Popen(registrar_cmd, env=run_env, stderr=subprocess.PIPE)
        procs.append(registrar)
        wait_for(lambda: "3" in watcher.current(), 20, "the cell to be registered again")
        registrar.send_signal(signal.SIGTERM)
        assert registrar.wait(10) == 0
        wait_for(lambda: watcher.current() == {}, 10, "the registration to be withdrawn on SIGTERM")
    finally:
        watcher.close()
