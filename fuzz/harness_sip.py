"""Fuzz the SIP analyzer: requests and responses as UDP datagrams or a TCP stream."""

from __future__ import annotations

from celltap.cell.analyzers.sip_analyzer import SipAnalyzer

from fuzz.analyzer_input import run_analyzer, scenario_seeds


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    run_analyzer(SipAnalyzer(), data, 5060, datagrams=True)


def seeds() -> list[bytes]:
    """loadgen's sip scenario (REGISTER and INVITE dialogs with SDP)."""
    return scenario_seeds("sip", 8, datagrams=True)
