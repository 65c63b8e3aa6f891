"""Collector ingestion over real sockets: malformed input, TCP, withdrawal, expiry, sequence gaps,
sampling, allow-list, registry-shared templates, config errors, capture inspection, SO_REUSEPORT."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing as mp
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from celltap.collector.config import CollectorConfig, ListenAddress
from celltap.collector.ingest import IngestConfig, Ingestor
from celltap.collector.metrics import CollectorMetrics
from celltap.collector.service import CollectorService
from celltap.collector.template_store import KVTemplateStore
from prometheus_client import CollectorRegistry

from celltap.ipfix import MessageEncoder, template_from_names
from celltap.ipfix.encoder import RefreshPolicy
from celltap.ipfix.export import TcpExporter, biflow_templates
from tests.ipfix.oracles import REPO, datagrams_to_pcap, free_port

SIMPLE = [
    ("sourceIPv4Address", None),
    ("destinationIPv4Address", None),
    ("octetDeltaCount", None),
    ("packetDeltaCount", None),
]


def columns(n: int, base: int = 0) -> dict:
    return {
        "sourceIPv4Address": np.arange(n, dtype=np.uint32) + 0x0A000000 + base,
        "destinationIPv4Address": np.full(n, 0xC0A80001, np.uint32),
        "octetDeltaCount": np.arange(n, dtype=np.uint64) * 10 + 1,
        "packetDeltaCount": np.ones(n, np.uint64),
    }


class Sink:
    """Hook that keeps every batch (thread workers only)."""

    def __init__(self) -> None:
        self.batches: list = []

    def factory(self, index: int):
        return self.batches.extend

    def records(self, exporter: str | None = None) -> int:
        return sum(len(b) for b in self.batches if exporter is None or b.exporter == exporter)

    def total(self, name: str, exporter: str | None = None) -> int:
        return sum(
            int(b.records[name].sum())
            for b in self.batches
            if (exporter is None or b.exporter == exporter) and name in (b.records.dtype.names or ())
        )


def sender(src: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    return s


def wait_for(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def start_service(**kw) -> tuple[CollectorService, Sink, int, CollectorMetrics]:
    port = kw.pop("port", None) or free_port()
    cfg = CollectorConfig(listen=[ListenAddress("udp", "127.0.0.1", port)], workers=1, metrics_port=0, **kw)
    sink = Sink()
    metrics = CollectorMetrics(CollectorRegistry())
    svc = CollectorService(cfg, sink.factory, metrics=metrics, processes=False)
    svc.start()
    return svc, sink, port, metrics


def ipfix_msg(odid: int, seq: int, body: bytes) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(body), int(time.time()), seq, odid) + body


def test_malformed_input_counted_logged_and_others_served(caplog):
    caplog.set_level(logging.WARNING, logger="celltap.collector")
    svc, sink, port, metrics = start_service(max_templates_per_domain=50)
    good, bad = sender("127.0.0.77"), sender("127.0.0.66")
    enc = MessageEncoder(1, [template_from_names(300, SIMPLE)], refresh=RefreshPolicy(None, None))
    target = ("127.0.0.1", port)
    try:
        flood = b"".join(struct.pack("!HHHH", 1000 + i, 1, 8, 4) for i in range(2000))
        hostile = [
            b"\x00\x0a\x00",  # truncated header
            ipfix_msg(1, 0, struct.pack("!HH", 300, 400) + b"\0" * 8),  # set length past message
            ipfix_msg(1, 0, struct.pack("!HH", 300, 2)),  # set length < 4
            ipfix_msg(1, 0, struct.pack("!HHHH", 2, 8, 301, 65535)),  # 65535 fields
            ipfix_msg(1, 0, struct.pack("!HHHHHHHH", 2, 16, 302, 3, 8, 4, 1, 8)),  # fields past the set
            struct.pack("!HHIIII", 9, 1, 0, 0, 0, 1) + struct.pack("!HHHH", 0, 8, 303, 0),  # v9 0 fields
            ipfix_msg(1, 0, struct.pack("!HH", 999, 12) + b"\1" * 8),  # data, unknown template
            ipfix_msg(2, 0, struct.pack("!HH", 2, 4 + len(flood)) + flood),  # template flood
            b"\x00\x07" + b"\0" * 30,  # not IPFIX / NetFlow
        ]
        for i, m in enumerate(enc.encode(300, columns(400), time.time())):
            good.sendto(m, target)
            bad.sendto(hostile[i % len(hostile)], target)
        for m in hostile:
            bad.sendto(m, target)
        wait_for(lambda: sink.records("127.0.0.77") == 400)
        time.sleep(0.3)
    finally:
        svc.stop()
        good.close()
        bad.close()
    t = svc.totals
    assert sink.records("127.0.0.77") == 400 and sink.total("octetDeltaCount", "127.0.0.77") == sum(
        columns(400)["octetDeltaCount"]
    )
    assert sink.records("127.0.0.66") == 0
    # 7 good messages: hostile[0..6] went once inside the loop, then every hostile message once more.
    assert t.dropped_messages["malformed"] == 7  # truncated header x2, set past x2, set < 4 x2, version
    assert t.dropped_sets["malformed"] == 6  # the three bad templates, twice each
    assert t.dropped_sets["no_template"] == 2
    # The flood: 50 templates kept for that domain, the rest rejected and counted; memory stays bounded.
    assert t.template_events[("127.0.0.66", "added")] == 50
    assert t.template_events[("127.0.0.66", "rejected")] >= 1950
    assert t.sequence_lost.get(("127.0.0.77", 1, "records"), 0) == 0
    assert any("set_past_message" in r.getMessage() for r in caplog.records)
    assert any("more than 50 templates" in r.getMessage() for r in caplog.records)
    assert metrics.dropped_messages.labels("malformed")._value.get() == t.dropped_messages["malformed"]


def test_ingestor_memory_bounded_under_flood_of_domains_and_templates():
    ing = Ingestor(IngestConfig(max_templates_per_domain=10, max_domains=100))
    for d in range(300):
        body = b"".join(struct.pack("!HHHH", 256 + i, 1, 8, 4) for i in range(30))
        msg = ipfix_msg(d, 0, struct.pack("!HH", 2, 4 + len(body)) + body)
        ing.feed([(f"10.0.{d // 250}.{d % 250}", msg)], 0.0)
    assert ing.template_count() <= 100 * 10
    assert ing.stats.dropped_messages["too_many_domains"] == 200


def test_tcp_session_withdrawal_and_end():
    port = free_port(socket.SOCK_STREAM)
    cfg = CollectorConfig(listen=[ListenAddress("tcp", "127.0.0.1", port)], workers=1, metrics_port=0)
    sink = Sink()
    svc = CollectorService(cfg, sink.factory, processes=False)
    svc.start()
    try:
        exp = TcpExporter(f"127.0.0.1:{port}", 5, [template_from_names(300, SIMPLE)])
        exp.export(300, columns(1000))
        wait_for(lambda: sink.records() == 1000)
        exp.withdraw([300])
        # Data for the withdrawn template must not decode.
        exp.sock.sendall(
            exp.encoder._message([struct.pack("!HH", 300, 4 + 24) + b"\1" * 24], time.time(), 1, False)
        )
        wait_for(lambda: svc.totals.dropped_sets.get("no_template", 0) >= 1)
        exp.close()
        time.sleep(0.3)
    finally:
        svc.stop()
    ev = svc.totals.template_events
    assert ev[("127.0.0.1", "added")] == 1 and ev[("127.0.0.1", "withdrawn")] == 1
    assert sink.total("octetDeltaCount") == sum(columns(1000)["octetDeltaCount"])


def test_udp_template_expiry_and_sequence_gaps():
    t = template_from_names(300, SIMPLE)
    enc = MessageEncoder(3, [t], refresh=RefreshPolicy(None, None), mtu=200)
    msgs = enc.encode(300, columns(50), 1000.0)
    seqs = [struct.unpack_from("!I", m, 8)[0] for m in msgs] + [50]
    per = [b - a for a, b in itertools.pairwise(seqs)]
    ing = Ingestor(IngestConfig(template_expiry=60))
    lost = per[2] + per[3]
    out = ing.feed([("192.0.2.1", m) for i, m in enumerate(msgs) if i not in (2, 3)], 1000.0)
    assert sum(len(b) for b in out) == 50 - lost
    assert ing.stats.sequence_gaps[("192.0.2.1", 3)] == 1
    assert ing.stats.sequence_lost[("192.0.2.1", 3, "records")] == lost
    # 61 s later the template has expired: data is dropped and counted until templates come again.
    late = enc.encode(300, columns(5), 1061.0)
    assert ing.feed([("192.0.2.1", late[0])], 1061.0) == []
    assert ing.stats.template_events[("192.0.2.1", "expired")] == 1
    assert ing.stats.dropped_sets["no_template"] == 1
    out = ing.feed([("192.0.2.1", enc.templates_message(1062.0))] + [("192.0.2.1", m) for m in late], 1062.0)
    assert sum(len(b) for b in out) == 5


def test_sampling_options_scale_counters_ipfix_and_v5():
    t = template_from_names(300, SIMPLE)
    opt = template_from_names(
        310,
        [("observationDomainId", None), ("samplingPacketInterval", None), ("samplingPacketSpace", None)],
        scope_count=1,
    )
    enc = MessageEncoder(4, [t, opt])
    now = time.time()
    before = enc.encode(300, columns(3), now)
    msgs = enc.encode(
        310, {"observationDomainId": [4], "samplingPacketInterval": [1], "samplingPacketSpace": [99]}, now
    )
    after = enc.encode(300, columns(3), now)
    out = Ingestor().feed([("192.0.2.9", m) for m in before + msgs + after], now)
    data = [b for b in out if b.template_id == 300]
    assert list(data[0].records["octetDeltaCount"]) == [1, 11, 21]  # before the announcement: unscaled
    assert list(data[1].records["octetDeltaCount"]) == [100, 1100, 2100]
    assert list(data[1].records["packetDeltaCount"]) == [100, 100, 100]
    v5 = struct.pack("!HHIIIIBBH", 5, 1, 0, 0, 0, 0, 0, 0, (1 << 14) | 10) + struct.pack(
        "!IIIHHIIIIHHBBBBHHBBH", 1, 2, 0, 0, 0, 3, 300, 0, 0, 1, 2, 0, 0, 6, 0, 0, 0, 0, 0, 0
    )
    b = Ingestor().feed([("192.0.2.10", v5)], now)[0]
    assert (int(b.records["packetDeltaCount"][0]), int(b.records["octetDeltaCount"][0])) == (30, 3000)


def test_allow_list_over_udp():
    svc, sink, port, _ = start_service(allow=["127.0.0.5/32"])
    enc = MessageEncoder(1, [template_from_names(300, SIMPLE)])
    try:
        for src in ("127.0.0.5", "127.0.0.6"):
            s = sender(src)
            e = MessageEncoder(1, [template_from_names(300, SIMPLE)])
            for m in e.encode(300, columns(10), time.time()):
                s.sendto(m, ("127.0.0.1", port))
            s.close()
        wait_for(lambda: svc.totals.dropped_messages.get("not_allowed", 0) >= 1 and sink.records() == 10)
    finally:
        svc.stop()
    assert enc and {b.exporter for b in sink.batches} == {"127.0.0.5"}


def test_cold_start_decodes_with_templates_from_the_registry(tmp_path):
    """A second collector that never saw the template decodes at once from the shared registry."""
    from celltap.registry import open_registry

    reg_a = open_registry(f"file://{tmp_path}/reg")
    reg_b = open_registry(f"file://{tmp_path}/reg")
    first = Ingestor(store=KVTemplateStore(reg_a, "test"))
    second = Ingestor(store=KVTemplateStore(reg_b, "test"))
    t = biflow_templates()[0]
    enc = MessageEncoder(12, [t], refresh=RefreshPolicy(None, None))
    cols = {
        "sourceIPv4Address": np.arange(5, dtype=np.uint32),
        "applicationName": ["http"] * 5,
        "octetDeltaCount": np.arange(5, dtype=np.uint64),
    }
    msgs = enc.encode(256, cols, 1.0) + enc.encode(256, cols, 2.0)
    assert sum(len(b) for b in first.feed([("198.51.100.7", msgs[0])], 1.0)) == 5
    assert reg_a.get("/celltap/test/templates/198.51.100.7/12/256") is not None
    out = second.feed([("198.51.100.7", msgs[1])], 2.0)  # data only: no template in this message
    assert [list(b.records["applicationName"]) for b in out] == [["http"] * 5]
    assert second.stats.template_events[("198.51.100.7", "restored")] == 1
    # A withdrawal removes it from the registry too.
    first.feed([("198.51.100.7", MessageEncoder(12, [t]).withdrawal_message([256], 3.0))], 3.0)
    assert reg_a.get("/celltap/test/templates/198.51.100.7/12/256") is None


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "celltap.cli", "collector", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(REPO),
    )


def test_config_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("listen: [udp://127.0.0.1:4739]\nworkerz: 2\n")
    r = run_cli("--config", str(bad))
    assert r.returncode == 2 and "unknown key 'workerz'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    bad.write_text("listen: [http://127.0.0.1:4739]\n")
    r = run_cli("--config", str(bad))
    assert r.returncode == 2 and "listen[0]" in r.stderr
    bad.write_text("workers: many\n")
    r = run_cli("--config", str(bad))
    assert r.returncode == 2 and "workers" in r.stderr


def test_read_pcap_json_prints_records_with_iana_names(tmp_path):
    enc = MessageEncoder(21, biflow_templates())
    v6 = {
        "sourceIPv6Address": np.frombuffer(bytes.fromhex("20010db8" + "00" * 11 + "01") * 3, "V16"),
        "destinationIPv6Address": np.frombuffer(bytes.fromhex("20010db8" + "00" * 11 + "02") * 3, "V16"),
        "sourceTransportPort": [1, 2, 3],
        "destinationTransportPort": [443, 443, 443],
        "protocolIdentifier": [6, 6, 6],
        "octetDeltaCount": [10, 20, 30],
        "packetDeltaCount": [1, 2, 3],
        "reverseOctetDeltaCount": [5, 6, 7],
        "reversePacketDeltaCount": [1, 1, 1],
        "flowStartMilliseconds": [1700000000000] * 3,
        "flowEndMilliseconds": [1700000000500] * 3,
        "flowEndReason": [3, 3, 3],
        "applicationName": ["tls", "tls", "quic"],
    }
    msgs = enc.encode(257, v6, 1700000001.0)
    pcap = tmp_path / "x.pcap"
    datagrams_to_pcap(msgs, pcap, 4739)
    r = run_cli("--read-pcap", str(pcap), "--json")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["applicationName"] for x in recs] == ["tls", "tls", "quic"]
    assert recs[0]["sourceIPv6Address"] == "2001:db8::1"
    assert recs[0]["destinationIPv6Address"] == "2001:db8::2"
    assert [x["reverseOctetDeltaCount"] for x in recs] == [5, 6, 7]
    assert recs[0]["observationDomainId"] == 21 and recs[0]["templateId"] == 257


def _count_hook(q):
    def factory(index: int):
        def sink(batches):
            q.put(
                (
                    sum(len(b) for b in batches),
                    sum(int(b.records["octetDeltaCount"].sum()) for b in batches),
                    sum(int(b.records["packetDeltaCount"].sum()) for b in batches),
                )
            )

        return sink

    return factory


def test_reuseport_workers_take_loadgen_routers_and_serve_metrics():
    """Two worker processes on one port, four emulated routers: everything sent is received or counted."""
    from celltap.loadgen.ipfix_cli import run as loadgen_run

    port, mport = free_port(), free_port(socket.SOCK_STREAM)
    cfg = CollectorConfig(listen=[ListenAddress("udp", "127.0.0.1", port)], workers=2, metrics_port=mport)
    q = mp.get_context("fork").Queue()
    svc = CollectorService(cfg, _count_hook(q), processes=True)
    svc.start()
    try:
        sent = loadgen_run(f"127.0.0.1:{port}", 100_000, 4, 1.5)
        time.sleep(1.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    finally:
        svc.stop()
    got = [0, 0, 0]
    while not q.empty():
        for i, v in enumerate(q.get()):
            got[i] += v
    t = svc.totals
    assert len(t.records) == 4  # four exporters seen
    lost = t.total("sequence_lost")
    assert got[0] == t.total("records") and got[0] + lost == sent["records"]
    if lost == 0:
        assert (got[1], got[2]) == (sent["octets"], sent["packets"])
    for name in (
        "celltap_collector_records_total",
        "celltap_collector_messages_total",
        "celltap_collector_received_bytes_total",
        "celltap_collector_template_events_total",
        "celltap_collector_workers",
    ):
        assert name in text
    assert 'celltap_collector_records_total{exporter="127.0.0.10"}' in text


def test_loadgen_cli_prints_what_it_sent():
    port = free_port()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # holds everything until we read
    s.bind(("127.0.0.1", port))
    s.settimeout(2)
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "celltap.loadgen.ipfix_cli",
                f"127.0.0.1:{port}",
                "--rate",
                "20000",
                "--exporters",
                "2",
                "--records",
                "2000",
                "--version",
                "9",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
        assert r.returncode == 0, r.stderr
        sent = json.loads(r.stdout)
        got = []
        while True:
            try:
                got.append(s.recvfrom(65535))
            except TimeoutError:
                break
    finally:
        s.close()
    out = Ingestor().feed([(a[0], d) for d, a in got], time.time())
    assert {a[0] for _, a in got} == {"127.0.0.10", "127.0.0.11"}
    assert sum(len(b) for b in out) == sent["records"] == 2000
    assert sum(int(b.records["octetDeltaCount"].sum()) for b in out) == sent["octets"]


def test_killed_workers_restart_and_decode_at_once_with_shared_templates():
    """SIGKILL every UDP worker: they come back, and data without templates decodes at once."""
    import os
    import signal

    port = free_port()
    cfg = CollectorConfig(listen=[ListenAddress("udp", "127.0.0.1", port)], workers=2, metrics_port=0)
    q = mp.get_context("fork").Queue()
    svc = CollectorService(cfg, _count_hook(q), processes=True)
    svc.start()
    enc = MessageEncoder(8, [template_from_names(300, SIMPLE)], refresh=RefreshPolicy(None, None))
    s = sender("127.0.0.1")
    try:
        for m in enc.encode(300, columns(100), time.time()):
            s.sendto(m, ("127.0.0.1", port))
        wait_for(lambda: svc.totals.total("records") == 100)
        for p in svc._procs:
            os.kill(p.pid, signal.SIGKILL)
        wait_for(lambda: svc.restarts == 2 and all(p.is_alive() for p in svc._procs))
        for a in svc._proc_args:
            assert a[6].wait(10)  # the restarted workers are bound again
        for m in enc.encode(300, columns(50, base=1000), time.time()):  # no template in these
            s.sendto(m, ("127.0.0.1", port))
        wait_for(lambda: svc.totals.total("records") == 150)
    finally:
        s.close()
        svc.stop()
    assert svc.totals.template_events[("127.0.0.1", "restored")] == 1
    assert svc.totals.dropped_sets.get("no_template", 0) == 0


@pytest.mark.parametrize("use_recvmmsg", [True, False])
def test_kernel_drops_are_read_back_as_buffer_full(use_recvmmsg):
    """A worker that does not read while its small receive buffer overflows counts what the kernel dropped."""
    from celltap.collector.udp_server import UdpWorker, open_udp_socket

    port = free_port()
    sock = open_udp_socket(ListenAddress("udp", "127.0.0.1", port), 8192)
    ing = Ingestor()
    got: list = []
    worker = UdpWorker(sock, ing, got.extend, use_recvmmsg=use_recvmmsg)
    assert (worker.rx is not None) == use_recvmmsg
    enc = MessageEncoder(1, [template_from_names(300, SIMPLE)], refresh=RefreshPolicy(None, 1))
    msgs = enc.encode(300, columns(200 * 50), time.time())  # every message carries the template
    s = sender("127.0.0.1")
    try:
        for m in msgs:
            s.sendto(m, ("127.0.0.1", port))
        while worker.poll_once(0.2):
            pass
        worker.report()
    finally:
        s.close()
        sock.close()
    received = worker.datagrams
    drained = ing.stats.drain()
    assert received < len(msgs)
    assert drained["dropped_messages"]["buffer_full"] == len(msgs) - received


def test_cell_biflow_exporter_to_collector_over_udp_and_tcp():
    from celltap.ipfix.export import BiflowExporter

    n = 250
    cols = {
        "sourceIPv4Address": np.arange(n, dtype=np.uint32) + 0x0A000001,
        "destinationIPv4Address": np.full(n, 0x0A0000FE, np.uint32),
        "sourceTransportPort": np.arange(n, dtype=np.uint16) + 1024,
        "destinationTransportPort": np.full(n, 80, np.uint16),
        "protocolIdentifier": np.full(n, 6, np.uint8),
        "octetDeltaCount": np.arange(n, dtype=np.uint64) * 3,
        "packetDeltaCount": np.ones(n, np.uint64),
        "reverseOctetDeltaCount": np.arange(n, dtype=np.uint64) * 7,
        "reversePacketDeltaCount": np.full(n, 2, np.uint64),
        "flowStartMilliseconds": np.full(n, 1_700_000_000_000, np.uint64),
        "flowEndMilliseconds": np.full(n, 1_700_000_000_900, np.uint64),
        "flowEndReason": np.full(n, 1, np.uint8),
        "applicationName": ["http0" if i % 2 else "tcp_default" for i in range(n)],
    }
    uport, tport = free_port(), free_port(socket.SOCK_STREAM)
    cfg = CollectorConfig(
        listen=[ListenAddress("udp", "127.0.0.1", uport), ListenAddress("tcp", "127.0.0.1", tport)],
        workers=1,
        metrics_port=0,
    )
    sink = Sink()
    svc = CollectorService(cfg, sink.factory, processes=False)
    svc.start()
    try:
        udp_exp = BiflowExporter(f"127.0.0.1:{uport}", cell_id=3)
        tcp_exp = BiflowExporter(f"127.0.0.1:{tport}", cell_id=4, transport="tcp")
        udp_exp.export(cols)
        tcp_exp.export(cols)
        wait_for(lambda: sink.records() == 2 * n)
        udp_exp.close()
        tcp_exp.close()
    finally:
        svc.stop()
    for domain in (3, 4):
        recs = np.concatenate([b.records for b in sink.batches if b.domain == domain])
        assert list(recs["applicationName"]) == cols["applicationName"]
        assert int(recs["reverseOctetDeltaCount"].sum()) == int(cols["reverseOctetDeltaCount"].sum())
        assert list(recs["sourceTransportPort"]) == list(cols["sourceTransportPort"])


def test_v9_per_sampler_rates_scale_each_record():
    """NetFlow v9 options data maps sampler ids to rates; each data record is scaled by its sampler's rate."""

    def flowset(fid: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack("!HH", fid, 4 + len(body)) + body

    opt_tpl = struct.pack("!HHH", 400, 4, 8) + struct.pack("!HH", 1, 4) + struct.pack("!HHHH", 48, 1, 50, 4)
    data_tpl = struct.pack("!HH", 401, 3) + struct.pack("!HHHHHH", 1, 4, 2, 4, 48, 1)
    opt_data = struct.pack("!IBI", 0, 1, 10) + struct.pack("!IBI", 0, 2, 100)
    data = struct.pack("!IIB", 1000, 2, 1) + struct.pack("!IIB", 1000, 2, 2) + struct.pack("!IIB", 7, 1, 9)
    body = flowset(0, data_tpl) + flowset(1, opt_tpl) + flowset(400, opt_data) + flowset(401, data)
    msg = struct.pack("!HHIIII", 9, 6, 0, 0, 0, 77) + body
    out = Ingestor().feed([("192.0.2.20", msg)], time.time())
    recs = next(b.records for b in out if b.template_id == 401)
    # sampler 9 is unknown: it keeps the domain's latest rate (100, the last announced).
    assert list(recs["octetDeltaCount"]) == [10_000, 100_000, 700]
    assert list(recs["packetDeltaCount"]) == [20, 200, 100]


def test_recvmmsg_receiver_reports_lengths_and_sources_ipv4_and_ipv6():
    from celltap.collector.recvmmsg import BatchReceiver

    for family, host, src in ((socket.AF_INET, "127.0.0.1", "127.0.0.42"), (socket.AF_INET6, "::1", "::1")):
        rx_sock = socket.socket(family, socket.SOCK_DGRAM)
        rx_sock.bind((host, 0))
        rx_sock.setblocking(False)
        tx = socket.socket(family, socket.SOCK_DGRAM)
        tx.bind((src, 0))
        rx = BatchReceiver(rx_sock, slots=8, slot_size=2048)
        sent = [bytes([i]) * (10 + 100 * i) for i in range(12)]
        for d in sent:
            tx.sendto(d, rx_sock.getsockname()[:2])
        time.sleep(0.05)
        got = []
        while batch := rx.receive():
            got += [(e, bytes(m)) for e, m in batch]
        tx.close()
        rx_sock.close()
        assert got == [(src, d) for d in sent]


def _batches_by_key(batches) -> dict:
    out: dict = {}
    for b in batches:
        out.setdefault((b.exporter, b.domain, b.template_id), []).append(b.records)
    return {k: np.concatenate(v) for k, v in out.items()}


def test_vectorised_slot_path_equals_general_path():
    """The numpy path over a recvmmsg batch gives the same records and counters as Ingestor.feed."""
    from celltap.collector.recvmmsg import BatchReceiver
    from celltap.collector.slot_batch import feed_slots

    rx_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx_sock.bind(("127.0.0.1", 0))
    rx_sock.setblocking(False)
    rx = BatchReceiver(rx_sock, slots=256, slot_size=2048)
    t1 = template_from_names(300, SIMPLE)
    t2 = template_from_names(
        301, [("sourceIPv4Address", None), ("octetDeltaCount", 3), ("packetDeltaCount", 2)]
    )
    fast, general = Ingestor(), Ingestor()
    encoders = {
        src: MessageEncoder(5, [t1, t2], refresh=RefreshPolicy(None, None))
        for src in ("127.0.0.31", "127.0.0.32")
    }
    socks = {src: sender(src) for src in encoders}
    # Templates first (general path for both ingestors), then data-only batches.
    for src, enc in encoders.items():
        m = enc.templates_message(0.0)
        fast.feed([(src, m)], 0.0)
        general.feed([(src, m)], 0.0)
    rng = np.random.default_rng(5)
    engaged = 0
    for round_ in range(3):
        for src, enc in encoders.items():
            for tid in (300, 301):
                n = int(rng.integers(1, 200))
                cols = columns(n, base=round_ * 1000)
                msgs = enc.encode(tid, cols, 1.0)
                for i, m in enumerate(msgs):
                    if not (round_ == 1 and i == 1):  # lose one message: a sequence gap
                        socks[src].sendto(m, rx_sock.getsockname())
        time.sleep(0.05)
        n = rx.recv()
        assert n > 0
        got = rx.rows(n)
        assert got is not None
        out_fast = feed_slots(fast, *got, now=1.0)
        assert out_fast is not None
        engaged += 1
        out_general = general.feed(rx.pairs(n), 1.0)
        a, b = _batches_by_key(out_fast), _batches_by_key(out_general)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].tobytes() == b[k].tobytes(), k
    for s in socks.values():
        s.close()
    rx_sock.close()
    assert engaged == 3
    sf, sg = fast.stats.drain(), general.stats.drain()
    for name in ("messages", "records", "bytes", "sequence_gaps", "sequence_lost", "sequence_reordered"):
        assert sf[name] == sg[name], name
    assert sum(sf["sequence_lost"].values()) > 0


