"""Every analyzer's fields equal tshark's for the same capture, flow for flow.

Captures come from hand-written conversations (corner cases) and from `celltap loadgen` scenarios.
They reach a real `celltap analyzer` process over a real UNIX socket two ways: through the real cell
(`celltap cell --read PCAP --wait-readers ...`), and through a tshark-reassembled event stream (an
independent stand-in for the cell, so a cell bug and an analyzer bug cannot cancel out).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.analyzers import oracle, traffic
from tests.analyzers.cell_path import cell_records, cell_records_multi
from tests.analyzers.harness import run_analyzer
from tests.analyzers.pcap_events import pcap_to_events
from tests.analyzers.pcapgen import write_pcap
from tests.conftest import require_tool

pytestmark = pytest.mark.tshark

OWN = {
    "http": traffic.http_conversations,
    "dns": traffic.dns_conversations,
    "tls": traffic.tls_conversations,
    "smtp": traffic.smtp_conversations,
    "sip": traffic.sip_conversations,
}
EVENT_FILTER = {
    "http": "tcp",
    "dns": "udp.port == 53 or tcp.port == 53",
    "tls": "tcp",
    "smtp": "tcp",
    "sip": "udp.port == 5060 or tcp.port == 5060",
}


def _capture(name: str, source: str, tmp: Path) -> str:
    pcap = str(tmp / f"{name}-{source}.pcap")
    if source == "own":
        write_pcap(OWN[name](), pcap)
        return pcap
    proc = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "loadgen", "pcap", name, pcap],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"celltap loadgen pcap {name} failed: {proc.stderr.strip()[-300:]}"
    return pcap


def _records(name: str, pcap: str, tmp: Path, fmt: str, path: str) -> list[dict]:
    if path == "cell":
        return cell_records(name, pcap, tmp, fmt)
    events = pcap_to_events(pcap, fmt, EVENT_FILTER[name])
    return run_analyzer(name, events, tmp, fmt)


# (capture source, interface format, what turns the capture into interface events)
CASES = [
    ("own", "text", "tshark"),
    ("loadgen", "text", "tshark"),
    ("loadgen", "text", "cell"),
    ("loadgen", "binary", "cell"),
    ("own", "text", "cell"),
]


@pytest.mark.parametrize(("source", "fmt", "path"), CASES)
def test_http_fields_match_tshark(source: str, fmt: str, path: str, tmp_path: Path) -> None:
    require_tool("tshark")
    pcap = _capture("http", source, tmp_path)
    records = _records("http", pcap, tmp_path, fmt, path)
    reqs, resps = oracle.http_tshark(pcap)
    our_reqs, our_resps = oracle.http_ours(records)
    assert reqs, "tshark saw no HTTP requests: the capture is not an HTTP capture"
    assert our_reqs == reqs
    assert our_resps == resps
    assert not [r for r in records if "error" in r]


def test_http_on_torrent_tracker_announces_matches_tshark(tmp_path: Path) -> None:
    """BitTorrent tracker announces (HTTP on ports 6969 and 80, binary-escaped URIs) via the cell."""
    require_tool("tshark")
    pcap = _capture("torrent_tracker", "loadgen", tmp_path)
    records = _records("http", pcap, tmp_path, "text", "cell")
    reqs, resps = oracle.http_tshark(pcap)
    assert reqs
    assert oracle.http_ours(records) == (reqs, resps)


@pytest.mark.parametrize(("source", "fmt", "path"), CASES)
def test_dns_fields_match_tshark(source: str, fmt: str, path: str, tmp_path: Path) -> None:
    require_tool("tshark")
    pcap = _capture("dns", source, tmp_path)
    records = _records("dns", pcap, tmp_path, fmt, path)
    theirs = oracle.dns_tshark(pcap)
    assert theirs
    ours = oracle.dns_ours(records)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == value, key


@pytest.mark.parametrize(("source", "fmt", "path"), CASES)
def test_tls_fields_match_tshark(source: str, fmt: str, path: str, tmp_path: Path) -> None:
    require_tool("tshark")
    pcap = _capture("tls", source, tmp_path)
    records = _records("tls", pcap, tmp_path, fmt, path)
    theirs = oracle.tls_tshark(pcap)
    assert theirs
    assert oracle.tls_ours(records) == theirs


@pytest.mark.parametrize(("source", "fmt", "path"), CASES)
def test_smtp_fields_match_tshark(source: str, fmt: str, path: str, tmp_path: Path) -> None:
    require_tool("tshark")
    pcap = _capture("smtp", source, tmp_path)
    records = _records("smtp", pcap, tmp_path, fmt, path)
    theirs = oracle.smtp_tshark(pcap)
    assert theirs
    assert oracle.smtp_ours(records) == theirs


@pytest.mark.parametrize(("source", "fmt", "path"), CASES)
def test_sip_transactions_match_tshark(source: str, fmt: str, path: str, tmp_path: Path) -> None:
    require_tool("tshark")
    from tests.analyzers import sip_oracle

    pcap = _capture("sip", source, tmp_path)
    records = _records("sip", pcap, tmp_path, fmt, path)
    expected = oracle.sip_tshark(pcap)
    assert expected
    sip_oracle.compare(expected, records)


@pytest.mark.parametrize("scenario", ["mixed", "ipv6", "vlan"])
def test_all_analyzers_on_one_cell_match_tshark(scenario: str, tmp_path: Path) -> None:
    """One cell classifies a blended capture to five analyzers at once; each matches tshark."""
    require_tool("tshark")
    pcap = _capture(scenario, "loadgen", tmp_path)
    recs = cell_records_multi(["http", "dns", "tls", "smtp", "sip"], pcap, tmp_path, "text")
    seen = 0
    reqs, resps = oracle.http_tshark(pcap)
    # BitTorrent tracker announces are HTTP too, and our http rule takes them like tshark does
    # only on ports tshark decodes as HTTP: compare the flows tshark calls HTTP.
    our_reqs, our_resps = oracle.http_ours(recs["http"])
    assert {k: v for k, v in our_reqs.items() if k[:4] in {x[:4] for x in reqs}} == reqs
    assert {k: v for k, v in our_resps.items() if k in resps} == resps
    seen += bool(reqs)
    dns = oracle.dns_tshark(pcap)
    assert oracle.dns_ours(recs["dns"]) == dns
    seen += bool(dns)
    tls = oracle.tls_tshark(pcap)
    assert oracle.tls_ours(recs["tls"]) == tls
    seen += bool(tls)
    if scenario == "mixed":
        assert oracle.smtp_ours(recs["smtp"]) == oracle.smtp_tshark(pcap)
        from tests.analyzers import sip_oracle

        sip = oracle.sip_tshark(pcap)
        sip_oracle.compare(sip, recs["sip"])
        seen += bool(sip)
    assert seen >= 3, "the capture should carry at least HTTP, DNS and TLS"
