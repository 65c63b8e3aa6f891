"""Dashboards and alert rules against a real Prometheus scraping a running local cluster.

`celltap up` runs two cells (HTTP, TLS and UDP DNS analyzers; SMTP, SIP and TCP DNS deliberately
without a reader), a routing collector and two analysis nodes, replaying loadgen's `mixed` scenario
in a loop with a few truncated IPv4 frames and one malformed HTTP request appended. Prometheus
scrapes every process through the launcher's file_sd targets. Faults are caused for real: an
analyzer is SIGSTOPped (its cell's reader buffer fills and drops are counted; its /metrics stops
answering), malformed and template-less IPFIX and a sequence jump are sent to the collector, an
analysis node is killed.

Rules: the shipped files must pass `promtool check rules` as they are; Prometheus then loads a copy
in which every `for:` is 0s (the only change, so the expressions tested are the shipped ones), and
each alert whose condition the test caused must reach `firing` through /api/v1/alerts.

Dashboards: every target expression of every panel is evaluated through /api/v1/query (Grafana's
`$__rate_interval` replaced by 30s) and must return data. A counter with labels exists only from
its first event; the few such drop counters this test does not cause are listed in
EVENT_ONLY_COUNTERS, their expressions are allowed to be empty, and each name must be declared in
the component's source, so a misspelt metric still fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from celltap.launcher.ports import free_port
from tests.conftest import require_tool
from tests.system.cluster_proc import CELLTAP, ROOT, UpCluster
from tests.system.faults import append_faults, send_bad_ipfix
from tests.system.promserver import Prometheus

DASHBOARDS = sorted((ROOT / "helm/celltap/files/dashboards").glob("*.json"))
RULE_FILES = sorted((ROOT / "helm/celltap/files/alerts").glob("*.yaml"))
SOURCES = [ROOT / d for d in ("cell", "collector", "incubator", "celltap")]

# Labelled counters that appear only at their first event and that this test does not cause.
EVENT_ONLY_COUNTERS = {
    "celltap_incubator_output_errors_total",
    "celltap_cell_dropped_packets_total",
    "celltap_cell_input_dropped_frames_total",
    "celltap_cell_defrag_dropped_fragments_total",
    "celltap_analyzer_dropped_events_total",
    "celltap_collector_sequence_reordered_total",
    "celltap_node_duplicate_records_total",
}

COMPONENTS = {"incubator", "cell", "analyzer", "collector", "node", "registry", "loadgen"}

# Alerts whose condition the test causes, and what causes it.
MUST_FIRE = {
    "CelltapCellReaderDropping": "SIGSTOPped HTTP analyzer: the cell's reader buffer overflows",
    "CelltapTargetDown": "the SIGSTOPped analyzer's /metrics does not answer",
    "CelltapCellInterfaceWithoutReader": "SMTP/SIP traffic classified with no analyzer attached",
    "CelltapIncubatorDroppingFrames": "truncated IPv4 frames in the replayed capture",
    "CelltapCollectorDroppingMessages": "a datagram that is not IPFIX",
    "CelltapCollectorTemplateProblems": "a data set for a template never sent",
    "CelltapCollectorSequenceLoss": "a sequence number jumping by 49 records",
    "CelltapNodeLost": "SIGKILL of an analysis node",
}




def panel_targets() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every panel target."""
    out = []
    for f in DASHBOARDS:
        d = json.loads(f.read_text())
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((f.name, p["title"], t["expr"]))
    return out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bcelltap_[a-z0-9_]+", expr))


def declared_in_source(name: str) -> bool:
    """The metric is declared by some component (CounterMetricFamily names omit `_total`)."""
    base = name.removesuffix("_total")
    for d in SOURCES:
        for f in d.rglob("*.py"):
            text = f.read_text(errors="replace")
            if f'"{name}"' in text or f'"{base}"' in text or f'"{base.split("_", 2)[2]}_total"' in text:
                return True
    return False


def rules_for_test(dst: Path) -> list[Path]:
    """Copies of the rule files with every `for:` set to 0s (nothing else changed)."""
    out = []
    for f in RULE_FILES:
        doc = yaml.safe_load(f.read_text())
        for g in doc["groups"]:
            for r in g["rules"]:
                if "for" in r:
                    r["for"] = "0s"
        p = dst / f.name
        p.write_text(yaml.safe_dump(doc))
        out.append(p)
    return out


def test_promtool_accepts_shipped_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    assert RULE_FILES
    for f in [*RULE_FILES, *rules_for_test(tmp_path)]:
        p = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
    names = {
        r.get("alert")
        for f in RULE_FILES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
    }
    assert set(MUST_FIRE) <= names


