"""Analyzer names on the command line -> analyzer classes."""

from __future__ import annotations

from celltap.cell.analyzers.dns_analyzer import DnsAnalyzer
from celltap.cell.analyzers.http_analyzer import HttpAnalyzer
from celltap.cell.analyzers.sip_analyzer import SipAnalyzer
from celltap.cell.analyzers.smtp_analyzer import SmtpAnalyzer
from celltap.cell.analyzers.tls_analyzer import TlsAnalyzer
from celltap.cell.sdk.flows import FlowAnalyzer

ANALYZERS: dict[str, type[FlowAnalyzer]] = {
    "http": HttpAnalyzer,
    "dns": DnsAnalyzer,
    "tls": TlsAnalyzer,
    "smtp": SmtpAnalyzer,
    "sip": SipAnalyzer,
}
