"""The sans-IO core both front ends share: interface bytes in, analyzer records out, metrics per batch."""

from __future__ import annotations

import logging
import time as _time
from collections import Counter

from celltap.cell.sdk.binary_format import BinaryDecoder
from celltap.cell.sdk.events import Event, WireError
from celltap.cell.sdk.flows import FlowAnalyzer, FlowTable
from celltap.cell.sdk.loopback import LoopbackEncoder
from celltap.cell.sdk.metrics import WIRE_ERRORS, BatchStats
from celltap.cell.sdk.text_format import TextDecoder

log = logging.getLogger(__name__)

FORMATS = ("text", "binary")


def make_decoder(fmt: str, body: bool = True) -> TextDecoder | BinaryDecoder:
    """Return a fresh decoder for `text` or `binary` (`body=False`: a `body: no` interface)."""
    if fmt == "text":
        return TextDecoder(body)
    if fmt == "binary":
        return BinaryDecoder(body)
    raise ValueError(f"unknown interface format {fmt!r} (expected text or binary)")


class Session:
    """One analyzer reading one interface; survives reconnects (flows end with reason DISCONNECTED)."""

    def __init__(
        self,
        analyzer: FlowAnalyzer,
        fmt: str = "text",
        body: bool = True,
        table: FlowTable | None = None,
        loopback_format: str | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.fmt = fmt
        self.decoder = make_decoder(fmt, body)
        self.table = table if table is not None else FlowTable(analyzer)
        self.stats = BatchStats(analyzer.name, analyzer.error_reasons)
        self.last_time = 0.0
        # run totals of parse errors and dropped events (the per-batch counts go to Prometheus)
        self.error_totals: Counter[str] = Counter()
        self.dropped_totals: Counter[str] = Counter()
        # with a loopback format (socket front ends): streams the analyzer hands on become events for
        # the cell's L7 loopback, taken by the front end; without (in-process `celltap analyze`), the
        # owner drains `analyzer.handed_on` itself
        self.loopback = LoopbackEncoder(loopback_format) if loopback_format else None

    def feed(self, data: bytes) -> list[dict]:
        """Consume interface bytes; return the records they completed.

        A bad event costs only itself: the decoder skips it and counts it (dropped events by reason).
        """
        self.stats.bytes += len(data)
        decoder = self.decoder
        try:
            events = decoder.feed(data)
        except WireError as exc:  # a third-party decoder may still give up on framing
            log.error("%s: interface stream is not in %s format: %s", self.analyzer.name, self.fmt, exc)
            WIRE_ERRORS.labels(self.analyzer.name).inc()
            raise
        bad = getattr(decoder, "dropped", None)
        if bad:
            for reason in bad:
                if reason not in self.dropped_totals:
                    log.warning("%s: skipping bad interface events (%s)", self.analyzer.name, reason)
            self.table.dropped.update(bad)
            bad.clear()
        return self.handle_events(events)

    def handle_events(self, events: list[Event]) -> list[dict]:
        """Dispatch already-decoded events; return the records they completed."""
        if events:
            self.last_time = events[-1].time
            self.stats.events.update(ev.event for ev in events)
            for key in self.table.handle(events):
                self.decoder.forget(key)
            lb = self.loopback
            if lb is not None and (self.analyzer.handed_on or lb.open):
                self._hand_on(lb, events)
        return self._drain()

    def _hand_on(self, lb: LoopbackEncoder, events: list[Event]) -> None:
        handed, self.analyzer.handed_on = self.analyzer.handed_on, []
        lb.hand_on(handed)
        lb.ended(events)

    def take_loopback(self) -> tuple[bytes, int]:
        """Interface events for the cell's L7 loopback produced since the last call (bytes, count)."""
        return self.loopback.take() if self.loopback is not None else (b"", 0)

    def disconnected(self) -> list[dict]:
        """The interface closed: end every flow and return the records that flushes."""
        now = self.last_time or _time.time()
        self.table.end_all("DISCONNECTED", now)
        if self.loopback is not None:
            self._hand_on(self.loopback, [])
            self.loopback.close_all(now)
        self.decoder = make_decoder(self.fmt, self.decoder.body)
        return self._drain()

    def _drain(self) -> list[dict]:
        records = self.analyzer.records
        if records:
            self.analyzer.records = []
        else:
            records = []  # never hand out the analyzer's own list: it keeps growing
        self.stats.records += len(records)
        self.error_totals.update(self.analyzer.errors)
        self.dropped_totals.update(self.table.dropped)
        self.stats.flush(self.analyzer.errors, self.table.dropped)
        return records
