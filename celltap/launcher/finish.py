"""The end of a finite run: let every plane drain in order, and collect each one's final counters.

Order matters: the incubator ends at the end of its input; the cells then get every frame already
sent (their packet counters stop moving), are stopped with SIGTERM so they end all flows, export
the last IPFIX records and give analyzers their last events; analyzers started with
`--exit-on-eof` then exit on their own; the collectors have routed everything once they hold
nothing unacknowledged; then the nodes answer the cluster-wide queries.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from celltap.launcher.cluster import LocalCluster, _http_json
from celltap.launcher.kernel_udp import udp_drops
from celltap.launcher.scrape import Samples

log = logging.getLogger("celltap.launcher")

INCUBATOR_DONE = re.compile(r"incubator done: received (\d+) forwarded (\d+) dropped (\{.*?\})")
DROP_WORDS = ("drop", "lost", "error", "unrouted", "rejected", "gap")


@dataclass
class FinalCounts:
    """What each plane counted, at the end of a run."""

    incubator: dict[str, Any] = field(default_factory=dict)
    cells: dict[int, Samples] = field(default_factory=dict)
    analyzers: dict[str, Samples] = field(default_factory=dict)
    collectors: dict[str, Samples] = field(default_factory=dict)
    nodes: dict[str, Samples] = field(default_factory=dict)
    kernel_udp_drops: dict[str, int] = field(default_factory=dict)
    queries: dict[str, Any] = field(default_factory=dict)
    statuses: dict[str, int | None] = field(default_factory=dict)


def _incubator_totals(cluster: LocalCluster, last: Samples | None) -> dict[str, Any]:
    inc = cluster.of_kind("incubator")[0]
    text = inc.child.log_path.read_text(errors="replace")
    m = INCUBATOR_DONE.search(text)
    out: dict[str, Any] = {"exit_status": inc.child.returncode()}
    if m:
        out["received"], out["forwarded"] = int(m.group(1)), int(m.group(2))
        dropped = json.loads(m.group(3).replace("'", '"')) if m.group(3) != "{}" else {}
        out["dropped"] = {str(k): int(v) for k, v in dropped.items()}
    if last is not None:
        out["out_frames"] = {
            k[0]: int(v) for k, v in last.by("celltap_incubator_out_frames_total", "cell").items()
        }
    return out


def _wait_stable(read: Any, timeout: float, settle: float = 1.0) -> Any:
    """Poll `read()` until its value stays the same for `settle` seconds (or `timeout`)."""
    deadline = time.monotonic() + timeout
    last = read()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            break
    return last


def finish_run(
    cluster: LocalCluster, fed_frames: int, incubator_last: Samples | None, timeout: float = 60.0
) -> FinalCounts:
    """Drain every plane in order and return the final counters (stops every process)."""
    fc = FinalCounts()
    inc = cluster.of_kind("incubator")[0]
    inc.child.expected_exit = True
    if inc.child.wait(timeout) is None:
        log.warning("the incubator did not end at the end of its input; stopping it")
        cluster.sup.stop([inc.child])
    fc.incubator = _incubator_totals(cluster, incubator_last)
    forwarded = int(fc.incubator.get("forwarded", fed_frames))

    cells = cluster.of_kind("cell")
    ports = {c.extra["vxlan"]: c.extra["cell"] for c in cells}

    def cell_progress() -> tuple[int, int]:
        got = sum(int(s.total("celltap_cell_packets_total")) for s in cluster.scrape_kind("cell").values())
        lost = sum(udp_drops(set(ports)).values())
        return got, lost

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, lost = cell_progress()
        if got + lost >= forwarded:
            break
        time.sleep(0.2)
    _wait_stable(cell_progress, 5.0, settle=0.5)
    fc.kernel_udp_drops = {f"cell-{ports[p]}": n for p, n in udp_drops(set(ports)).items()}
    # Analyzers' counters before their cell stops (they exit soon after, with their interface).
    fc.analyzers = cluster.scrape_kind("analyzer")
    fc.cells = {
        c.extra["cell"]: s for c in cells for n, s in cluster.scrape_kind("cell").items() if n == c.name
    }
    fc.statuses.update(cluster.sup.stop([c.child for c in cells], grace=30.0))
    analyzers = [a.child for a in cluster.of_kind("analyzer")]
    for a in analyzers:
        a.expected_exit = True
        a.wait(max(0.5, deadline - time.monotonic()))
    fc.statuses.update(cluster.sup.stop(analyzers, grace=10.0))

    collectors = cluster.of_kind("collector")

    def routed() -> tuple[float, float]:
        s = cluster.scrape_kind("collector").values()
        return (
            sum(x.total("celltap_collector_cluster_records_in_total") for x in s),
            sum(x.total("celltap_collector_cluster_pending_records") for x in s),
        )

    if collectors:
        _wait_stable(routed, 30.0, settle=1.0)
        t_end = time.monotonic() + 30.0
        while routed()[1] > 0 and time.monotonic() < t_end:
            time.sleep(0.2)
    fc.collectors = cluster.scrape_kind("collector")
    fc.queries = query_nodes(cluster)
    fc.nodes = cluster.scrape_kind("node")
    fc.statuses.update(cluster.sup.stop([c.child for c in collectors], grace=10.0))
    fc.statuses.update(cluster.stop())
    return fc


def query_nodes(cluster: LocalCluster, n: int = 10) -> dict[str, Any]:
    """Cluster-wide answers of the analysis apps (scatter-gather through the first live node)."""
    out: dict[str, Any] = {}
    nodes = cluster.node_http()
    if not nodes:
        return out
    asks = {
        "top_talkers": {"by": "bytes", "n": n},
        "app_mix": {"by": "bytes", "n": 0},
        "by_exporter": {"by": "records", "n": 0},
    }
    for app, params in asks.items():
        if cluster.spec.apps and app not in cluster.spec.apps:
            continue
        url = f"http://{nodes[0]}/query/{app}?{urllib.parse.urlencode(params)}"
        try:
            out[app] = _http_json(url, timeout=20)
        except (OSError, ValueError) as exc:
            out[app] = {"error": str(exc)}
    return out


def drop_counters(fc: FinalCounts) -> list[tuple[str, str, float]]:
    """Every non-zero drop/loss/error counter of every plane: (component, metric{labels}, value)."""
    rows: list[tuple[str, str, float]] = []
    groups: list[tuple[str, dict[Any, Samples]]] = [
        ("cell-", {str(k): v for k, v in fc.cells.items()}),
        ("", fc.analyzers),
        ("", fc.collectors),
        ("", fc.nodes),
    ]
    for prefix, scrapes in groups:
        for name, s in scrapes.items():
            for (metric, labels), v in sorted(s.values.items()):
                if v and metric.endswith("_total") and any(w in metric for w in DROP_WORDS):
                    shown = ",".join(
                        f"{k}={val}"
                        for k, val in labels
                        if k not in ("cell", "analyzer", "collector", "node")
                    )
                    rows.append((f"{prefix}{name}", f"{metric}{{{shown}}}" if shown else metric, v))
    for reason, v in (fc.incubator.get("dropped") or {}).items():
        if v:
            rows.append(("incubator", f"celltap_incubator_dropped_frames_total{{reason={reason}}}", float(v)))
    for name, v in fc.kernel_udp_drops.items():
        if v:
            rows.append((name, "kernel UDP receive-buffer drops (/proc/net/udp)", float(v)))
    return rows
