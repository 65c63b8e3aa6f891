"""dns.log on real traffic: unbound answering dig, kdig and a raw TCP client in network namespaces,
and resolving a zone from NSD (the resolver's own queries, UDP and TCP, are in the capture).

Expected records come from tshark (which messages exist, its query/response pairing and rtt) and
dnspython (each message's content), never from our parser. The capture is checked to really hold the
cases it is meant to (TC then TCP retry, several messages in one TCP segment, one message across
segments, EDNS options), so the comparison cannot pass on a capture that lost them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.analyzers import dns_oracle
from tests.analyzers.cell_path import cell_records
from tests.analyzers.harness import run_analyzer, tshark_fields
from tests.analyzers.pcap_events import pcap_to_events
from tests.conftest import require_root, require_tool

CLIENT, SERVER = "10.53.0.2", "10.53.0.1"  # realnet_dns's addresses (dig and NSD; unbound)

pytestmark = pytest.mark.tshark


@pytest.fixture(scope="module")
def dns_pcap(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One capture of the whole scenario (tests/analyzers/realnet_dns.py)."""
    require_root()
    for tool in ("unbound", "dig", "kdig", "tcpdump", "tshark"):
        require_tool(tool)
    from tests.analyzers.realnet_dns import capture_dns

    pcap = tmp_path_factory.mktemp("dnsreal") / "dns.pcap"
    results = capture_dns(pcap)
    failed = [r.args for r in results if r.returncode != 0]
    assert not failed, f"clients failed: {failed}"
    return str(pcap)


def test_capture_holds_the_cases(dns_pcap: str) -> None:
    """The scenario's cases are in the capture, as tshark sees it."""
    # tcpdump lost no frame (a lost segment would hold the cell's stream back and shift times)
    assert not tshark_fields(dns_pcap, "tcp.analysis.lost_segment", ["frame.number"])
    msgs = dns_oracle.tshark_messages(dns_pcap)
    expected = dns_oracle.expected_records(dns_pcap)
    recs = list(expected.values())
    # truncated UDP answers (to dig twice, to unbound once), each asked again over TCP by the same host
    tc = [(k[0], r) for k, r in expected.items() if r["TC"] and r["proto"] == "udp"]
    assert len(tc) == 3
    assert {host for host, _ in tc} == {CLIENT, SERVER}
    for host, r in tc:
        assert any(
            k[0] == host and o["proto"] == "tcp" and o["query"] == r["query"] and "answers" in o
            for k, o in expected.items()
        )
    # several messages in one TCP segment (both ways), and a message across two segments
    per_segment = Counter((m["frame"], m["src"][0]) for m in msgs if m["proto"] == "tcp")
    assert max(n for (_, host), n in per_segment.items() if host == CLIENT) >= 3  # queries
    assert max(n for (_, host), n in per_segment.items() if host == SERVER) >= 2  # unbound's answers
    split = tshark_fields(dns_pcap, "dns and tcp.reassembled.length", ["frame.number"])
    assert split, "no DNS message reassembled from several segments"
    # EDNS options the clients were asked to send, and unbound's NSID
    names = {
        o["name"]
        for r in recs
        for e in ("query_edns", "response_edns")
        for o in r.get(e, {}).get("options", [])
    }
    assert {"NSID", "ECS", "COOKIE", "PADDING"} <= names
    assert any(r.get("rcode_name") == "NXDOMAIN" for r in recs)
    assert any(r["proto"] == "tcp" for r in recs) and any(r["proto"] == "udp" for r in recs)


@pytest.mark.parametrize(("path", "fmt"), [("cell", "text"), ("cell", "binary"), ("tshark", "text")])
def test_dns_log_matches_tshark_and_dnspython(dns_pcap: str, path: str, fmt: str, tmp_path: Path) -> None:
    """Through the real cell and through tshark-reassembled events: every record equals the oracle's."""
    if path == "cell":
        records = cell_records("dns", dns_pcap, tmp_path, fmt)
    else:
        events = pcap_to_events(dns_pcap, fmt, "udp.port == 53 or tcp.port == 53")
        records = run_analyzer("dns", events, tmp_path, fmt)
    expected = dns_oracle.expected_records(dns_pcap)
    assert len(expected) >= 30
    dns_oracle.compare(expected, records)
    assert not [r for r in records if r.get("_log") == "weird"]
    for r in records:
        assert r["uid"] and r["community_id"].startswith("1:")
