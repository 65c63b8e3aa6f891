"""Real processes for cluster tests: analysis nodes, routing collectors and the IPFIX load generator."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from celltap.loadgen.ipfix_gen import build_pool, random_records, router_template

from celltap.launcher.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CELLTAP = [sys.executable, "-m", "celltap.cli"]




class Proc:
    """A child process with its log file; killed at teardown if still running."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        fh = open(self.log, "wb")
        self.p = subprocess.Popen(
            args, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        fh.close()

    def alive(self) -> bool:
        return self.p.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        return self.p.returncode


def http_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def metric(url: str, name: str) -> float:
    """Sum of all samples of one metric on a /metrics page."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(pred, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception as exc:  # a process still starting up
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_exc})")


APPS = {
    "volume": {"kind": "volume", "key": "src"},
    "by_exporter": {"kind": "volume", "key": "exporter"},
    "top_talkers": {"kind": "top_talkers", "key": "src"},
    "syn_flood": {"kind": "syn_flood", "key": "dst", "min_half_open": 1, "ratio": 0.5},
    "matrix": {"kind": "traffic_matrix", "key": "src", "v4": 16},
}


class Cluster:
    """Nodes and collectors of one cluster on loopback, sharing one registry URL."""

    def __init__(self, tmp: Path, registry: str, name: str = "t", ttl: float = 2.0) -> None:
        self.tmp = tmp
        self.registry = registry
        self.name = name
        self.ttl = ttl
        self.nodes: dict[str, Proc] = {}
        self.node_http: dict[str, str] = {}
        self.collectors: dict[str, Proc] = {}
        self.collector_udp: dict[str, int] = {}
        self.collector_metrics: dict[str, str] = {}

    def start_node(self, node_id: str, apps: dict | None = None) -> None:
        http = f"127.0.0.1:{free_port()}"
        cfg = {
            "id": node_id, "listen": f"127.0.0.1:{free_port()}", "http": http, "registry": self.registry,
            "cluster": self.name, "lease_ttl": self.ttl, "apps": apps or APPS,
        }  # fmt: skip
        path = self.tmp / f"{node_id}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.nodes[node_id] = Proc(node_id, [*CELLTAP, "node", "--config", str(path)], self.tmp)
        self.node_http[node_id] = http

    def start_collector(self, cid: str, routing: dict | None = None) -> None:
        port, mport = free_port(socket.SOCK_DGRAM), free_port()
        cfg = {
            "collector_id": cid, "listen": [f"udp://127.0.0.1:{port}"], "workers": 1,
            "registry": self.registry, "cluster": self.name, "metrics_port": mport,
            "metrics_addr": "127.0.0.1",
            "routing": {"journal": str(self.tmp / "journal"), **(routing or {})},
            "state_dir": str(self.tmp / f"{cid}-state"),  # sequence numbers across restarts
        }  # fmt: skip
        path = self.tmp / f"{cid}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        # The real entry point: `celltap collector --config` routes when the config names a registry.
        self.collectors[cid] = Proc(cid, [*CELLTAP, "collector", "--config", str(path)], self.tmp)
        self.collector_udp[cid] = port
        self.collector_metrics[cid] = f"http://127.0.0.1:{mport}/metrics"

    def restart_collector(self, cid: str) -> None:
        """Start collector `cid` again with its config (same ports, same state directory)."""
        path = self.tmp / f"{cid}.yaml"
        argv = [*CELLTAP, "collector", "--config", str(path)]
        self.collectors[cid] = Proc(f"{cid}.{time.monotonic_ns()}", argv, self.tmp)

    def wait_settled(self, cid: str, timeout: float = 30, quiet: float = 1.5) -> None:
        """Until the collector holds nothing unacknowledged and took no record for `quiet` seconds."""
        url = self.collector_metrics[cid]
        last: list[float] = [-1.0, time.monotonic()]

        def settled() -> bool:
            seen = metric(url, "celltap_collector_cluster_records_in_total")
            now = time.monotonic()
            if seen != last[0]:
                last[:] = [seen, now]
                return False
            return now - last[1] >= quiet and metric(url, "celltap_collector_cluster_pending_records") == 0

        wait_for(settled, timeout, f"collector {cid} to settle: {self.collectors[cid].tail(800)}")

    def status(self, node_id: str) -> dict:
        return http_json(f"http://{self.node_http[node_id]}/status")

    def wait_members(self, expect: set[str], among: list[str] | None = None, timeout: float = 20) -> None:
        """Until every listed node sees exactly `expect` as members, each in its current incarnation
        (a node that came back as a new incarnation keeps its id: a view naming the old one is stale,
        and its holder has not yet absorbed what it kept for the old one)."""
        nodes = among or sorted(expect)

        def agreed() -> bool:
            statuses = {nid: self.status(nid) for nid in nodes}
            current = {nid: st.get("incarnation", "") for nid, st in statuses.items()}
            for st in statuses.values():
                view = st.get("member_incarnations", {m: "" for m in st["members"]})
                if set(view) != expect or any(view[n] != current[n] for n in current if n in view):
                    return False
            return True

        wait_for(agreed, timeout, f"{nodes} to see members {sorted(expect)} in their current incarnations: "
                 + " | ".join(self.nodes[n].tail(400) for n in nodes))  # fmt: skip

    def wait_collector(self, cid: str, members: int, timeout: float = 20) -> None:
        url = self.collector_metrics[cid]
        wait_for(lambda: metric(url, "celltap_collector_cluster_ring_members") == members, timeout,
                 f"collector {cid} to see {members} nodes: {self.collectors[cid].tail(800)}")  # fmt: skip

    def wait_drained(self, cid: str, records: int, timeout: float = 30) -> None:
        """Until the collector decoded `records` and holds nothing unacknowledged."""
        url = self.collector_metrics[cid]

        def done() -> bool:
            return (metric(url, "celltap_collector_cluster_records_in_total") >= records
                    and metric(url, "celltap_collector_cluster_pending_records") == 0)  # fmt: skip

        wait_for(
            done, timeout, f"collector {cid} to route {records} records: {self.collectors[cid].tail(800)}"
        )

    def query(self, node_id: str, app: str, **params: Any) -> dict:
        q = "&".join(f"{k}={v}" for k, v in params.items())
        return http_json(f"http://{self.node_http[node_id]}/query/{app}?{q}")

    def stop_all(self) -> None:
        for p in [*self.collectors.values(), *self.nodes.values()]:
            p.stop()


def loadgen(
    target_port: int,
    rate: float,
    duration: float,
    exporters: int,
    source_base: str,
    seed: int,
    log_dir: Path,
    name: str,
) -> Proc:
    """`celltap loadgen ipfix` as a process; its stdout's last line is the JSON of what it sent."""
    return Proc(name, [*CELLTAP, "loadgen", "ipfix", f"127.0.0.1:{target_port}", "--rate", str(rate),
                       "--duration", str(duration), "--exporters", str(exporters),
                       "--source-base", source_base,
                       "--seed", str(seed)], log_dir)  # fmt: skip


def loadgen_result(proc: Proc, timeout: float = 60) -> dict:
    proc.p.wait(timeout)
    for line in reversed(proc.log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"loadgen printed no result: {proc.tail()}")


def sent_records(result: dict, exporters: int, source_base: str, seed: int) -> dict[str, np.ndarray]:
    """What the generator sent, per exporter address, rebuilt from its deterministic pools.

    Exporter k sent messages k, k+K, ... of the loop over its pool (seed+k); message j of a pool is
    records [j*per, (j+1)*per) of `random_records(default_rng(seed+k), per*64, now)`.
    """
    t = router_template()
    base = int.from_bytes(socket.inet_aton(source_base), "big")
    out = {}
    for k in range(exporters):
        now = time.time()
        pool = build_pool(k + 1, seed + k, now)
        per, nmsg = pool.records[0], len(pool.messages)
        cols = random_records(np.random.default_rng(seed + k), per * nmsg, int(now * 1000))
        # The rebuilt records must be the generator's: its own per-message totals agree.
        assert [
            int(cols["octetDeltaCount"][j * per : (j + 1) * per].sum()) for j in range(nmsg)
        ] == pool.octets
        recs = np.zeros(per * nmsg, dtype=t.out_dtype)
        for name in recs.dtype.names:
            recs[name] = cols[name]
        count = (result["messages"] - k + exporters - 1) // exporters
        idx = (
            np.concatenate([np.arange((j % nmsg) * per, (j % nmsg + 1) * per) for j in range(count)])
            if count
            else []
        )
        out[socket.inet_ntoa((base + k).to_bytes(4, "big"))] = recs[idx]
    return out
