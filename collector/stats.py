"""Counters the ingestion core keeps as plain dicts (cheap per batch), drained into Prometheus."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

# Coarse drop reasons used as metric labels; the detailed cause goes to the log line.
NO_TEMPLATE = "no_template"
MALFORMED = "malformed"
NOT_ALLOWED = "not_allowed"
BUFFER_FULL = "buffer_full"
TOO_MANY_TEMPLATES = "too_many_templates"
TOO_MANY_DOMAINS = "too_many_domains"
RESERVED_SET = "reserved_set_id"
EXPORTER_LIMIT = "exporter_limit"  # one exporter address reached its domain count or memory share
MEMORY_LIMIT = "memory_limit"  # the process's state budget (templates + domains) is spent
INTERNAL_ERROR = "internal_error"  # the decoder raised something unexpected (a bug): that unit is lost
STOPPED = "stopped"  # still queued in the socket when a stop's drain time ran out
SINK_ERROR = "sink_error"  # the consumer of decoded records raised: that batch is lost
# The reasons each drop counter can carry: exported at 0 from the start, so that a dashboard shows 0
# (not "No data") for a healthy collector.
MESSAGE_DROP_REASONS = (
    MALFORMED, NOT_ALLOWED, BUFFER_FULL, TOO_MANY_DOMAINS, EXPORTER_LIMIT, MEMORY_LIMIT, INTERNAL_ERROR,
    STOPPED,
)  # fmt: skip
SET_DROP_REASONS = (
    NO_TEMPLATE, MALFORMED, TOO_MANY_TEMPLATES, RESERVED_SET, EXPORTER_LIMIT, MEMORY_LIMIT, INTERNAL_ERROR,
)  # fmt: skip
RECORD_DROP_REASONS = (SINK_ERROR,)
# Template writes to the store given up (collector/template_store.py counts them under these names).
STORE_DROP_REASONS = ("queue_full", "stop_timeout")


@dataclass
class IngestStats:
    """Deltas since the last drain; keys are label tuples."""

    messages: defaultdict = field(default_factory=lambda: defaultdict(int))  # exporter
    records: defaultdict = field(default_factory=lambda: defaultdict(int))  # exporter
    bytes: defaultdict = field(default_factory=lambda: defaultdict(int))  # exporter
    template_events: defaultdict = field(default_factory=lambda: defaultdict(int))  # (exporter, event)
    sequence_gaps: defaultdict = field(default_factory=lambda: defaultdict(int))  # (exporter, domain)
    sequence_lost: defaultdict = field(default_factory=lambda: defaultdict(int))  # (exporter, domain, unit)
    sequence_reordered: defaultdict = field(default_factory=lambda: defaultdict(int))  # (exporter, domain)
    dropped_messages: defaultdict = field(default_factory=lambda: defaultdict(int))  # reason
    dropped_sets: defaultdict = field(default_factory=lambda: defaultdict(int))  # reason
    dropped_bytes: defaultdict = field(default_factory=lambda: defaultdict(int))  # reason
    dropped_records: defaultdict = field(default_factory=lambda: defaultdict(int))  # reason (decoded, lost)
    domain_events: defaultdict = field(default_factory=lambda: defaultdict(int))  # (exporter, event)
    store_dropped: defaultdict = field(default_factory=lambda: defaultdict(int))  # reason

    COUNTERS = (
        "messages",
        "records",
        "bytes",
        "template_events",
        "sequence_gaps",
        "sequence_lost",
        "sequence_reordered",
        "dropped_messages",
        "dropped_sets",
        "dropped_bytes",
        "dropped_records",
        "domain_events",
        "store_dropped",
    )

    def drain(self) -> dict[str, dict]:
        """Return the deltas as plain dicts (picklable, for worker -> parent) and reset them."""
        out = {}
        for name in self.COUNTERS:
            d = getattr(self, name)
            out[name] = dict(d)
            d.clear()
        return out

    def merge(self, deltas: dict[str, dict]) -> None:
        """Add deltas drained elsewhere (another worker) into these counters."""
        for name, d in deltas.items():
            target = getattr(self, name)
            for k, v in d.items():
                target[k] += v

    def total(self, name: str) -> int:
        """Sum of one counter over all label values (for tests and summaries)."""
        return sum(getattr(self, name).values())
