"""What each plane saw, from the analyzers' JSON files and the final counters, and its text form."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celltap.launcher.finish import FinalCounts, drop_counters
from celltap.launcher.spec import AnalyzerSpec


def read_records(path: Path) -> list[dict[str, Any]]:
    """JSON lines of one analyzer output file (a torn last line is ignored)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def http_hosts(records: Iterable[dict[str, Any]]) -> set[str]:
    """Host headers of HTTP requests (http.log's `host`; weird records left out)."""
    return {h for r in records if not r.get("_log") and (h := r.get("host"))}


def dns_names(records: Iterable[dict[str, Any]]) -> set[str]:
    """Query names of dns.log records (weird records left out)."""
    names = set()
    for r in records:
        if not r.get("_log") and r.get("query"):
            names.add(r["query"])
            names.update(q["query"] for q in r.get("extra_questions", ()))
    return names


def tls_server_names(records: Iterable[dict[str, Any]]) -> set[str]:
    """SNI of TLS ClientHellos (ssl.log's `server_name`; x509 and weird records left out)."""
    return {s for r in records if not r.get("_log") and (s := r.get("server_name"))}


@dataclass
class Summary:
    """The demo's result, as printed and as JSON."""

    run_dir: str
    frames_fed: int
    seconds: float
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    analyzer_records: dict[str, int] = field(default_factory=dict)
    http_hosts: list[str] = field(default_factory=list)
    dns_names: list[str] = field(default_factory=list)
    tls_server_names: list[str] = field(default_factory=list)
    smtp_messages: int = 0
    sip_calls: int = 0
    ipfix_records: int = 0
    top_talkers: list[dict[str, Any]] = field(default_factory=list)
    app_mix: list[dict[str, Any]] = field(default_factory=list)
    drops: list[list[Any]] = field(default_factory=list)
    incubator: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    logs: str = ""

    def to_json(self) -> str:
        """The summary as one JSON document."""
        return json.dumps(self.__dict__, indent=1, sort_keys=True)


def build_summary(
    run_dir: Path,
    outputs: list[tuple[int, AnalyzerSpec, Path]],
    fc: FinalCounts,
    frames_fed: int,
    seconds: float,
) -> Summary:
    """Combine the analyzers' files with every plane's final counters."""
    s = Summary(str(run_dir), frames_fed, round(seconds, 1), logs=str(run_dir / "logs"))
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _cell, spec, path in outputs:
        recs = read_records(path)
        by_kind.setdefault(spec.analyzer, []).extend(recs)
        s.analyzer_records[path.name] = len(recs)
        s.outputs[path.name] = str(path)
    s.http_hosts = sorted(http_hosts(by_kind.get("http", [])))
    s.dns_names = sorted(dns_names(by_kind.get("dns", [])))
    s.tls_server_names = sorted(tls_server_names(by_kind.get("tls", [])))
    # smtp.log: one record per transaction; a message was sent when it has a size (DATA or BDAT)
    s.smtp_messages = sum(1 for r in by_kind.get("smtp", []) if not r.get("_log") and "msg_size" in r)
    s.sip_calls = sum(
        1
        for r in by_kind.get("sip", [])
        if r.get("method") == "INVITE" and 200 <= r.get("status_code", 0) < 300
    )
    for cell, m in sorted(fc.cells.items()):
        rules = {k[0]: int(v) for k, v in m.by("celltap_cell_classified_flows_total", "rule").items()}
        s.cells[str(cell)] = {
            "packets": int(m.total("celltap_cell_packets_total")),
            "bytes": int(m.total("celltap_cell_bytes_total")),
            "flows": int(m.total("celltap_cell_flows_created_total")),
            "classified": rules,
        }
    s.ipfix_records = int(sum(c.total("celltap_collector_records_total") for c in fc.collectors.values()))
    s.top_talkers = list((fc.queries.get("top_talkers") or {}).get("top", []))
    s.app_mix = list((fc.queries.get("app_mix") or {}).get("top", []))
    s.drops = [list(r) for r in drop_counters(fc)]
    s.incubator = fc.incubator
    return s


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def render(s: Summary) -> str:
    """The compact human summary printed on stdout."""
    lines = [f"celltap demo: {s.frames_fed} frames through the cluster in {s.seconds:.1f} s", ""]
    inc = s.incubator
    if "received" in inc:
        lines.append(f"incubator   received {inc['received']} frames, forwarded {inc['forwarded']} to cells")
    lines.append(
        "cells       "
        + "  ".join(
            f"cell {c}: {_human(v['packets'])} pkts {_human(v['bytes'])}B {v['flows']} flows"
            for c, v in s.cells.items()
        )
    )
    classified: Counter[str] = Counter()
    for v in s.cells.values():
        classified.update(v["classified"])
    if classified:
        lines.append("classified  " + ", ".join(f"{k} {n}" for k, n in classified.most_common()))
    lines.append(
        f"analyzers   {sum(s.analyzer_records.values())} JSON records "
        f"({s.smtp_messages} SMTP messages, {s.sip_calls} SIP calls)"
    )
    lines.append(f"HTTP hosts  ({len(s.http_hosts)}) {_listing(s.http_hosts)}")
    lines.append(f"DNS names   ({len(s.dns_names)}) {_listing(s.dns_names)}")
    lines.append(f"TLS SNI     ({len(s.tls_server_names)}) {_listing(s.tls_server_names)}")
    lines.append(f"IPFIX       {s.ipfix_records} flow records at the collector, routed to the analysis nodes")
    if s.top_talkers:
        lines.append(
            "top talkers " + ", ".join(f"{r['key']} {_human(r.get('bytes', 0))}B" for r in s.top_talkers[:5])
        )
    if s.app_mix:
        lines.append(
            "app mix     "
            + ", ".join(f"{r['key'] or '(unclassified)'} {100 * r['share']:.0f}%" for r in s.app_mix[:8])
        )
    if s.drops:
        lines.append("drops       (every non-zero drop counter; all others are 0)")
        lines += [f"  {comp:<24} {metric} = {v:.0f}" for comp, metric, v in s.drops]
    else:
        lines.append("drops       none: every drop counter of every plane is 0")
    lines += ["", f"JSON outputs: {s.run_dir}/out/   logs: {s.logs}/   summary: {s.run_dir}/summary.json"]
    return "\n".join(lines)
