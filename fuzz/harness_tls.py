"""Fuzz the TLS analyzer: records, handshake messages and certificates in one connection's streams."""

from __future__ import annotations

from celltap.cell.analyzers.tls_analyzer import TlsAnalyzer

from fuzz.analyzer_input import run_analyzer, scenario_seeds

# 8 KiB holds a whole handshake with its certificates and the first application data (seeds are
# cut there); without a cap libFuzzer makes inputs up to the largest seed (36 KB of loadgen's bulk
# transfers), and a long run drifts towards those, at a fraction of the rate.
FUZZ_MAX_LEN = 8192


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    run_analyzer(TlsAnalyzer(), data, 443, datagrams=False)


def seeds() -> list[bytes]:
    """loadgen's tls scenario (TLS 1.2 and 1.3 handshakes with certificates)."""
    return scenario_seeds("tls", 6)
