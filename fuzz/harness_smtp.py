"""Fuzz the SMTP analyzer: commands, replies, DATA with MIME bodies, STARTTLS."""

from __future__ import annotations

from celltap.cell.analyzers.smtp_analyzer import SmtpAnalyzer

from fuzz.analyzer_input import run_analyzer, scenario_seeds
from fuzz.stream_input import encode_turns


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    run_analyzer(SmtpAnalyzer(), data, 25, datagrams=False)


def seeds() -> list[bytes]:
    """loadgen's smtp scenario, plus a STARTTLS switch."""
    starttls = [
        (False, b"220 mx.example ESMTP\r\n"),
        (True, b"EHLO c.example\r\n"),
        (False, b"250-mx.example\r\n250 STARTTLS\r\n"),
        (True, b"STARTTLS\r\n"),
        (False, b"220 2.0.0 Ready to start TLS\r\n"),
        (True, b"\x16\x03\x01\x00\x05hello"),
    ]
    return [*scenario_seeds("smtp", 6), encode_turns(starttls)]
