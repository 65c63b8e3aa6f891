"""Real exporters (softflowd, pmacctd nfprobe) -> the collector CLI; tshark and the `ipfix` package
check the same datagrams independently."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.ipfix.oracles import (
    CollectorProcess,
    RecordingRelay,
    datagrams_to_pcap,
    free_port,
    tshark_fields,
    tshark_problems,
)
from tests.ipfix.traffic import write_capture

pytestmark = pytest.mark.slow


def run_exporter(kind: str, version: int, pcap: Path, tmp_path: Path, port: int) -> None:
    """Let softflowd or pmacctd export every flow of `pcap` to 127.0.0.1:port."""
    if kind == "softflowd":
        exe = require_tool("softflowd")
        # -d keeps it in the foreground; it exits after the file; no -c (it would wait forever).
        subprocess.run(
            [exe, "-d", "-r", str(pcap), "-n", f"127.0.0.1:{port}", "-v", str(version)],
            capture_output=True,
            timeout=60,
            check=True,
        )
        return
    exe = require_tool("pmacctd")
    conf = tmp_path / f"pmacctd-{version}.conf"
    conf.write_text(
        "daemonize: false\n"
        f"pcap_savefile: {pcap}\n"
        "pcap_savefile_wait: true\n"  # stay up after the file so the nfprobe plugin can flush
        "plugins: nfprobe\n"
        f"nfprobe_receiver: 127.0.0.1:{port}\n"
        f"nfprobe_version: {version}\n"
        "aggregate: src_host, dst_host, src_port, dst_port, proto, tos\n"
        "nfprobe_timeouts: expint=1:general=1:maxlife=1\n"
        "plugin_buffer_size: 1024\n"
        "plugin_pipe_size: 1024000\n"
    )
    proc = subprocess.Popen(
        [exe, "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    # pmacctd sleeps 2 s before reading a savefile; wait for its word that it has read it all.
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            seen += line
            if "finished reading PCAP capture file" in line or not line:
                break
    assert "finished reading" in seen, seen[-2000:]
    time.sleep(0.5)  # let the core hand its last buffer to the plugin
    proc.send_signal(signal.SIGINT)  # on shutdown nfprobe expires and exports every flow
    proc.communicate(timeout=30)


@pytest.mark.parametrize(
    "kind,version", [("softflowd", 10), ("softflowd", 9), ("pmacctd", 10), ("pmacctd", 9)]
)
def test_exporter_to_collector_totals_match(kind, version, tmp_path):
    tshark = require_tool("tshark")
    assert tshark
    pcap = tmp_path / "flows.pcap"
    expected = write_capture(pcap)
    cport = free_port()
    collector = CollectorProcess(["--listen", f"udp://127.0.0.1:{cport}", "--json"])
    relay = RecordingRelay(cport)
    try:
        run_exporter(kind, version, pcap, tmp_path, relay.port)
        relay.wait_quiet(1.5)
        time.sleep(0.5)
    finally:
        relay.close()
        records, summary, err = collector.stop()
    assert relay.datagrams, f"{kind} exported nothing"
    flows = [r for r in records if "octetDeltaCount" in r]
    got_octets = sum(r["octetDeltaCount"] for r in flows)
    got_packets = sum(r["packetDeltaCount"] for r in flows)

    # Oracle 1: tshark's NetFlow/IPFIX dissector on the very datagrams the collector was sent.
    exported = tmp_path / "export.pcap"
    datagrams_to_pcap(relay.datagrams, exported, relay.port)
    assert tshark_problems(exported, relay.port) == 0
    rows = tshark_fields(exported, relay.port, ["cflow.octets", "cflow.packets", "cflow.srcport"])
    ts_octets = sum(int(v) for row in rows for v in row[0])
    ts_packets = sum(int(v) for row in rows for v in row[1])
    ts_flows = sum(len(row[2]) for row in rows)
    assert (len(flows), got_octets, got_packets) == (ts_flows, ts_octets, ts_packets)
    assert summary["dropped_messages"] == {} and summary["dropped_sets"] == {}, err

    # Oracle 2: the capture itself. softflowd exports exactly the flows of a file.  pmacctd 1.7.7
    # reading a savefile is not exact (its core/plugin buffering re-delivers a few packets at the end
    # of the file), so for it the reference is what tshark saw it export, checked above.
    if kind == "softflowd":
        assert (len(flows), got_octets, got_packets) == (expected.flows, expected.octets, expected.packets)
    else:
        assert len(flows) > 0
    if version == 9:
        assert summary["sequence_lost"] == 0, "v9 sequence numbers count packets and none were lost"

    # Field-level agreement for a few flows: addresses and ports as tshark shows them.
    ts_src = [v for row in tshark_fields(exported, relay.port, ["cflow.srcaddr"]) for v in row[0]]
    assert sorted(ts_src) == sorted(r["sourceIPv4Address"] for r in flows)


def test_softflowd_ipfix_also_decoded_by_ipfix_package(tmp_path):
    """The `ipfix` package decodes softflowd's IPFIX to the same totals as the collector's decoder."""
    import ipfix.ie
    import ipfix.message
    from celltap.collector.ingest import Ingestor

    pcap = tmp_path / "flows.pcap"
    expected = write_capture(pcap)
    relay = RecordingRelay(None)
    try:
        run_exporter("softflowd", 10, pcap, tmp_path, relay.port)
        relay.wait_quiet(1.0)
    finally:
        relay.close()
    ipfix.ie.clear_infomodel()
    ipfix.ie.use_iana_default()
    mb = ipfix.message.MessageBuffer()
    theirs = []
    for d in relay.datagrams:
        mb.from_bytes(d)
        theirs.extend(r for r in mb.namedict_iterator() if "octetDeltaCount" in r)
    batches = Ingestor().feed([("127.0.0.1", d) for d in relay.datagrams], time.time())
    ours = [b for b in batches if "octetDeltaCount" in (b.records.dtype.names or ())]
    assert len(theirs) == sum(len(b) for b in ours) == expected.flows
    assert (
        sum(r["octetDeltaCount"] for r in theirs)
        == sum(int(b.records["octetDeltaCount"].sum()) for b in ours)
        == expected.octets
    )


@pytest.mark.parametrize(
    "version,limit", [(10, "--records"), (9, "--records"), (10, "--duration"), (9, "--duration")]
)
def test_nfcapd_counts_what_loadgen_says_it_sent(tmp_path, version, limit):
    """nfdump's collector is the oracle for loadgen's emulated routers (and so for our encoder);
    --records takes the per-message send loop, --duration the sendmmsg pool sender."""
    import re
    import sys

    from tests.ipfix.oracles import REPO

    exe = require_tool("nfcapd")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-b", "127.0.0.1", "-p", str(port), "-w", str(tmp_path), "-t", "3600", "-B", str(8 << 20)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        r = subprocess.run(
            [
                *(sys.executable, "-m", "celltap.loadgen.ipfix_cli", f"127.0.0.1:{port}", "--rate", "50000"),
                *("--exporters", "3", "--version", str(version)),
                *((limit, "30000") if limit == "--records" else (limit, "0.6")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(REPO),
        )
        assert r.returncode == 0, r.stderr
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)

    sent = json.loads(r.stdout)
    m = re.search(r"Flows: (\d+), Packets: (\d+), Bytes: (\d+), Sequence Errors: (\d+)", out)
    assert m, out
    assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (
        sent["records"],
        sent["packets"],
        sent["octets"],
    )
    assert int(m.group(4)) == 0
    assert out.count("New ") >= 3  # three exporters, each announced by nfcapd