def test_vectorised_slot_path_declines_batches_it_cannot_take():
    from celltap.collector.slot_batch import feed_slots

    t = template_from_names(300, SIMPLE)
    enc = MessageEncoder(5, [t], refresh=RefreshPolicy(None, None))
    data = enc.encode(300, columns(10), 1.0)[0]  # carries the template set: not for this path
    rows = np.zeros((2, 2048), np.uint8)
    rows[0, : len(data)] = np.frombuffer(data, np.uint8)
    ing = Ingestor()
    addrs = np.array([0x7F000001], np.uint32)
    assert feed_slots(ing, rows, np.array([len(data)]), addrs, {0x7F000001: "127.0.0.1"}, 1.0) is None
    assert ing.stats.drain()["messages"] == {}  # nothing was changed


def test_restarted_collector_process_decodes_at_once_via_file_registry(tmp_path):
    """Collector A learns a template and shares it in the registry; collector B, started later with the
    same registry, decodes data that carries no template, and both register under collectors/."""
    from celltap.registry import open_registry
    from tests.ipfix.oracles import CollectorProcess

    port = free_port()
    conf = tmp_path / "collector.yaml"
    conf.write_text(
        f"listen: [udp://127.0.0.1:{port}]\nworkers: 1\nmetrics_port: 0\n"
        f"registry: file://{tmp_path}/reg\ncluster: t\ncollector_id: col-a\n"
    )
    enc = MessageEncoder(44, [template_from_names(300, SIMPLE)], refresh=RefreshPolicy(None, None))
    first = enc.encode(300, columns(30), time.time())
    later = enc.encode(300, columns(20, base=500), time.time())
    s = sender("127.0.0.1")
    reg = open_registry(f"file://{tmp_path}/reg")
    a = CollectorProcess(["--config", str(conf), "--json"])
    try:
        for m in first:
            s.sendto(m, ("127.0.0.1", port))
        wait_for(lambda: reg.get("/celltap/t/templates/127.0.0.1/44/300") is not None)
        wait_for(lambda: "/celltap/t/collectors/col-a" in reg.get_prefix("/celltap/t/collectors/"))
    finally:
        recs_a, _, _ = a.stop()
    conf.write_text(conf.read_text().replace("col-a", "col-b"))
    b = CollectorProcess(["--config", str(conf), "--json"])
    try:
        for m in later:
            s.sendto(m, ("127.0.0.1", port))
        time.sleep(1.0)
    finally:
        recs_b, summary_b, err_b = b.stop()
        s.close()
    assert len(recs_a) == 30
    assert [r["octetDeltaCount"] for r in recs_b] == list(columns(20, base=500)["octetDeltaCount"])
    assert summary_b["dropped_sets"] == {}, err_b
