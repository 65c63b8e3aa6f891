"""TCP state as Zeek and Suricata keep it: RST and sequence windows, handshake resync, TCP Fast Open,
midstream pickup, and each flow's Zeek history / conn_state / missed_bytes / originator.

Real kernel traffic where a real tool can make the case (a netns, tcpdump on its loopback: see
tests/cell/kernel_tcp_scenarios.py), with tshark as the oracle for stream bytes and packet flags and
the applications' own view (what the server received, which side aborted) as ground truth. Cases no
tool makes (a SYN-ACK with a new ISN, a SYN-ACK with data, stray far-away segments) are crafted
captures, named so.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from celltap.cell.abstractor import Abstractor
from celltap.cell.flow_table import Flow
from celltap.cell.sftap_config import parse_config
from celltap.loadgen.packets import ACK, FIN, PSH, RST, SYN

from celltap.pcap import PcapWriter, read_all
from celltap.pcap.batch import FrameBatch
from tests.cell.captures import Conv
from tests.cell.kernel_tcp import capture_scenario
from tests.cell.oracle import endpoint, tshark_streams, tshark_tcp_rows, zeek_history
from tests.cell.wire import parse_text, streams
from tests.conftest import require_tool

M32 = 0xFFFFFFFF
CONFIG = {"global": {"timeout": 30}, "tcp_default": {"if": "default", "proto": "TCP"}}
LO = "127.0.0.1"


def _run(frames_or_pcap, doc: dict | None = None, batch: int = 1000) -> tuple[Abstractor, list[Flow], dict]:
    """The cell core over a capture (a pcap path or (ts, frame) list): (abstractor, ended flows, streams)."""
    a = Abstractor(parse_config(doc or CONFIG))
    ended: list[Flow] = []
    if isinstance(frames_or_pcap, Path):
        batches = read_all(str(frames_or_pcap))
    else:
        fr = frames_or_pcap
        batches = [
            FrameBatch.from_frames([f for _, f in fr[i : i + batch]], [t for t, _ in fr[i : i + batch]])
            for i in range(0, len(fr), batch)
        ]
    for b in batches:
        a.process_frames(b)
        ended += a.take_ended()
    a.finish()
    ended += a.take_ended()
    data = b"".join(p for s in a.sinks.values() for p in s.parts)
    return a, ended, streams(parse_text(data))


def _flow_of(ended: list[Flow], port: int) -> Flow:
    (flow,) = [f for f in ended if port in (f.port1, f.port2)]
    return flow


def _reasons(a: Abstractor) -> dict[int, str]:
    """DESTROYED reason per flow, by its higher port (the client's, for the scenarios here)."""
    data = b"".join(p for s in a.sinks.values() for p in s.parts)
    return {max(e.flow[1], e.flow[3]): e.reason for e in parse_text(data) if e.event == "DESTROYED"}


def _check_streams_against_tshark(pcap: Path, ours: dict) -> int:
    """Every stream of ours equals tshark's follow of the same connection; returns how many were compared."""
    tshark = require_tool("tshark")
    theirs = tshark_streams(tshark, str(pcap), len(ours) + 3)
    for flow, (o1, o2) in ours.items():
        e1, e2 = endpoint(flow[0], flow[1]), endpoint(flow[2], flow[3])
        if (e1, e2) in theirs:
            t1, t2, holes = theirs[(e1, e2)]
        else:
            t2, t1, holes = theirs[(e2, e1)]
        assert (o1, o2) == (t1, t2), f"{flow}: stream differs from tshark's follow"
        assert holes == 0
    return len(ours)


def _tshark_history(pcap: Path, port: int, orig_port: int) -> str:
    """Zeek's letters of one connection from tshark's decode (tests/cell/oracle.py)."""
    rows = tshark_tcp_rows(require_tool("tshark"), str(pcap))
    rows = [r for r in rows if r["src"].endswith(f":{port}") or r["dst"].endswith(f":{port}")]
    return zeek_history(rows, endpoint(LO, orig_port))


# ------------------------------------------------------------------ RST window (real kernel)
@pytest.mark.netns
@pytest.mark.tshark
def test_out_of_window_rsts_are_ignored_and_counted_real_rsts_honoured(tmp_path):
    pcap, run = capture_scenario("rst_evasion", tmp_path)
    # the kernel ignored the injected RSTs: the connection answered twice more after them
    assert run["answers"] == ["OK GET /one\n", "OK GET /two\n", "OK GET /three\n", "OK GET /abort\n"]
    a, ended, ours = _run(pcap)
    assert _check_streams_against_tshark(pcap, ours) == 2
    assert a.drops.get("tcp_rst_out_of_window") == run["injected"] == 3
    reasons = _reasons(a)
    evaded = _flow_of(ended, run["evaded_port"])
    assert reasons[run["evaded_port"]] == "NORMAL"
    assert evaded.conn_state() == "SF"
    # the RSTs are still packets seen: Zeek writes `R` for each new sequence number
    expected = _tshark_history(pcap, run["evaded_port"], run["evaded_port"])
    assert evaded.history == expected and expected.count("R") == 3
    aborted = _flow_of(ended, run["abort_port"])
    assert reasons[run["abort_port"]] == "RESET"
    assert aborted.conn_state() == "RSTO", "the client (originator) aborted an established connection"
    assert aborted.history == _tshark_history(pcap, run["abort_port"], run["abort_port"])


def test_rst_acceptance_rule_crafted():
    """Crafted: RSTs at the edges of the rule (docs/cell.md): behind / at / window past the highest seen."""
    out = {}
    for name, delta in (("behind", -1), ("at", 0), ("window", 1 << 20), ("past", (1 << 20) + 1)):
        c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40000, 80, 1000, 5000)
        c.put(c.frame(True, 1000, 0, SYN))
        c.put(c.frame(False, 5000, 1001, SYN | ACK))
        c.put(c.frame(True, 1001, 5001, ACK | PSH, b"hello"))
        c.put(c.frame(True, 1006 + delta, 5001, RST | ACK))
        a, ended, _ = _run(c.frames)
        out[name] = (_reasons(a)[40000], a.drops.get("tcp_rst_out_of_window", 0))
    assert out == {
        "behind": ("TIMEOUT", 1),
        "at": ("RESET", 0),
        "window": ("RESET", 0),
        "past": ("TIMEOUT", 1),
    }
    # a RST from the side that never sent anything (a rejected SYN) is judged by its ACK number
    cases = ((1001, True), (1001 + (1 << 20), True), (1002 + (1 << 20), False), (1001 + (1 << 31), False))
    for ack, honoured in cases:
        c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40000, 80, 1000, 5000)
        c.put(c.frame(True, 1000, 0, SYN))
        c.put(c.frame(False, 0, ack, RST | ACK))
        a, ended, _ = _run(c.frames)
        assert (ended[0].conn_state() == "REJ") == honoured, ack
        assert a.drops.get("tcp_rst_out_of_window", 0) == (0 if honoured else 1)


