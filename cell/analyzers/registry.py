"""Analyzer names on the command line -> analyzer classes."""

from __future__ import annotations

from cell.analyzers.dns_analyzer import DnsAnalyzer
from cell.analyzers.http_analyzer import HttpAnalyzer
from cell.analyzers.sip_analyzer import SipAnalyzer
from cell.analyzers.smtp_analyzer import SmtpAnalyzer
from cell.analyzers.tls_analyzer import TlsAnalyzer
from cell.sdk.flows import FlowAnalyzer

ANALYZERS: dict[str, type[FlowAnalyzer]] = {
    "http": HttpAnalyzer,
    "dns": DnsAnalyzer,
    "tls": TlsAnalyzer,
    "smtp": SmtpAnalyzer,
    "sip": SipAnalyzer,
}
