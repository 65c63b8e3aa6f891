"""Fuzz the TLS analyzer: records, handshake messages and certificates in one connection's streams."""

from __future__ import annotations

from celltap.cell.analyzers.tls_analyzer import TlsAnalyzer

from fuzz.analyzer_input import run_analyzer, scenario_seeds


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    run_analyzer(TlsAnalyzer(), data, 443, datagrams=False)


def seeds() -> list[bytes]:
    """loadgen's tls scenario (TLS 1.2 and 1.3 handshakes with certificates)."""
    return scenario_seeds("tls", 6)