# ------------------------------------------------------------------ history and conn_state (real kernel)
@pytest.mark.netns
@pytest.mark.tshark
def test_history_and_conn_state_of_real_connections(tmp_path):
    pcap, ports = capture_scenario("states", tmp_path)
    _a, ended, ours = _run(pcap)
    _check_streams_against_tshark(pcap, ours)
    for state, port in ports.items():
        flow = _flow_of(ended, port)
        client = 1 if flow.port1 == port else 2
        assert flow.orig == client, f"{state}: the SYN's sender originates"
        assert flow.conn_state() == state, f"{state}: {flow.history}"
        assert flow.history == _tshark_history(pcap, port, port), state
        assert flow.missed_bytes == 0
    # the S0 connection's SYN was retransmitted (same ISN): one `S` (Zeek's repeat rule)
    assert _flow_of(ended, ports["S0"]).history == "S"
    assert _flow_of(ended, ports["REJ"]).history == "Sr"


# ------------------------------------------------------------------ TCP Fast Open (real), SYN-ACK data
@pytest.mark.netns
@pytest.mark.tshark
def test_tcp_fast_open_syn_data_is_stream_data(tmp_path):
    pcap, run = capture_scenario("tfo", tmp_path, ("net.ipv4.tcp_fastopen=519",))
    assert run["syn_data_acked"], "the kernel sent the request in the SYN and the server took it"
    rows = tshark_tcp_rows(require_tool("tshark"), str(pcap))
    assert rows[0]["flags"] & SYN and rows[0]["len"] == len(b"GET /fast\n"), "the SYN carries the request"
    a, ended, ours = _run(pcap)
    assert _check_streams_against_tshark(pcap, ours) == 1
    ((c1, c2),) = ours.values()
    flow = ended[0]
    client_data = c1 if flow.orig == 1 else c2
    assert client_data == b"GET /fast\n" and run["answer"] == "OK GET /fast\n"
    assert flow.conn_state() == "SF" and a.tcp_stats.retrans_bytes == 0


