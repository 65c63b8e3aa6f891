"""Dashboards show 0, not "No data", on a healthy cluster: each component, scraped right after it
starts (before any traffic; loadgen while it replays without error), already exports every known
reason of its drop and error counters at 0, and no `*_created` series.

The processes are really started and scraped over HTTP: a collector and an analysis node (with
etcd), a cell (with a packet store and IPFIX export), each of the five analyzers and a balance
supervisor, a mirror, an inline and an XDP incubator, and loadgen's replay (the netns ones in a
quiet namespace of their own). The known reasons are the tuples the components declare
(collector/stats.py, cluster_metrics.py, node_metrics.py, incubator/separator.py, engine.py and
outputs.py, cell/metrics.py, the analyzer SDK's metrics.py and loopback.py, each analyzer's
`error_reasons`, celltap/registry/metrics.py, loadgen/replay.py); a scan of the source checks that
every reason the code counts under a fixed name is declared (for the analyzers, by an AST scan:
exactly the names their code counts), so the tuples cannot fall behind. Per-entity series are
checked for the entities a process starts with: each analyzer's own, each configured cell's, each
bridge side's, a configured store's.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_root, require_tool
from tests.deploy.chart import CHART, REPO
from tests.deploy.processes import CELLTAP, free_port, free_port_block, wait_for
from tests.fixtures_etcd import etcd_server  # noqa: F401  (fixture)

DASHBOARDS = sorted((CHART / "files/dashboards").glob("*.json"))


def declared() -> dict[str, tuple[str, ...]]:
    """Drop counter labelled by reason alone (besides the process's own id) -> the reasons declared."""
    from celltap.cell.metrics import (
        DEFRAG_DROP_REASONS,
        INPUT_DROP_REASONS,
        INTERFACE_DROP_REASONS,
        LOOPBACK_DROP_REASONS,
        PACKET_DROP_REASONS,
    )
    from celltap.cell.store.writer import DROP_REASONS as STORE_DROP_REASONS
    from celltap.collector.cluster_metrics import ROUTER_DROP_REASONS
    from celltap.collector.node_metrics import NODE_REJECT_REASONS
    from celltap.collector.stats import MESSAGE_DROP_REASONS, SET_DROP_REASONS
    from celltap.collector.stats import STORE_DROP_REASONS as TEMPLATE_STORE_DROP_REASONS
    from celltap.incubator.engine import ENGINE_DROP_REASONS
    from celltap.incubator.outputs import SEND_ERROR_REASONS
    from celltap.incubator.separator import DROP_REASONS

    from celltap.registry.metrics import REGISTRY_OPS

    return {
        "celltap_cell_dropped_packets_total": PACKET_DROP_REASONS,
        "celltap_cell_defrag_dropped_fragments_total": DEFRAG_DROP_REASONS,
        "celltap_cell_input_dropped_frames_total": INPUT_DROP_REASONS,
        "celltap_cell_interface_dropped_events_total": INTERFACE_DROP_REASONS,
        "celltap_cell_loopback_dropped_events_total": LOOPBACK_DROP_REASONS,
        "celltap_cell_store_dropped_frames_total": STORE_DROP_REASONS,
        "celltap_cell_store_dropped_bytes_total": STORE_DROP_REASONS,
        "celltap_incubator_dropped_frames_total": (*DROP_REASONS, *ENGINE_DROP_REASONS, *SEND_ERROR_REASONS),
        "celltap_collector_dropped_messages_total": MESSAGE_DROP_REASONS,
        "celltap_collector_dropped_sets_total": SET_DROP_REASONS,
        "celltap_collector_template_store_dropped_total": TEMPLATE_STORE_DROP_REASONS,
        "celltap_collector_cluster_dropped_records_total": ROUTER_DROP_REASONS,
        "celltap_node_rejected_records_total": NODE_REJECT_REASONS,
        "celltap_registry_errors_total": REGISTRY_OPS,  # (labelled `op`: REASON_LABEL)
    }


# The label a counter's reasons are the values of, where it is not `reason`.
REASON_LABEL = {"celltap_registry_errors_total": "op", "celltap_analyzer_events_read_total": "event"}


def analyzer_declared(name: str) -> dict[str, tuple[str, ...]]:
    """An analyzer's drop and error counters -> the reasons declared for them."""
    from celltap.cell.analyzers.registry import ANALYZERS
    from celltap.cell.sdk.loopback import LOOPBACK_DROP_REASONS
    from celltap.cell.sdk.metrics import DROPPED_EVENT_REASONS

    return {
        "celltap_analyzer_dropped_events_total": DROPPED_EVENT_REASONS,
        "celltap_analyzer_parse_errors_total": ANALYZERS[name].error_reasons,
        "celltap_analyzer_loopback_dropped_events_total": LOOPBACK_DROP_REASONS,
        "celltap_analyzer_wire_errors_total": (),  # no reason label: the analyzer's one series at 0
        # its throughput, which dashboards plot too
        "celltap_analyzer_reconnects_total": (),
        "celltap_analyzer_bytes_read_total": (),
        "celltap_analyzer_records_written_total": (),
        "celltap_analyzer_events_read_total": ("CREATED", "DATA", "DESTROYED"),  # (labelled `event`)
    }


def per_cell_declared() -> dict[str, tuple[str, ...]]:
    """The incubator's per-cell counters -> the reasons declared (output errors) or () (one series)."""
    from celltap.incubator.engine import OUTPUT_ERROR_REASONS

    return {
        "celltap_incubator_output_errors_total": OUTPUT_ERROR_REASONS,
        "celltap_incubator_out_frames_total": (),
        "celltap_incubator_out_bytes_total": (),
    }


# Drop counters the dashboards plot whose series are per entity, checked below for the entities the
# process starts with: the analyzers' (per analyzer), the incubator's output errors (per configured
# cell) and the cell's IPFIX send errors (no reason label; with IPFIX export on).
PER_ENTITY = {
    "celltap_analyzer_dropped_events_total",
    "celltap_analyzer_parse_errors_total",
    "celltap_incubator_output_errors_total",
    "celltap_cell_ipfix_send_errors_total",
}


def dashboard_drop_counters() -> set[str]:
    """Every counter of drops, rejections and errors that a dashboard expression reads."""
    names: set[str] = set()
    for f in DASHBOARDS:
        for expr in re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', f.read_text()):
            names |= set(re.findall(r"celltap_\w+_total", expr))
    return {n for n in names if re.search(r"dropped|rejected|errors", n)}


def test_every_dashboard_drop_counter_is_checked_at_start() -> None:
    counters = dashboard_drop_counters()
    assert counters, "no drop counter found in the dashboards: the pattern is stale"
    assert counters <= set(declared()) | PER_ENTITY, counters - set(declared()) - PER_ENTITY
    assert PER_ENTITY <= counters  # (the list is not stale)


def literals(path: Path, pattern: str) -> set[str]:
    """The first group of every match of a pattern in a source file."""
    return set(re.findall(pattern, path.read_text()))


def constants(path: Path) -> dict[str, str]:
    """NAME = "value" module constants of a source file."""
    return dict(re.findall(r'^([A-Z_]+) = "(\w+)"', path.read_text(), flags=re.MULTILINE))


def test_reasons_the_code_counts_are_declared() -> None:
    from celltap.decode.reasons import Reason

    d = declared()
    col = REPO / "collector"
    s = constants(col / "stats.py")
    messages = literals(col / "ingest.py", r"_drop_message\(\s*S\.(\w+)")
    messages |= literals(col / "tcp_server.py", r"dropped_messages\[(\w+)\]")
    messages |= literals(col / "udp_server.py", r"dropped_messages\[(\w+)\]")
    assert {s[n] for n in messages} <= set(d["celltap_collector_dropped_messages_total"])
    sets = literals(col / "ingest.py", r"_drop_set\(\s*S\.(\w+)") | literals(
        col / "ingest.py", r"dropped_sets\[S\.(\w+)\]"
    )
    assert {s[n] for n in sets} <= set(d["celltap_collector_dropped_sets_total"])
    router = literals(col / "cluster.py", r'dropped\.labels\(self\.cid, "(\w+)"\)')
    router |= literals(col / "cluster.py", r'reason = "(\w+)"')
    assert router and router <= set(d["celltap_collector_cluster_dropped_records_total"])
    node = literals(col / "node_state.py", r'rejected\.labels\(self\.node_id, "(\w+)"\)')
    assert node and node <= set(d["celltap_node_rejected_records_total"])
    inc = REPO / "incubator"
    names = {**constants(inc / "separator.py"), **constants(inc / "fragments.py")}
    fixed = literals(inc / "engine.py", r'_drop\("(\w+)"') | literals(
        inc / "engine.py", r'return 0, \{"(\w+)"'
    )
    fixed |= literals(inc / "live.py", r'dropped_frames\.labels\("(\w+)"\)')
    fixed |= {names[n] for n in literals(inc / "separator.py", r"_add\(r\.drops, ([A-Z_]+),")}
    fixed |= {names[n] for n in literals(inc / "fragments.py", r"drops\[([A-Z_]+)\]")}
    fixed |= {names[n] for n in literals(inc / "fragments.py", r"_drop_waiting\(key, ([A-Z_]+)")}
    decode = {r.label for r in Reason} - {Reason.OK.label, Reason.NON_IP.label}
    assert fixed | decode <= set(d["celltap_incubator_dropped_frames_total"])
    cell = REPO / "cell"
    packets = set().union(*(literals(f, r'(?<![a-z])_drop\((?:stats, )?"(\w+)"') for f in cell.glob("*.py")))
    packets |= set().union(*(literals(f, r'count_drop\("(\w+)"') for f in cell.glob("*.py")))
    # (the defragmenter and the L7 loopback parser count into their own counters)
    packets -= literals(cell / "defrag.py", r'_drop\("(\w+)"') | literals(
        cell / "loopback_input.py", r'_drop\("(\w+)"'
    )
    assert packets and packets <= set(d["celltap_cell_dropped_packets_total"]), packets
    defrag = literals(cell / "defrag.py", r'_drop\("(\w+)"') | literals(
        cell / "defrag.py", r'_discard\(.*, "(\w+)"\)'
    )
    assert defrag <= set(d["celltap_cell_defrag_dropped_fragments_total"]), defrag
    served = literals(cell / "interfaces.py", r'_count_drop\([^,]+, "(\w+)"') | literals(
        cell / "interfaces.py", r'"(reader_\w+)"'
    )
    assert served and served <= set(d["celltap_cell_interface_dropped_events_total"]), served
    inputs = literals(cell / "inputs.py", r'drops\["(\w+)"\]')
    assert inputs <= set(d["celltap_cell_input_dropped_frames_total"]), inputs
    loopback = literals(cell / "abstractor.py", r'count_loopback_drop\("(\w+)"')
    loopback |= literals(cell / "loopback_input.py", r'(?:_drop|BadEvent)\("(\w+)"')
    assert loopback and loopback == set(d["celltap_cell_loopback_dropped_events_total"]), loopback
    store = literals(cell / "store/writer.py", r'_count_drop\("(\w+)"')
    assert store and store <= set(d["celltap_cell_store_dropped_frames_total"]), store
    registry = set().union(
        *(
            literals(f, r'(?:_call|_guard|failed)\(\s*"(\w+)"|op="(\w+)"')
            for f in (REPO / "celltap/registry").glob("*.py")
        )
    )
    registry = {g for pair in registry for g in (pair if isinstance(pair, tuple) else (pair,)) if g}
    assert len(registry) >= 10 and registry <= set(d["celltap_registry_errors_total"]), registry
    templates = literals(col / "template_store.py", r'drops\["(\w+)"\]')
    assert templates and templates == set(d["celltap_collector_template_store_dropped_total"]), templates


# Calls whose argument names a parse error: the analyzers' weird/error helpers (the first string
# argument; a later one is the weird's `addl`), their parsers' exceptions, and `getattr(exc, "reason",
# DEFAULT)`.
REASON_CALLS = {"weird", "_weird", "error", "_fail", "_lost"}
REASON_EXCEPTIONS = {"DnsError", "NameProblem", "RecordError", "TlsError", "SipError"}
NOT_COUNTED = {"keepalive"}  # a SipError the SIP analyzer skips (CRLF keep-alives, RFC 5626)


def reason_values(node: ast.expr) -> set[str]:
    """The reason names an expression can evaluate to: string constants, both arms of a conditional,
    and an f-string as a regular expression (`{x}` matches any name part)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {re.escape(node.value)}
    if isinstance(node, ast.IfExp):
        return reason_values(node.body) | reason_values(node.orelse)
    if isinstance(node, ast.JoinedStr):
        parts = [re.escape(v.value) if isinstance(v, ast.Constant) else r"\w+" for v in node.values]
        return {"".join(parts)}
    return set()


def counted_reasons(path: Path) -> set[str]:
    """Patterns of every parse-error name a module counts under a fixed name (see REASON_CALLS)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            owner = func.value if isinstance(func, ast.Attribute) else None
            if name in REASON_CALLS and not (isinstance(owner, ast.Name) and owner.id == "log"):
                for arg in node.args:
                    values = reason_values(arg) if not isinstance(arg, ast.JoinedStr) else set()
                    if values:
                        found |= values
                        break
            elif name in REASON_EXCEPTIONS and node.args:
                found |= reason_values(node.args[0])
            elif name == "getattr" and len(node.args) == 3 and reason_values(node.args[1]) == {"reason"}:
                found |= reason_values(node.args[2])
            elif name == "append" and owner is not None and re.search(r"weird|problem", ast.unparse(owner)):
                found |= reason_values(node.args[0])
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "problem" for t in node.targets
        ):
            found |= reason_values(node.value)
        elif isinstance(node, ast.FunctionDef) and node.name == "parse_request_line":
            for ret in ast.walk(node):  # (method, target, version, weird name)
                if (
                    isinstance(ret, ast.Return)
                    and isinstance(ret.value, ast.Tuple)
                    and len(ret.value.elts) == 4
                ):
                    found |= reason_values(ret.value.elts[3])
    return found - {re.escape(n) for n in NOT_COUNTED}


