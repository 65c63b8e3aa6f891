"""Prometheus counters of the analyzer plane, updated once per batch.

Every reason an analyzer can count exists from its start at 0 (`declare_reasons`), so a dashboard
shows 0, not "No data", before the first bad event: the SDK's own reasons of dropped events
(`DROPPED_EVENT_REASONS`: the interface decoders' and the flow table's) and the analyzer's declared
parse-error reasons (`FlowAnalyzer.error_reasons`); its throughput series as well.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from celltap.cell.sdk.events import CREATED, DATA, DESTROYED
from prometheus_client import Counter as PromCounter

EVENT_KINDS = (CREATED, DATA, DESTROYED)

EVENTS_READ = PromCounter(
    "celltap_analyzer_events_read_total", "Interface events read", ["analyzer", "event"]
)
BYTES_READ = PromCounter("celltap_analyzer_bytes_read_total", "Bytes read from the interface", ["analyzer"])
RECORDS_WRITTEN = PromCounter("celltap_analyzer_records_written_total", "JSON records written", ["analyzer"])
PARSE_ERRORS = PromCounter(
    "celltap_analyzer_parse_errors_total", "Parse errors and bounded-buffer overflows", ["analyzer", "reason"]
)
DROPPED_EVENTS = PromCounter(
    "celltap_analyzer_dropped_events_total", "Events not analyzed, by reason", ["analyzer", "reason"]
)
# the reasons the interface decoders (text_format, binary_format) and the FlowTable count events under
DECODER_DROP_REASONS = ("bad_header", "header_too_long", "bad_from", "unknown_event", "bad_l3", "bad_time")
TABLE_DROP_REASONS = ("analyzer_exception", "flow_failed", "flow_table_full")
DROPPED_EVENT_REASONS = (*DECODER_DROP_REASONS, *TABLE_DROP_REASONS)
RECONNECTS = PromCounter(
    "celltap_analyzer_reconnects_total", "Connections (re)established to the interface", ["analyzer"]
)
WIRE_ERRORS = PromCounter(
    "celltap_analyzer_wire_errors_total", "Interface streams reset because framing was lost", ["analyzer"]
)


def declare_reasons(analyzer: str, error_reasons: Iterable[str]) -> None:
    """Create every known reason's series of an analyzer's drop and error counters at 0 (and its
    throughput series, which dashboards plot too)."""
    for counter in (WIRE_ERRORS, RECONNECTS, BYTES_READ, RECORDS_WRITTEN):
        counter.labels(analyzer)
    for event in EVENT_KINDS:
        EVENTS_READ.labels(analyzer, event)
    for reason in DROPPED_EVENT_REASONS:
        DROPPED_EVENTS.labels(analyzer, reason)
    for reason in error_reasons:
        PARSE_ERRORS.labels(analyzer, reason)


class BatchStats:
    """Counts gathered while handling one batch, then added to Prometheus in one step."""

    def __init__(self, analyzer: str, error_reasons: Iterable[str] = ()) -> None:
        self.analyzer = analyzer
        declare_reasons(analyzer, error_reasons)
        self.events: Counter[str] = Counter()
        self.records = 0
        self.bytes = 0

    def flush(self, errors: Counter[str], dropped: Counter[str]) -> None:
        """Add this batch's counts (and the analyzer's error counts) to the Prometheus counters."""
        name = self.analyzer
        for kind, n in self.events.items():
            EVENTS_READ.labels(name, kind).inc(n)
        if self.bytes:
            BYTES_READ.labels(name).inc(self.bytes)
        if self.records:
            RECORDS_WRITTEN.labels(name).inc(self.records)
        for reason, n in errors.items():
            PARSE_ERRORS.labels(name, reason).inc(n)
        for reason, n in dropped.items():
            DROPPED_EVENTS.labels(name, reason).inc(n)
        errors.clear()
        dropped.clear()
        self.events.clear()
        self.records = 0
        self.bytes = 0