def test_synack_with_data_crafted(tmp_path):
    """Crafted: a SYN-ACK carrying data (TFO-style server greeting): its payload starts at ISN + 1."""
    c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40000, 25, 1000, 7000)
    c.put(c.frame(True, 1000, 0, SYN, b"EHLO x\r\n"))
    c.put(c.frame(False, 7000, 1009, SYN | ACK, b"220 hi\r\n"))
    c.put(c.frame(True, 1009, 7009, ACK | PSH, b"QUIT\r\n"))
    c.put(c.frame(False, 7009, 1015, ACK | PSH, b"221 bye\r\n"))
    c.put(c.frame(True, 1015, 7018, FIN | ACK))
    c.put(c.frame(False, 7018, 1016, FIN | ACK))
    pcap = tmp_path / "synack_data.pcap"
    with PcapWriter(str(pcap)) as w:
        for ts, f in c.frames:
            w.write(ts, f)
    a, ended, ours = _run(pcap)
    assert _check_streams_against_tshark(pcap, ours) == 1
    ((o1, o2),) = ours.values()
    assert (o1, o2) == (b"EHLO x\r\nQUIT\r\n", b"220 hi\r\n221 bye\r\n")
    assert _reasons(a)[40000] == "NORMAL" and ended[0].conn_state() == "SF"


# ------------------------------------------------------------------ new ISN in a repeated SYN-ACK (crafted)
def _handshake_twice(data_before: bytes) -> Conv:
    """Crafted: the server answers the SYN twice with different ISNs (it restarted between)."""
    c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40000, 80, 1000, 5000)
    c.put(c.frame(True, 1000, 0, SYN))
    c.put(c.frame(False, 5000, 1001, SYN | ACK))
    if data_before:
        c.put(c.frame(False, 5001, 1001, ACK | PSH, data_before))
    new_isn = 5000 + 1_200_000_000  # 1.2 GB further: counted as a hole if not resynchronised
    c.put(c.frame(False, new_isn, 1001, SYN | ACK))
    c.put(c.frame(True, 1001, new_isn + 1, ACK | PSH, b"GET / HTTP/1.0\r\n\r\n"))
    c.put(c.frame(False, new_isn + 1, 1019, ACK | PSH, b"HTTP/1.0 200 OK\r\n\r\nbody"))
    c.put(c.frame(True, 1019, new_isn + 25, FIN | ACK))
    c.put(c.frame(False, new_isn + 25, 1020, FIN | ACK))
    return c