@pytest.mark.parametrize("name", ["http", "dns", "tls", "smtp", "sip"])
def test_each_analyzer_declares_exactly_the_parse_errors_its_code_counts(name: str) -> None:
    reasons = set(analyzer_declared(name)["celltap_analyzer_parse_errors_total"])
    modules = sorted((REPO / "cell/analyzers").glob(f"{name}_*.py"))
    patterns = set().union(*(counted_reasons(m) for m in modules))
    assert len(patterns) >= 10, patterns  # the scan still finds the helpers
    unmatched = {p for p in patterns if not any(re.fullmatch(p, r) for r in reasons)}
    assert not unmatched, f"{name}: counted but not declared: {sorted(unmatched)}"
    unused = {r for r in reasons if not any(re.fullmatch(p, r) for p in patterns)}
    assert not unused, f"{name}: declared but never counted: {sorted(unused)}"


def test_the_sdk_declares_the_events_it_drops() -> None:
    sdk = REPO / "cell/sdk"
    dropped = set().union(*(literals(f, r'dropped\["(\w+)"\]') for f in sdk.glob("*.py")))
    dropped |= literals(sdk / "text_format.py", r'reason = "(\w+)"')
    dropped |= literals(sdk / "text_format.py", r'else "(\w+)"')
    assert dropped == set(analyzer_declared("http")["celltap_analyzer_dropped_events_total"])
    loopback = literals(sdk / "loopback.py", r'LOOPBACK_DROPPED\.labels\(self\.analyzer, "(\w+)"\)')
    assert loopback == set(analyzer_declared("http")["celltap_analyzer_loopback_dropped_events_total"])


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value} of a /metrics page."""
    with urllib.request.urlopen(url, timeout=3) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


Page = dict[str, dict[tuple[tuple[str, str], ...], float]]


def check_page(page: Page, counters: list[str] | dict[str, tuple[str, ...]], **where: str) -> None:
    """No *_created series; each counter's declared reasons present at 0 (among the series whose labels
    include `where`; a counter declared without reasons: its one series at 0)."""
    assert [n for n in page if n.endswith("_created")] == []
    expected = counters if isinstance(counters, dict) else {n: declared()[n] for n in counters}
    for name, reasons in expected.items():
        series = {
            labels: value
            for labels, value in page.get(name, {}).items()
            if all(dict(labels).get(k) == v for k, v in where.items())
        }
        if not reasons:
            assert list(series.values()) == [0], f"{name}{where}: not one series at 0 at start: {series}"
            continue
        key = REASON_LABEL.get(name, "reason")
        zeros = {dict(labels).get(key) for labels, value in series.items() if value == 0}
        missing = set(reasons) - zeros
        assert not missing, f"{name}{where}: reasons not at 0 at start: {sorted(missing)}"


def scrape_when_up(url: str, proc: subprocess.Popen[bytes], want: str | None) -> dict[str, Any]:
    """The first /metrics page that has the metric `want` (None: the first page at all; fails if the
    process exits first)."""
    page: dict[str, Any] = {}

    def ready() -> bool:
        nonlocal page
        assert proc.poll() is None, f"exited {proc.returncode}"
        try:
            page = scrape(url)
        except OSError:
            return False
        return want is None or want in page

    wait_for(ready, 30, f"{want or 'a page'} on {url}")
    return page


def start(
    args: list[str], procs: list[subprocess.Popen[bytes]], prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a celltap process (with PYTHONPATH at this checkout)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_DISABLE_CREATED_SERIES", None)  # the default must hide them
    procs.append(subprocess.Popen([*(prefix or []), *CELLTAP, *args], env=env, stderr=subprocess.PIPE))
    return procs[-1]


def test_collector_and_node_export_their_drop_reasons_at_zero(
    etcd_server: Any,  # noqa: F811
    procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    cluster = f"zeros-{random.randrange(10**8)}"
    grpc, http = free_port(), free_port()
    node_cfg = {
        "id": "node-z",
        "listen": f"127.0.0.1:{grpc}",
        "advertise": f"127.0.0.1:{grpc}",
        "http": f"127.0.0.1:{http}",
        "registry": etcd_server.url,
        "cluster": cluster,
    }
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(node_cfg))
    node = start(["node", "--config", str(tmp_path / "node.yaml")], procs)
    page = scrape_when_up(f"http://127.0.0.1:{http}/metrics", node, "celltap_node_rejected_records_total")
    check_page(page, ["celltap_node_rejected_records_total", "celltap_registry_errors_total"])
    # records a node does not apply without a reason label: one series at 0 each
    check_page(page, {"celltap_node_duplicate_records_total": (), "celltap_node_fenced_records_total": ()})

    metrics = free_port()
    col_cfg = {
        "listen": [f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"],
        "workers": 1,
        "registry": etcd_server.url,
        "cluster": cluster,
        "metrics_port": metrics,
        "metrics_addr": "127.0.0.1",
    }
    (tmp_path / "collector.yaml").write_text(yaml.safe_dump(col_cfg))
    col = start(["collector", "--config", str(tmp_path / "collector.yaml")], procs)
    want = "celltap_collector_cluster_dropped_records_total"
    page = scrape_when_up(f"http://127.0.0.1:{metrics}/metrics", col, want)
    check_page(page, [n for n in declared() if n.startswith("celltap_collector_")])
    check_page(page, {"celltap_collector_cluster_replica_lost_records_total": ()})


def test_cell_exports_its_drop_reasons_at_zero(procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    metrics = free_port()
    args = [
        "cell",
        "--config",
        str(REPO / "docker/config/sftap.yaml"),
        "--cell-id",
        "0",
        "--home",
        str(tmp_path / "home"),
        "--metrics-port",
        str(metrics),
        "--input",
        f"vxlan://127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
        "--store",  # the packet store's drops and the IPFIX send errors exist where configured
        str(tmp_path / "store"),
        "--ipfix",
        f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}",
    ]
    cell = start(args, procs)
    page = scrape_when_up(
        f"http://127.0.0.1:{metrics}/metrics", cell, "celltap_cell_input_dropped_frames_total"
    )
    check_page(page, [n for n in declared() if n.startswith("celltap_cell_")])
    check_page(page, {"celltap_cell_ipfix_send_errors_total": ()})


@pytest.mark.parametrize("name", ["http", "dns", "tls", "smtp", "sip"])
def test_analyzer_exports_its_drop_and_error_reasons_at_zero(
    name: str, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # no interface socket yet (the cell is not up): the counters are there while the analyzer waits
    metrics = free_port()
    args = ["analyzer", name, "--socket", str(tmp_path / "tcp" / name), "--metrics-port", str(metrics)]
    proc = start([*args, "--metrics-addr", "127.0.0.1"], procs)
    page = scrape_when_up(f"http://127.0.0.1:{metrics}/metrics", proc, None)
    check_page(page, analyzer_declared(name), analyzer=name)


def test_balanced_analyzers_supervisor_and_children_export_theirs_at_zero(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    base = free_port_block(2)  # the supervisor's port, then its one child's
    args = ["analyzer", "dns", "--balance", "1", "--socket-prefix", str(tmp_path / "dns")]
    proc = start([*args, "--metrics-port", str(base), "--metrics-addr", "127.0.0.1"], procs)
    page = scrape_when_up(f"http://127.0.0.1:{base}/metrics", proc, None)
    check_page(page, {"celltap_analyzer_restarts_total": ()}, analyzer="dns")
    page = scrape_when_up(f"http://127.0.0.1:{base + 1}/metrics", proc, None)
    check_page(page, analyzer_declared("dns"), analyzer="dns")


def netns_scraper(ns: str, port: int) -> Callable[[], dict[str, Any]]:
    """A scrape of 127.0.0.1:port inside a netns."""

    def scrape_ns() -> dict[str, Any]:
        code = (
            "import json, urllib.request\n"
            "from prometheus_client.parser import text_string_to_metric_families as f\n"
            f"t = urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=3).read().decode()\n"
            "print(json.dumps([[s.name, s.labels, s.value] for m in f(t) for s in m.samples]))\n"
        )
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise OSError(proc.stderr)
        out: dict[str, Any] = {}
        for name, labels, value in json.loads(proc.stdout):
            out.setdefault(name, {})[tuple(sorted(labels.items()))] = value
        return out

    return scrape_ns


@contextlib.contextmanager
def quiet_netns(procs: list[subprocess.Popen[bytes]], veths: tuple[str, ...] = ()) -> Iterator[str]:
    """A fresh netns with lo and the given veth pairs (`name`, `name-p`) up and IPv6 off (so no
    link-local chatter crosses the veths); the processes started in it are stopped on exit."""
    require_root()
    ns = f"ctz{os.getpid() % 10000}{random.randrange(100)}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        for key in ("all", "default"):
            sysctl = ["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"]
            subprocess.run(["ip", "netns", "exec", ns, *sysctl], check=True, timeout=30)
        for v in veths:
            subprocess.run(
                ["ip", "-n", ns, "link", "add", "name", v, "type", "veth", "peer", "name", f"{v}-p"],
                check=True,
            )
            for end in (v, f"{v}-p"):
                subprocess.run(["ip", "-n", ns, "link", "set", "dev", end, "up"], check=True)
        yield ns
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


def page_in_netns(
    ns: str, port: int, proc: subprocess.Popen[bytes], ready: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The first /metrics page (127.0.0.1:port inside the netns) for which `ready` holds."""
    scrape_ns = netns_scraper(ns, port)
    page: dict[str, Any] = {}

    def check() -> bool:
        nonlocal page
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
        try:
            page = scrape_ns()
        except OSError:
            return False
        return ready(page)

    wait_for(check, 30, what)
    return page