@pytest.mark.timeout(240)
def test_dashboards_and_alerts_on_a_running_cluster(tmp_path: Path) -> None:
    prom_bin = require_tool("prometheus")
    require_tool("promtool")
    run = Path(tempfile.mkdtemp(prefix="ctp-", dir="/tmp"))  # short: UNIX socket paths
    base = tmp_path / "mixed.pcap"
    subprocess.run(
        [*CELLTAP, "loadgen", "pcap", "mixed", str(base), "--count", "200", "--seed", "3"],
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    pcap = tmp_path / "traffic.pcap"
    append_faults(base, pcap, 5)
    config = {
        "cluster": "promtest",
        "registry": "file://{run}/registry",
        "lease_ttl": 2,
        "capture": f"pcap:{pcap}",
        "replay": {"loops": 0, "pps": 3000},
        "cells": {
            "count": 2,
            "reader_buffer": 65536,
            "store": {"file_bytes": 1048576, "max_bytes": 8388608},  # the packet store row's metrics
            "analyzers": [
                {"analyzer": "http", "socket": "tcp/http"},
                {"analyzer": "tls", "socket": "tcp/tls"},
                {"analyzer": "dns", "socket": "udp/dns"},
            ],
        },
        "collector": {"count": 1, "routing": {"flush_interval": 0.2}},
        "nodes": {"count": 2},
    }
    cluster = UpCluster(config, run)
    prom = None
    stopped_pid = None
    try:
        ep = cluster.wait_running()
        prom = Prometheus(
            prom_bin, tmp_path, run / "prometheus-targets.json", rules_for_test(tmp_path), free_port()
        )
        n_targets = len(json.loads((run / "prometheus-targets.json").read_text()))

        def all_up() -> bool:
            act = prom.api("targets")["activeTargets"]
            return len(act) == n_targets and all(t["health"] == "up" for t in act)

        prom.wait(all_up, 60, f"all {n_targets} targets up")
        # Some traffic through every plane, and one cluster-wide query (celltap_node_queries_total).
        prom.wait(
            lambda: prom.query("sum(celltap_node_records_received_total) > 0"), 60, "records at the nodes"
        )
        node = next(c for c in ep["components"] if c["kind"] == "node")
        urllib_get(f"http://{node['http']}/query/top_talkers?n=3")

        # Faults.
        collector = next(c for c in ep["components"] if c["kind"] == "collector")
        send_bad_ipfix(collector["ipfix"])
        prom.wait(
            lambda: (
                prom.query("celltap_collector_dropped_messages_total > 0")
                and prom.query("celltap_collector_sequence_lost_total")
                and prom.query("celltap_collector_dropped_sets_total > 0")
            ),
            30,
            "the first round of bad IPFIX in Prometheus",
        )
        send_bad_ipfix(collector["ipfix"], seq0=1000)
        analyzer = cluster.component("cell-0-http-tcp-http")
        stopped_pid = analyzer["pid"]
        os.kill(stopped_pid, signal.SIGSTOP)
        prom.wait(
            lambda: prom.query('sum(celltap_cell_interface_dropped_events_total{reason!="no_reader"}) > 0'),
            60,
            "reader drops after stopping the HTTP analyzer",
        )
        victim = cluster.component("node-1")
        os.kill(victim["pid"], signal.SIGKILL)

        firing: dict[str, dict] = {}

        def all_fired() -> bool:
            for a in prom.api("alerts")["alerts"]:
                if a["state"] == "firing":
                    firing.setdefault(a["labels"]["alertname"], a["labels"])
            return set(MUST_FIRE) <= set(firing)

        try:
            prom.wait(all_fired, 60, "every caused alert to fire")
        except AssertionError:
            missing = {k: v for k, v in MUST_FIRE.items() if k not in firing}
            raise AssertionError(f"alerts not firing: {missing}; firing: {sorted(firing)}") from None
        assert firing["CelltapCellReaderDropping"]["interface"] == "tcp/http"
        assert firing["CelltapCellReaderDropping"]["cell"] == "0"

        # Every panel target returns data (the node's death is in the data too; it was up before).
        empty, undeclared = [], []
        for dash, title, expr in panel_targets():
            result = prom.query(expr.replace("$__rate_interval", "30s"))
            if result:
                continue
            names = metric_names(expr)
            if names and names <= EVENT_ONLY_COUNTERS:
                undeclared += [n for n in names if not declared_in_source(n)]
            else:
                empty.append(f"{dash} / {title}: {expr}")
        assert not empty, "panel queries without data:\n" + "\n".join(empty)
        assert not undeclared, f"metrics no component declares: {undeclared}"
        scraped = set(prom.api("label/__name__/values"))
        # DESIGN.md's names: celltap_<component>_<what>_<unit>, `_total` on every counter.
        meta = prom.api("metadata")
        ours = sorted(n for n in scraped if n.startswith("celltap_"))
        assert {n.split("_")[1] for n in ours} <= COMPONENTS, ours
        # Families as Prometheus saw them (OpenMetrics names a counter family without `_total`).
        kinds = {f: ms[0]["type"] for f, ms in meta.items() if f.startswith("celltap_")}
        counters = [f.removesuffix("_total") for f, t in kinds.items() if t == "counter"]
        assert counters and any(f"{c}_total" in scraped for c in counters)
        assert not [c for c in counters if c in scraped], "counter samples without _total"
        gauges = [f for f, t in kinds.items() if t == "gauge"]
        assert not [g for g in gauges if g.endswith("_total")], gauges
        for dash, title, expr in panel_targets():
            for n in metric_names(expr) - scraped - EVENT_ONLY_COUNTERS:
                pytest.fail(f"{dash} / {title} uses {n}, which Prometheus never scraped")
    finally:
        if stopped_pid is not None:
            try:
                os.kill(stopped_pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        if prom is not None:
            prom.stop()
        rc = cluster.stop()
        pids = [
            c["pid"] for c in (cluster.endpoints()["components"] if (run / "endpoints.json").exists() else [])
        ]
    assert rc == 0, cluster.tail()
    time.sleep(0.5)
    from tests.system.cluster_proc import pids_alive

    assert not pids_alive(pids), f"processes left behind: {pids_alive(pids)}"
    shutil.rmtree(run)


def urllib_get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=20) as resp:
        return resp.read()