def test_second_synack_with_a_new_isn_resynchronises_crafted():
    a, ended, ours = _run(_handshake_twice(b"").frames)
    ((o1, o2),) = ours.values()
    assert (o1, o2) == (b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nbody")
    assert a.tcp_stats.resyncs == 1 and a.tcp_stats.gap_bytes == 0
    flow = ended[0]
    assert _reasons(a)[40000] == "NORMAL" and flow.history.count("h") == 2 and flow.conn_state() == "SF"
    # once the server's direction carried data, a new ISN is not believed (and not a 1.2 GB hole)
    a, ended, ours = _run(_handshake_twice(b"early").frames)
    assert a.tcp_stats.resyncs == 0
    assert a.tcp_stats.gap_bytes == 0 and a.drops.get("tcp_seq_out_of_window", 0) >= 1
    ((o1, o2),) = ours.values()
    assert o2 == b"early"


# ------------------------------------------------------------------ gap accounting bounded (crafted)
@pytest.mark.tshark
def test_far_stray_segments_are_dropped_not_counted_as_gaps_crafted(tmp_path):
    """Crafted: strays far from the stream (past 1 GiB either way, across the wrap) next to real data."""
    convs = []
    for i, c_isn in enumerate((123456, M32 - 300)):  # the second one's stream crosses 2**32
        c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40000 + i, 80, c_isn, 5000)
        c.put(c.frame(True, c_isn, 0, SYN))
        c.put(c.frame(False, 5000, c_isn + 1, SYN | ACK))
        body = bytes(range(256)) * 2
        c.put(c.frame(True, c_isn + 1, 5001, ACK | PSH, body[:300]))
        c.put(c.frame(True, c_isn + 1 + 1_500_000_000, 5001, ACK | PSH, b"far ahead"))
        c.put(c.frame(True, c_isn + 1 - 1_500_000_000, 5001, ACK | PSH, b"far behind"))
        c.put(c.frame(True, c_isn + 1 + (1 << 31) - 5, 5001, ACK | PSH, b"opposite side of the circle"))
        c.put(c.frame(True, c_isn + 301, 5001, ACK | PSH, body[300:]))
        c.put(c.frame(False, 5001, c_isn + 513, ACK | PSH, b"ok"))
        c.put(c.frame(True, c_isn + 513, 5003, FIN | ACK))
        c.put(c.frame(False, 5003, c_isn + 514, FIN | ACK))
        c.sent[0] += body
        convs.append(c)
    frames = sorted((f for c in convs for f in c.frames), key=lambda f: f[0])
    a, ended, ours = _run(frames)
    capture_bytes = sum(len(f) for _, f in frames)
    assert a.tcp_stats.gap_bytes == 0 and all(f.missed_bytes == 0 for f in ended)
    assert a.tcp_stats.gap_bytes <= capture_bytes  # the class of the 1.18 GB reading
    assert a.drops["tcp_seq_out_of_window"] == 6
    for c in convs:
        flow = _flow_of(ended, c.cport)
        o_client = ours[next(k for k in ours if c.cport in (k[1], k[3]))][0 if flow.orig == 1 else 1]
        assert o_client == bytes(c.sent[0])
        assert _reasons(a)[c.cport] == "NORMAL" and flow.conn_state() == "SF"


def test_a_real_hole_is_counted_once_in_gap_and_missed_bytes_crafted():
    """Crafted: one lost 200-byte segment: gap_bytes, missed_bytes and a `G` are exactly that."""
    c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40000, 80, 1000, 5000)
    c.put(c.frame(True, 1000, 0, SYN))
    c.put(c.frame(False, 5000, 1001, SYN | ACK))
    c.put(c.frame(True, 1001, 5001, ACK | PSH, b"a" * 100))
    c.put(c.frame(True, 1301, 5001, ACK | PSH, b"c" * 100))  # 1101..1300 never seen
    c.put(c.frame(True, 1401, 5001, FIN | ACK))
    c.put(c.frame(False, 5001, 1402, FIN | ACK))
    a, ended, ours = _run(c.frames)
    assert a.tcp_stats.gap_bytes == ended[0].missed_bytes == 200
    assert ended[0].history == "ShDFfG"
    ((o1, _o2),) = ours.values()
    assert o1 == b"a" * 100 + b"c" * 100


# ------------------------------------------------------------------ midstream pickup (real kernel, cut)
def _cut(pcap: Path, first: int, tmp: Path) -> Path:
    """The capture without its first `first` packets (editcap, the real tool)."""
    out = tmp / f"cut{first}.pcap"
    subprocess.run([require_tool("editcap"), "-r", str(pcap), str(out), f"{first + 1}-1000000"], check=True)
    return out