def incubator_page(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path, cfg: dict, veths: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The first /metrics page of a real incubator (in a quiet netns with the given veths) once its
    cells are set up; the scrapes cross lo, which no test captures."""
    with quiet_netns(procs, veths) as ns:
        (tmp_path / "incubator.yaml").write_text(yaml.safe_dump({"metrics_port": 9470, **cfg}))
        inc = start(
            ["incubator", "--config", str(tmp_path / "incubator.yaml")], procs, ["ip", "netns", "exec", ns]
        )
        # its cells set up (the gauge is set once the cells' outputs are open)
        cells = len(cfg["cells"])
        return page_in_netns(
            ns,
            9470,
            inc,
            lambda page: page.get("celltap_incubator_cells", {}).get((), 0) == cells,
            "the incubator's metrics with its cells set up",
        )


@pytest.mark.netns
def test_loadgen_replay_exports_its_error_reasons_at_zero(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from celltap.loadgen.replay import RETRY_REASONS, SEND_ERROR_REASONS

    from celltap.pcap.writer import PcapWriter

    with PcapWriter(str(tmp_path / "one.pcap")) as w:  # one broadcast ARP request, crafted
        w.write(
            0,
            bytes.fromhex("ffffffffffff020000000001 0806 0001080006040001 020000000001 0a000001")
            + bytes(6)
            + bytes.fromhex("0a000002")
            + bytes(18),
        )
    with quiet_netns(procs, ("ta",)) as ns:
        args = ["loadgen", "replay", str(tmp_path / "one.pcap"), "ta", "--pps", "2", "--loop", "100000"]
        proc = start([*args, "--metrics-port", "9472"], procs, ["ip", "netns", "exec", ns])
        page = page_in_netns(
            ns, 9472, proc, lambda page: "celltap_loadgen_replay_frames_total" in page, "loadgen"
        )
    check_page(
        page,
        {
            "celltap_loadgen_replay_send_errors_total": SEND_ERROR_REASONS,
            "celltap_loadgen_replay_retries_total": RETRY_REASONS,
        },
    )


@pytest.mark.netns
def test_incubator_exports_its_drop_reasons_at_zero(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    cfg = {
        "mode": "mirror",
        "capture": "afpacket:ta",
        "cells": [{"id": "0", "output": "vxlan://127.0.0.1:4789"}],
    }
    page = incubator_page(procs, tmp_path, cfg, ("ta",))
    check_page(page, ["celltap_incubator_dropped_frames_total"])
    check_page(page, per_cell_declared(), cell="0")


@pytest.mark.netns
def test_inline_incubator_exports_its_bridge_drops_at_zero(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from celltap.incubator.outputs import SEND_ERROR_REASONS

    cfg = {
        "mode": "inline",
        "capture": "afpacket:ta",
        "peer": "afpacket:tb",
        "cells": [{"id": "0", "output": "vxlan://127.0.0.1:4789"}],
    }
    page = incubator_page(procs, tmp_path, cfg, ("ta", "tb"))
    for side in ("ta", "tb"):  # each bridge side is labelled by the interface it sends on
        check_page(page, {"celltap_incubator_bridged_frames_total": ()}, to=side)
        check_page(page, {"celltap_incubator_bridge_dropped_frames_total": SEND_ERROR_REASONS}, to=side)


@pytest.mark.netns
def test_xdp_incubator_exports_its_kernel_path_reasons_at_zero(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from celltap.incubator.xdp.datapath import REDIRECT_DROP, XMIT_DROP
    from celltap.incubator.xdp.program import COUNTERS

    require_tool("clang")  # the XDP program is built at start
    cfg = {
        "mode": "inline",
        "capture": "xdp:ta",
        "peer": "xdp:tb",
        "cells": [{"id": "0", "output": "iface:tc0"}],
    }
    page = incubator_page(procs, tmp_path, cfg, ("ta", "tb", "tc0"))
    passed = tuple(n[3:] for n in COUNTERS if n.startswith("up_"))
    assert passed, "no up_* counter: the pattern is stale"
    check_page(page, {"celltap_incubator_xdp_passed_frames_total": passed})
    check_page(page, {"celltap_incubator_dropped_frames_total": (XMIT_DROP, REDIRECT_DROP)})
    for side in ("ta", "tb"):
        check_page(page, {"celltap_incubator_bridge_dropped_frames_total": (XMIT_DROP,)}, to=side)
    check_page(page, per_cell_declared(), cell="0")
