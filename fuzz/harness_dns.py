"""Fuzz the DNS analyzer: datagrams (UDP mode) or a TCP stream of length-prefixed messages."""

from __future__ import annotations

from celltap.cell.analyzers.dns_analyzer import DnsAnalyzer

from fuzz.analyzer_input import run_analyzer, scenario_seeds

# A DNS message is small (512 bytes without EDNS, its seeds under 200): 2 KiB holds several datagrams
# or a large EDNS answer; libFuzzer's own cap (4 KiB) lets a long run drift to inputs twice as slow.
FUZZ_MAX_LEN = 2048


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    run_analyzer(DnsAnalyzer(), data, 53, datagrams=True)


def seeds() -> list[bytes]:
    """loadgen's dns scenario: queries and answers over UDP and TCP."""
    return scenario_seeds("dns", 12, datagrams=True)
