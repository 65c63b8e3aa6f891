"""A local cluster on loopback: analysis nodes, routing collectors, cells with their analyzers, one incubator.

Start order follows the data path backwards so nothing is sent before its receiver listens:
nodes (they register themselves), collectors (wait until their ring holds every node), cells,
analyzers (each cell waits with `--wait-readers` until all are connected, then registers itself
with its VXLAN input), and last the incubator, which learns the cells from the registry.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celltap.launcher.children import CELLTAP, Child, ChildFailed, Supervisor
from celltap.launcher.ports import free_port, free_udp_port
from celltap.launcher.scrape import Samples, scrape
from celltap.launcher.spec import AnalyzerSpec, ClusterSpec

log = logging.getLogger("celltap.launcher")


@dataclass
class Component:
    """A started process with its role, its /metrics URL and what else others need to reach it."""

    kind: str  # node | collector | cell | analyzer | incubator
    name: str
    child: Child
    metrics: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def wait_until(pred: Callable[[], bool], timeout: float, what: str, check: Callable[[], None]) -> None:
    """Poll `pred` until true; `check` raises if a process died meanwhile; TimeoutError names `what`
    and how the last poll ended (an error, or the condition still false), so a stall can be told
    from a component that never answered."""
    deadline = time.monotonic() + timeout
    last = "the condition was still false"
    while True:
        check()
        try:
            if pred():
                return
            last = "the condition was still false"
        except (OSError, ValueError, KeyError) as exc:
            last = f"{type(exc).__name__}: {exc}"  # still starting
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last poll: {last})")
        time.sleep(0.1)


def _http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class LocalCluster:
    """Every process of a ClusterSpec, their configs, logs and outputs under one run directory."""

    def __init__(self, spec: ClusterSpec, run_dir: Path, analyzers_exit_on_eof: bool = False) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.conf_dir = run_dir / "conf"
        self.log_dir = run_dir / "logs"
        self.out_dir = run_dir / "out"
        for d in (self.conf_dir, self.log_dir, self.out_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.registry_url = spec.registry_url(run_dir)
        self.sup = Supervisor(self.log_dir)
        self.components: list[Component] = []
        self.exit_on_eof = analyzers_exit_on_eof
        self.fifo: Path | None = None

    # -- queries -------------------------------------------------------------------------------

    def of_kind(self, kind: str) -> list[Component]:
        """Components of one kind, in start order."""
        return [c for c in self.components if c.kind == kind]

    def check(self) -> None:
        """Raise ChildFailed if any process died unexpectedly."""
        self.sup.check()

    def scrape(self, comp: Component) -> Samples:
        """Scrape one component's /metrics."""
        assert comp.metrics is not None
        return scrape(comp.metrics)

    def scrape_kind(self, kind: str) -> dict[str, Samples]:
        """Scrape every live component of a kind (ones that cannot be reached are left out)."""
        out = {}
        for c in self.of_kind(kind):
            if c.metrics and c.child.alive():
                try:
                    out[c.name] = scrape(c.metrics)
                except OSError:
                    pass
        return out

    def analyzer_outputs(self) -> list[tuple[int, AnalyzerSpec, Path]]:
        """(cell, analyzer, JSON lines file) of every analyzer."""
        return [(c.extra["cell"], c.extra["spec"], Path(c.extra["out"])) for c in self.of_kind("analyzer")]

    def cell_backlog(self) -> int:
        """The largest number of bytes waiting in a cell's VXLAN socket receive queue."""
        from celltap.launcher.kernel_udp import udp_queued

        ports = {c.extra["vxlan"] for c in self.of_kind("cell")}
        return max(udp_queued(ports).values(), default=0)

    def node_http(self) -> list[str]:
        """host:port of every node's HTTP query API."""
        return [c.extra["http"] for c in self.of_kind("node")]

    # -- start ---------------------------------------------------------------------------------

    def _write(self, name: str, data: dict[str, Any]) -> Path:
        path = self.conf_dir / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self, on_stage: Callable[[str], None] = lambda _s: None) -> None:
        """Start every component and wait until each is ready (raises ChildFailed / TimeoutError)."""
        if self.registry_url.startswith("file://"):
            Path(self.registry_url[len("file://") :]).mkdir(parents=True, exist_ok=True)
        on_stage(f"{self.spec.nodes} analysis node(s)")
        self._start_nodes()
        on_stage(f"{self.spec.collectors} collector(s)")
        self._start_collectors()
        on_stage(f"{self.spec.cells} cell(s) with {len(self.spec.analyzers)} analyzer(s) each")
        self._start_cells()
        self._start_analyzers()
        self._register_cells()
        on_stage("incubator")
        self._start_incubator()
        self.write_endpoints()

    def _start_nodes(self) -> None:
        s = self.spec
        for j in range(s.nodes):
            name = f"node-{j}"
            http = f"127.0.0.1:{free_port()}"
            cfg = {
                "id": name,
                "listen": f"127.0.0.1:{free_port()}",
                "http": http,
                "registry": self.registry_url,
                "cluster": s.cluster,
                "lease_ttl": s.lease_ttl,
            }
            if s.apps:
                cfg["apps"] = s.apps
            path = self._write(f"{name}.yaml", cfg)
            child = self.sup.start(name, [*CELLTAP, "node", "--config", str(path)])
            self.components.append(Component("node", name, child, f"http://{http}/metrics", {"http": http}))
        for c in self.of_kind("node"):
            seen: dict[str, Any] = {}

            def sees_all(c: Component = c, seen: dict[str, Any] = seen) -> bool:
                seen["members"] = _http_json(f"http://{c.extra['http']}/status")["members"]
                return len(seen["members"]) == s.nodes

            try:
                wait_until(sees_all, 60, f"{c.name} to see all {s.nodes} nodes", self.check)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; its last view: {seen.get('members', 'never answered')}") from None

    def _start_collectors(self) -> None:
        s = self.spec
        for k in range(s.collectors):
            name = f"collector-{k}"
            port, mport = free_udp_port(), free_port()
            cfg = {
                "collector_id": name,
                "listen": [f"udp://127.0.0.1:{port}"],
                "workers": 1,
                "registry": self.registry_url,
                "cluster": s.cluster,
                "metrics_port": mport,
                "metrics_addr": "127.0.0.1",
                # A journal beside the config: a restarted collector re-delivers what it had routed.
                "routing": {"journal": str(self.conf_dir / "journal"), **s.routing},
                # Sequence numbers and templates beside it: a restart counts what it missed.
                "state_dir": str(self.conf_dir / f"{name}-state"),
            }
            path = self._write(f"{name}.yaml", cfg)
            # A registry in its config makes the collector route to the analysis nodes.
            child = self.sup.start(
                name, [sys.executable, "-m", "celltap.cli", "collector", "--config", str(path)]
            )
            self.components.append(
                Component("collector", name, child, f"http://127.0.0.1:{mport}/metrics", {"ipfix": port})
            )
        for c in self.of_kind("collector"):
            wait_until(
                lambda c=c: scrape(c.metrics).total("celltap_collector_cluster_ring_members") == s.nodes,
                60,
                f"{c.name} to see all {s.nodes} nodes in its ring",
                self.check,
            )

    def _start_cells(self) -> None:
        s = self.spec
        collectors = self.of_kind("collector")
        for i in range(s.cells):
            name = f"cell-{i}"
            home = self.run_dir / f"c{i}"
            vxlan, mport = free_udp_port(), free_port()
            argv = [
                *CELLTAP,
                "cell",
                "--config",
                str(s.sftap),
                "--input",
                f"vxlan://127.0.0.1:{vxlan}",
                "--cell-id",
                str(i),
                "--metrics-port",
                str(mport),
                "--home",
                str(home),
                "--registry",
                self.registry_url,
                "--cluster",
                s.cluster,
                "--lease-ttl",
                str(s.lease_ttl),
            ]
            if collectors:
                argv += ["--ipfix", f"udp://127.0.0.1:{collectors[i % len(collectors)].extra['ipfix']}"]
            if s.analyzers:
                argv += [
                    "--wait-readers",
                    ",".join(sorted({a.socket for a in s.analyzers})),
                    "--wait-timeout",
                    "120",
                ]
            if s.reader_buffer:
                argv += ["--reader-buffer", str(s.reader_buffer)]
            if s.store is not None:
                argv += self._store_args(i)
            child = self.sup.start(name, argv)
            self.components.append(
                Component(
                    "cell",
                    name,
                    child,
                    f"http://127.0.0.1:{mport}/metrics",
                    {"cell": i, "home": str(home), "vxlan": vxlan},
                )
            )
        for c in self.of_kind("cell"):
            home = Path(c.extra["home"])
            wait_until(
                lambda home=home: all((home / a.socket).exists() for a in s.analyzers),
                60,
                f"{c.name}'s interface sockets under {home}",
                self.check,
            )
            wait_until(lambda c=c: scrape(c.metrics) is not None, 60, f"{c.name}'s /metrics", self.check)

    def _store_args(self, i: int) -> list[str]:
        """A cell's packet store: its directory under the run, a local endpoint, the run's token."""
        token = self.run_dir / "store-token"
        if not token.exists():
            fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(os.urandom(16).hex() + "\n")
        argv = ["--store", str(self.run_dir / f"store-{i}"), "--store-listen", f"127.0.0.1:{free_port()}",
                "--store-token-file", str(token)]  # fmt: skip
        for key, value in sorted((self.spec.store or {}).items()):
            argv += [f"--store-{key.replace('_', '-')}", str(value)]
        return argv

    def _start_analyzers(self) -> None:
        for cell in self.of_kind("cell"):
            i = cell.extra["cell"]
            for a in self.spec.analyzers:
                name = f"cell-{i}-{a.label}"
                out = self.out_dir / f"{name}.jsonl"
                mport = free_port()
                argv = [
                    *CELLTAP,
                    "analyzer",
                    a.analyzer,
                    "--socket",
                    str(Path(cell.extra["home"]) / a.socket),
                    "--out",
                    str(out),
                    "--metrics-port",
                    str(mport),
                ]
                if self.exit_on_eof:
                    argv.append("--exit-on-eof")
                child = self.sup.start(name, argv)
                self.components.append(
                    Component(
                        "analyzer",
                        name,
                        child,
                        f"http://127.0.0.1:{mport}/metrics",
                        {"cell": i, "spec": a, "out": str(out)},
                    )
                )

    def _register_cells(self) -> None:
        """Wait until every cell registered itself (after its readers connected)."""
        from celltap.registry import kind_prefix, open_registry

        prefix = kind_prefix(self.spec.cluster, "cells")
        want = {str(c.extra["cell"]) for c in self.of_kind("cell")}
        with open_registry(self.registry_url) as reg:
            wait_until(
                lambda: want <= {k[len(prefix) :] for k in reg.get_prefix(prefix)},
                60,
                "every cell to register itself",
                self.check,
            )

    def _start_incubator(self) -> None:
        s = self.spec
        if s.fed:
            self.fifo = self.run_dir / "feed.pcap"
            if not self.fifo.exists():
                os.mkfifo(self.fifo, 0o600)
            capture = f"pcap:{self.fifo}"
        else:
            capture = s.capture
        mport = free_port()
        cfg = {
            "mode": "mirror",
            "capture": capture,
            "hash_seed": s.hash_seed,
            "metrics_port": mport,
            "registry": {"url": self.registry_url, "cluster": s.cluster, "id": "incubator-0"},
        }
        path = self._write("incubator.yaml", cfg)
        child = self.sup.start("incubator", [*CELLTAP, "incubator", "--config", str(path)])
        comp = Component("incubator", "incubator", child, f"http://127.0.0.1:{mport}/metrics")
        self.components.append(comp)
        wait_until(lambda: scrape(comp.metrics) is not None, 60, "the incubator's /metrics", self.check)

    # -- files for operators and Prometheus -----------------------------------------------------

    def prometheus_targets(self) -> list[dict[str, Any]]:
        """Prometheus file_sd target groups, one per component (label `component` = its kind)."""
        return [
            {"targets": [c.metrics.split("/")[2]], "labels": {"component": c.kind, "member": c.name}}
            for c in self.components
            if c.metrics
        ]

    def write_endpoints(self) -> Path:
        """Write endpoints.json (every process, pid, log, metrics URL) and prometheus-targets.json."""
        data = {
            "registry": self.registry_url,
            "cluster": self.spec.cluster,
            "run_dir": str(self.run_dir),
            "feed": str(self.fifo) if self.fifo else None,
            "components": [
                {
                    "kind": c.kind,
                    "name": c.name,
                    "pid": c.child.pid,
                    "log": str(c.child.log_path),
                    "metrics": c.metrics,
                    **{k: (str(v) if isinstance(v, AnalyzerSpec) else v) for k, v in c.extra.items()},
                }
                for c in self.components
            ],
        }
        (self.run_dir / "prometheus-targets.json").write_text(json.dumps(self.prometheus_targets(), indent=1))
        path = self.run_dir / "endpoints.json"
        path.write_text(json.dumps(data, indent=1))
        return path

    # -- stop ----------------------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> dict[str, int | None]:
        """Stop everything still running and withdraw the cells' registrations."""
        statuses = self.sup.stop_all(grace)
        return statuses


__all__ = ["ChildFailed", "Component", "LocalCluster", "wait_until"]
