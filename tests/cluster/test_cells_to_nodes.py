"""Cells to analysis nodes, end to end over both directions, on traffic of real servers and clients.

A capture of nginx and unbound answering curl, wget and dig (tests/cluster/real_capture.py) is split by
tcpdump between two cells (`celltap cell --read`, the built-in rules); their IPFIX biflow records go to
a routing collector, which spreads them over the ring of three analysis nodes (file:// registry). Then
`celltap top` asks the cluster for top_talkers, volume and app_mix, and every figure must equal a
one-process computation from tshark's dissection of the same capture: per source (initiating) address,
the IP bytes and packets of its flows in both directions, and each direction apart. The same totals
must come out of `celltap analyze`'s conn.log (orig_ip_bytes + resp_ip_bytes per originator). The app
mix must equal the same totals per application protocol tshark finds in each stream (HTTP, DNS over
UDP, DNS over TCP, named as the built-in rules name them), and conn.log's totals per `service`.
Finally the uid a cell's IPFIX record carries equals the uid conn.log gives the same 5-tuple.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from tests.cell.test_ipfix_export import cell_ipfix_messages, ipfix_capture
from tests.cluster.procs import CELLTAP, ROOT, Cluster, Proc, wait_for
from tests.cluster.real_capture import make_capture
from tests.conftest import require_tool

pytestmark = [pytest.mark.netns, pytest.mark.tshark]

BUILTIN_RULES = ROOT / "celltap/defaults/sftap.yaml"
APPS = {
    "top_talkers": {"kind": "top_talkers", "key": "src"},
    "volume": {"kind": "volume", "key": "src"},
    "app_mix": {"kind": "app_mix"},
}
Totals = dict[str, list[int]]  # key -> [orig bytes, resp bytes, orig packets, resp packets, flows]


# What tshark's dissectors call the protocol of a stream -> the built-in rule that must classify it.
RULE_FOR = {("tcp", "http"): "http", ("udp", "dns"): "dns_udp", ("tcp", "dns"): "dns_tcp"}


def tshark_flows(pcap: Path) -> list[tuple[str, str, list[int]]]:
    """Every TCP/UDP flow of the capture as tshark dissects it: (initiator, rule label, [initiator's
    IP bytes, responder's IP bytes, initiator's packets, responder's packets]).

    A flow is a tshark TCP or UDP stream; its initiator is the source of its first frame; its label
    is the built-in rule for the application protocol tshark finds in it (RULE_FOR), else '(none)'.
    (Packets inside a tunnel would count their outer header: the test's capture has no tunnels.)
    """
    tshark = require_tool("tshark")
    fields = ["ip.src", "ip.len", "ipv6.src", "ipv6.plen", "tcp.stream", "udp.stream", "frame.protocols"]
    cmd = [tshark, "-r", str(pcap), "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    cmd += ["-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    flows: dict[tuple[str, str], tuple[str, set[str], list[int]]] = {}
    for line in out.splitlines():
        src4, len4, src6, plen6, tcp_stream, udp_stream, protocols = line.split("|")
        if not (len4 or plen6) or not (tcp_stream or udp_stream):
            continue
        # IP bytes as the cell counts them: IPv4 total length, IPv6 payload length + its 40-byte header
        src, length = (src4, int(len4.split(",")[0])) if len4 else (src6, int(plen6.split(",")[0]) + 40)
        flow = ("tcp", tcp_stream) if tcp_stream else ("udp", udp_stream)
        if flow not in flows:
            flows[flow] = (src, set(), [0, 0, 0, 0])
        initiator, protos, t = flows[flow]
        protos.update(protocols.split(":"))
        sent_by_initiator = src == initiator
        t[0 if sent_by_initiator else 1] += length
        t[2 if sent_by_initiator else 3] += 1
    out_flows = []
    for (transport, _), (initiator, protos, t) in flows.items():
        labels = {RULE_FOR[(transport, p)] for p in protos if (transport, p) in RULE_FOR}
        assert len(labels) <= 1, labels
        out_flows.append((initiator, labels.pop() if labels else "(none)", t))
    return out_flows


def totals_by(flows: list[tuple[str, str, list[int]]], by_label: bool = False) -> Totals:
    """tshark's flows summed per initiator (or per label): the four counters and flows."""
    totals: Totals = defaultdict(lambda: [0, 0, 0, 0, 0])
    for initiator, label, t in flows:
        row = totals[label if by_label else initiator]
        for i in range(4):
            row[i] += t[i]
        row[4] += 1
    return dict(totals)


def conn_totals(conn: list[dict], key: str) -> Totals:
    """conn.log's orig/resp IP bytes, packets and flows summed per `key` (a field, or '(none)')."""
    totals: Totals = defaultdict(lambda: [0, 0, 0, 0, 0])
    for r in conn:
        t = totals[r.get(key) or "(none)"]
        for i, f in enumerate(("orig_ip_bytes", "resp_ip_bytes", "orig_pkts", "resp_pkts")):
            t[i] += r[f]
        t[4] += 1
    return dict(totals)


def directed(row: dict) -> list[int]:
    """An answer row's four directed counters."""
    return [row["orig_bytes"], row["resp_bytes"], row["orig_packets"], row["resp_packets"]]


def top(cluster: Cluster, app: str, by: str = "bytes") -> dict:
    """`celltap top APP --json` against the cluster (every row: --n 0)."""
    cmd = [*CELLTAP, "top", app, "--by", by, "--n", "0", "--json", "--registry", cluster.registry,
           "--cluster", cluster.name]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["complete"] and len(answer["nodes"]) == 3, answer
    return answer


def run_cells(cluster: Cluster, tmp: Path, pcap: Path, client: str) -> None:
    """Two cells, one reading the flows of `client`, the other everything else (split by tcpdump)."""
    halves = {"a": f"host {client}", "b": f"not host {client}"}
    procs = []
    for n, (name, bpf) in enumerate(halves.items(), start=1):
        part = tmp / f"cell-{name}.pcap"
        subprocess.run([require_tool("tcpdump"), "-r", str(pcap), "-w", str(part), bpf], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        args = ["cell", "--config", str(BUILTIN_RULES), "--home", str(tmp / f"home-{name}"), "--read",
                str(part), "--ipfix", f"udp://127.0.0.1:{cluster.collector_udp['c1']}", "--cell-id", str(n),
                "--drain-timeout", "1"]  # fmt: skip
        procs.append(Proc(f"cell-{name}", [*CELLTAP, *args], tmp))
    for p in procs:
        assert p.p.wait(120) == 0, p.tail()


def test_cluster_views_equal_one_process_over_both_directions(tmp_path: Path) -> None:
    cap = make_capture(tmp_path)
    assert [cmd for cmd, rc in cap.client_runs if rc != 0] == []
    dissected = tshark_flows(cap.pcap)
    expected, expected_mix = totals_by(dissected), totals_by(dissected, by_label=True)
    assert set(expected) == set(cap.clients)  # every flow was initiated by a client
    assert set(expected_mix) == {"http", "dns_udp", "dns_tcp"}
    flows = len(dissected)

    analyzed = subprocess.run([*CELLTAP, "analyze", str(cap.pcap), "-o", str(tmp_path / "logs"), "--quiet"],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert analyzed.returncode == 0, analyzed.stderr
    conn = [json.loads(line) for line in (tmp_path / "logs/conn.log").read_text().splitlines()]
    assert conn_totals(conn, "id.orig_h") == expected  # the cross-check: conn.log, both directions

    cluster = Cluster(tmp_path, f"file://{tmp_path}/registry?poll=0.05", f"e2e-{uuid.uuid4().hex[:6]}")
    try:
        for nid in ("n1", "n2", "n3"):
            cluster.start_node(nid, APPS)
        cluster.wait_members({"n1", "n2", "n3"})
        cluster.start_collector("c1")
        cluster.wait_collector("c1", 3)
        run_cells(cluster, tmp_path, cap.pcap, cap.clients[0])
        cluster.wait_drained("c1", flows)
        wait_for(
            lambda: top(cluster, "volume")["total"]["records"] == flows,
            15,
            f"the nodes to hold {flows} flows",
        )

        measures = ("bytes", "packets", "orig_bytes", "resp_bytes", "orig_packets", "resp_packets")
        talkers = {by: {r["key"]: r[by] for r in top(cluster, "top_talkers", by)["top"]} for by in measures}
        assert talkers["bytes"] == {k: t[0] + t[1] for k, t in expected.items()}
        assert talkers["packets"] == {k: t[2] + t[3] for k, t in expected.items()}
        assert talkers["orig_bytes"] == {k: t[0] for k, t in expected.items()}
        assert talkers["resp_bytes"] == {k: t[1] for k, t in expected.items()}
        assert talkers["orig_packets"] == {k: t[2] for k, t in expected.items()}
        assert talkers["resp_packets"] == {k: t[3] for k, t in expected.items()}

        volume = top(cluster, "volume")
        assert {r["key"]: [*directed(r), r["records"]] for r in volume["top"]} == expected

        mix = top(cluster, "app_mix")
        assert {r["key"]: [*directed(r), r["flows"]] for r in mix["top"]} == expected_mix
        assert conn_totals(conn, "service") == expected_mix  # conn.log's service agrees
    finally:
        cluster.stop_all()

    # The uid a cell's IPFIX record carries is the uid conn.log gives the same 5-tuple.
    ipfix_pcap = ipfix_capture(
        cell_ipfix_messages(BUILTIN_RULES, cap.pcap, "--home", str(tmp_path / "home-uid")),
        tmp_path / "ipfix.pcap",
    )
    cmd = [*CELLTAP, "collector", "--read-pcap", str(ipfix_pcap), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120, cwd=ROOT).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    by_tuple = {
        (r["sourceIPv4Address"], r["sourceTransportPort"], r["destinationIPv4Address"],
         r["destinationTransportPort"], r["protocolIdentifier"]): r["celltapUid"]
        for r in records
    }  # fmt: skip
    proto = {"tcp": 6, "udp": 17}
    conn_uids = {(r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"], proto[r["proto"]]): r["uid"]
                 for r in conn}  # fmt: skip
    assert len(by_tuple) == len(records) == flows
    assert by_tuple == conn_uids
