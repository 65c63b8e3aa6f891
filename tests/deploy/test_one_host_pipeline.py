"""The chart's configs and commands as helm renders them for the one-rack example, run together on
one host:
incubator -> cells -> collector -> analysis node.

A real etcd, an analysis node from the per-pod node config, the routing collector, two real cells
each beside its registrar (as the chart runs them), and the rendered incubator config reading a
loadgen capture instead of a mirror port.  tshark is the oracle for what the capture holds.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool
from tests.deploy.chart import REPO, find
from tests.deploy.pods import config_data, expand, mount_tls_secret, pod_env, run_init_container
from tests.deploy.processes import CELLTAP, free_port, free_port_block, wait_for
from tests.deploy.test_rendered_manifests import KUBE_VERSIONS, problems
from tests.fixtures_etcd import etcd_server  # noqa: F401  (fixture)


def scrape(port: int, name: str, context: ssl.SSLContext | None = None) -> float:
    """Sum of one metric's samples (all labels) on a local /metrics endpoint (https with `context`);
    0 when unreachable."""
    url = f"{'https' if context else 'http'}://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def accepted(path: Path) -> bool:
    """Whether a UNIX listening socket has accepted a connection (its path shows twice in /proc)."""
    entries = Path("/proc/net/unix").read_text().splitlines()[1:]
    return sum(line.split()[-1] == str(path) for line in entries if len(line.split()) == 8) >= 2


def http_clients(pcap: Path) -> set[tuple[str, str]]:
    """(client address, client port) of every HTTP request in a capture, as tshark sees them."""
    tshark = require_tool("tshark")
    fields = ["-T", "fields", "-e", "ip.src", "-e", "tcp.srcport"]
    cmd = [tshark, "-r", str(pcap), "-Y", "http.request", *fields]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return {(ip, port) for ip, port in (line.split("\t") for line in out.splitlines() if line)}


def tshark_counts(pcap: Path) -> tuple[int, int]:
    """(frames, TCP conversations) in a capture, as tshark counts them."""
    tshark = require_tool("tshark")

    def run(*args: str) -> str:
        return subprocess.run([tshark, "-r", str(pcap), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout  # fmt: skip

    frames = run("-T", "fields", "-e", "frame.number").split()
    conv = run("-q", "-z", "conv,tcp")
    return len(frames), sum("<->" in line for line in conv.splitlines())


def test_rendered_pipeline_on_one_host(
    etcd_server: Any,  # noqa: F811
    rendered: dict[str, list[dict[str, Any]]],
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # The one-rack example as `helm template` renders it, valid for the Kubernetes API (strict).
    docs = rendered["one-rack"]
    assert problems(docs, KUBE_VERSIONS[0]) == {}
    assert find(docs, "StatefulSet", "-cell")["spec"]["replicas"] == 2
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cluster = f"deploy-{uuid.uuid4().hex[:8]}"
    pcap = tmp_path / "http.pcap"
    subprocess.run([*CELLTAP, "loadgen", "pcap", "http", str(pcap), "--count", "20"], env=env, check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    frames, conversations = tshark_counts(pcap)
    assert frames > 100 and conversations == 20
    clients = http_clients(pcap)
    assert len(clients) == conversations

    # Analysis node: the ConfigMap's node.yaml made per-pod by the init container's own command.
    nodes = find(docs, "StatefulSet", "-node")
    pod = f"{nodes['metadata']['name']}-0"
    node_cfg = run_init_container(
        docs, nodes["spec"]["template"]["spec"], "node.yaml", pod, tmp_path / "node"
    )
    assert node_cfg["id"] == pod
    grpc, node_http = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    node_cfg.update(listen=f"127.0.0.1:{grpc}", advertise=f"127.0.0.1:{grpc}", http=f"127.0.0.1:{node_http}",
                    registry=etcd_server.url, cluster=cluster)  # fmt: skip
    # The chart's generated TLS Secrets, as the pods mount them: mutual TLS collector -> node, HTTPS queries.
    mount_tls_secret(docs, nodes["spec"]["template"]["spec"], node_cfg, tmp_path / "node-tls")
    https = ssl.create_default_context(cafile=node_cfg["tls"]["ca"])
    client = find(docs, "Secret", "-client-tls")["data"]
    for key in ("tls.crt", "tls.key"):
        (tmp_path / f"client-{key}").write_bytes(base64.b64decode(client[key]))
    https.load_cert_chain(tmp_path / "client-tls.crt", tmp_path / "client-tls.key")
    (tmp_path / "node/run/node.yaml").write_text(yaml.safe_dump(node_cfg))
    node_args = nodes["spec"]["template"]["spec"]["containers"][0]["args"]
    node_args = [
        str(tmp_path / "node/run/node.yaml") if a == "/run/celltap/node.yaml" else a for a in node_args
    ]
    procs.append(subprocess.Popen([*CELLTAP, *node_args], env=env))

    # Collector: the rendered config and command (the routing collector), on loopback ports.
    collector_cfg = yaml.safe_load(config_data(docs, "collector.yaml"))
    col_spec = find(docs, "Deployment", "-collector")["spec"]["template"]["spec"]
    mount_tls_secret(docs, col_spec, collector_cfg, tmp_path / "collector-tls")
    ipfix_port, collector_metrics = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    collector_cfg.update(
        listen=[f"udp://127.0.0.1:{ipfix_port}"], workers=1, registry=etcd_server.url, cluster=cluster,
        metrics_port=collector_metrics, metrics_addr="127.0.0.1",
    )  # fmt: skip
    (tmp_path / "collector.yaml").write_text(yaml.safe_dump(collector_cfg))
    col = find(docs, "Deployment", "-collector")["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in col  # the image's entrypoint: celltap
    col_argv = [sys.executable, "-m", "celltap.cli", *col["args"]]
    col_argv = [
        str(tmp_path / "collector.yaml") if a == "/etc/celltap/collector.yaml" else a for a in col_argv
    ]
    procs.append(subprocess.Popen(col_argv, env=env))
    wait_for(lambda: scrape(collector_metrics, "celltap_collector_cluster_ring_members") == 1, 30,
             "the collector to have the analysis node in its ring")  # fmt: skip

    # Two cells, each with the rendered cell args and registrar args (ports moved to loopback ones).
    sts = find(docs, "StatefulSet", "-cell")
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    (tmp_path / "sftap.yaml").write_text(config_data(docs, "sftap.yaml"))
    cell_metrics: list[int] = []
    cells: list[subprocess.Popen[bytes]] = []
    sockets: list[Path] = []
    analyzer_ports: dict[str, int] = {}
    values_home = "/var/run/celltap"
    for ordinal in range(2):
        pod = f"{sts['metadata']['name']}-{ordinal}"
        vxlan, metrics = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        cell_metrics.append(metrics)
        home = tmp_path / f"home-{ordinal}"
        cell = containers["cell"]
        cell_args = expand(cell["args"], {**pod_env(cell, pod), "POD_IP": "127.0.0.1"})
        moves = {
            "--config": str(tmp_path / "sftap.yaml"), "--input": f"vxlan://127.0.0.1:{vxlan}",
            "--home": str(home), "--metrics-port": str(metrics), "--ipfix": f"udp://127.0.0.1:{ipfix_port}",
        }  # fmt: skip
        cell_args = [moves.get(cell_args[i - 1], a) if i else a for i, a in enumerate(cell_args)]
        cells.append(subprocess.Popen([*CELLTAP, *cell_args], env=env))
        procs.append(cells[-1])
        reg = containers["registrar"]
        reg_args = expand(reg["args"], {**pod_env(reg, pod), "POD_IP": "127.0.0.1"})
        moves = {"--registry": etcd_server.url, "--cluster": cluster, "--input": f"vxlan://127.0.0.1:{vxlan}",
                 "--health": f"http://127.0.0.1:{metrics}/metrics"}  # fmt: skip
        reg_args = [moves.get(reg_args[i - 1], a) if i else a for i, a in enumerate(reg_args)]
        procs.append(subprocess.Popen([sys.executable, str(REPO / "docker/cell_registrar.py"), *reg_args,
                                       "--interval", "0.2"], env=env))  # fmt: skip
        # The HTTP analyzer sidecar (balance 2: two children on http0 and http1), on this cell's
        # socket directory, its metrics ports shifted to a free block (two cells share this host).
        an = containers["analyzer-http"]
        an_args = [a.replace(values_home, str(home)) for a in an["args"]]
        at = an_args.index("--metrics-port") + 1
        declared = {p["name"]: p["containerPort"] - int(an_args[at]) for p in an["ports"]}
        base = free_port_block(len(declared))
        an_args[at] = str(base)
        analyzer_ports.update({f"{ordinal}/{name}": base + offset for name, offset in declared.items()})
        out = (tmp_path / f"http-{ordinal}.jsonl").open("wb")
        procs.append(subprocess.Popen([*CELLTAP, *an_args], env=env, stdout=out))
        sockets += [home / "tcp/http0", home / "tcp/http1"]

    from celltap.registry import Membership, open_registry

    watch = Membership(open_registry(etcd_server.url), cluster)
    try:
        wait_for(lambda: sorted(watch.members("cells")) == ["0", "1"], 30, "both cells to register")
    finally:
        watch.close()

    wait_for(lambda: all(accepted(p) for p in sockets), 30, "the analyzers to connect to every http socket")

    # Incubator: the rendered config, reading the capture where a tap node reads its mirror port.
    ds = find(docs, "DaemonSet", "-incubator")
    inc_cfg = run_init_container(
        docs, ds["spec"]["template"]["spec"], "incubator.yaml", "x", tmp_path / "inc"
    )
    inc_cfg["capture"] = f"pcap:{pcap}"
    inc_cfg["registry"].update(url=etcd_server.url, cluster=cluster)
    inc_cfg["metrics_port"] = free_port(socket.SOCK_STREAM)
    (tmp_path / "incubator.yaml").write_text(yaml.safe_dump(inc_cfg))
    ds = find(docs, "DaemonSet", "-incubator")
    inc = ds["spec"]["template"]["spec"]["containers"][0]
    inc_args = expand(inc["args"], {**pod_env(inc, "x"), "POD_IP": "127.0.0.1"})
    inc_args = [
        str(tmp_path / "incubator.yaml") if a == "/run/celltap/incubator.yaml" else a for a in inc_args
    ]
    done = subprocess.run([*CELLTAP, *inc_args], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    # Every captured frame reached one of the two cells, and both got a share of the flows.
    def received() -> list[float]:
        return [scrape(p, "celltap_cell_packets_total") for p in cell_metrics]

    wait_for(lambda: sum(received()) == frames, 15, f"the cells to receive all {frames} frames")
    assert min(received()) > 0, received()

    # Stopping the cells ends their flows: one biflow IPFIX record per TCP conversation.
    for cell_proc in cells:
        cell_proc.send_signal(signal.SIGTERM)

    def records() -> float:
        return scrape(collector_metrics, "celltap_collector_records_total")

    wait_for(lambda: records() >= conversations, 20, f"{conversations} flow records at the collector")
    assert records() == conversations

    # Every HTTP conversation reached an analyzer sidecar through the rendered socket wiring.
    def analyzed() -> set[tuple[str, str]]:
        lines = [line for f in tmp_path.glob("http-*.jsonl") for line in f.read_text().splitlines()]
        recs = [r for r in map(json.loads, lines) if not r.get("_log")]  # weird records name no request
        return {(r["id.orig_h"], str(r["id.orig_p"])) for r in recs}

    wait_for(lambda: analyzed() == clients, 20, "an HTTP analyzer record for every conversation")
    # The ports the chart declares (and Prometheus scrapes) are where the analyzer children serve:
    # the balanced children (an-http-0, an-http-1) read the events, the supervisor (an-http) none.
    events = {k: scrape(port, "celltap_analyzer_events_read_total") for k, port in analyzer_ports.items()}
    for ordinal in range(2):
        children = [events[f"{ordinal}/an-http-{i}"] for i in range(2)]
        assert all(n > 0 for n in children), events

    # ... and the collector routed them to the analysis node, which answers queries over them.
    def node_records() -> float:
        return scrape(node_http, "celltap_node_records_received_total", https)

    wait_for(lambda: node_records() >= conversations, 20, "the records at the analysis node")
    assert node_records() == conversations
    with urllib.request.urlopen(
        f"https://127.0.0.1:{node_http}/query/app_mix", timeout=5, context=https
    ) as resp:
        mix = json.load(resp)
    # The cells' classifier label ("http", the SF-TAP rule) travelled in IPFIX to the node.
    assert mix["complete"] is True
    assert [(t["key"], t["flows"]) for t in mix["top"]] == [("http", conversations)]