@pytest.mark.netns
@pytest.mark.tshark
@pytest.mark.parametrize("first", [3, 4, 9])
def test_midstream_pickup_of_a_cut_real_capture(tmp_path, first):
    pcap, run = capture_scenario("talk", tmp_path)
    assert run["answers"] == 6 and run["server_done"], run
    cut = _cut(pcap, first, tmp_path)
    rows = tshark_tcp_rows(require_tool("tshark"), str(cut))
    a, ended, ours = _run(cut)
    assert _check_streams_against_tshark(cut, ours) == 1
    (flow,) = ended
    assert flow.pkts1 + flow.pkts2 == len(rows), "every packet counted, batched pure ACKs included"
    assert not a.drops
    first_sender = rows[0]["src"]
    sender = 1 if first_sender == endpoint(LO, flow.port1) else 2
    assert flow.orig == sender, "neither port is a server's: the first packet's sender originates"
    assert flow.history == zeek_history(rows, first_sender)
    # both endpoints PARTIAL, then CLOSED by their FINs: SF
    assert len({r["src"] for r in rows if r["flags"] & FIN}) == 2
    assert flow.conn_state() == "SF"
    # a rule naming the server's port makes it the server: the roles flip when it spoke first (`^`)
    doc = {**CONFIG, "svc": {"proto": "TCP", "port": str(run["port"]), "if": "svc"}}
    _a2, ended2, _ = _run(cut, doc)
    (flow2,) = ended2
    server = 1 if flow2.port1 == run["port"] else 2
    assert flow2.orig == 3 - server
    assert flow2.history.startswith("^") == (sender == server)
    # and the strict SF-TAP behaviour stays available
    strict, ended3, _ = _run(cut, {**CONFIG, "global": {"timeout": 30, "midstream": "no"}})
    assert not ended3 and strict.drops["tcp_no_syn"] == len(rows)


def test_midstream_flows_same_with_and_without_ack_batching():
    """Cut loadgen captures: pure-ACK batching and the whole-connection path change nothing for them."""
    from celltap.loadgen.scenario import get

    frames = list(get("http").generate(5, 60))
    frames = [f for i, f in enumerate(frames) if i % 7 not in (0, 1)]  # handshakes partly lost
    results = []
    for batch_acks in (True, False):
        a = Abstractor(parse_config(CONFIG))
        a.batch_acks = batch_acks
        ended: list[Flow] = []
        for i in range(0, len(frames), 300):
            part = frames[i : i + 300]
            a.process_frames(FrameBatch.from_frames([f for _, f in part], [t for t, _ in part]))
            ended += a.take_ended()
        a.finish()
        ended += a.take_ended()
        results.append(
            (
                sorted(
                    (f.key, f.orig, f.history, f.conn_state(), f.pkts1, f.pkts2, f.octets2, f.last_ns)
                    for f in ended
                ),
                b"".join(p for s in a.sinks.values() for p in s.parts),
                a.drops,
            )
        )
    assert results[0] == results[1]
    assert sum(1 for r in results[0][0] if r[2][:1] not in ("S", "^")) > 5, "midstream flows were picked up"


# ------------------------------------------------------------------ the counters on /metrics (live cell)
def test_new_counters_are_prometheus_metrics(tmp_path):
    """Crafted captures injected into a running cell: the anomaly counters appear on its metrics endpoint."""
    from tests.cell.runner import LiveCell, wait_for, write_config

    home = tmp_path / "home"
    rules = "pcap:\n  if: pcap\ntcp_default:\n  if: default\n  proto: TCP\n"
    cfg = write_config(tmp_path / "c.yaml", home, rules)
    c = Conv(bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2)), 40001, 80, 1000, 5000)
    c.put(c.frame(True, 1000, 0, SYN))
    c.put(c.frame(False, 5000, 1001, SYN | ACK))
    c.put(c.frame(True, 1001, 5001, ACK | PSH, b"hello"))
    c.put(c.frame(True, 1006 + (1 << 30), 5001, RST | ACK))  # out of window
    c.put(c.frame(True, 1006 + (1 << 31), 5001, ACK | PSH, b"stray"))  # far away
    frames = sorted(c.frames + _handshake_twice(b"").frames, key=lambda f: f[0])
    pcap = tmp_path / "anomalies.pcap"
    with PcapWriter(str(pcap)) as w:
        for ts, f in frames:
            w.write(ts, f)
    cell = LiveCell(cfg, home)
    try:
        wait_for(lambda: cell.metrics().get('celltap_cell_flows_live{cell="0"}') is not None, what="metrics")
        cell.inject_pcap(pcap)
        key = 'celltap_cell_dropped_packets_total{cell="0",reason="%s"}'
        wait_for(lambda: cell.metrics().get(key % "tcp_rst_out_of_window") == 1, what="the RST counted")
        m = cell.metrics()
        assert m[key % "tcp_seq_out_of_window"] == 1
        assert m['celltap_cell_tcp_resyncs_total{cell="0"}'] == 1
        assert m['celltap_cell_tcp_gap_bytes_total{cell="0"}'] == 0
    finally:
        code, err = cell.stop()
    assert code == 0, err
