"""The sans-IO core both front ends share: interface bytes in, analyzer records out, metrics per batch."""

from __future__ import annotations

import logging
import time as _time

from cell.sdk.binary_format import BinaryDecoder
from cell.sdk.events import Event, WireError
from cell.sdk.flows import FlowAnalyzer, FlowTable
from cell.sdk.loopback import LoopbackEncoder
from cell.sdk.metrics import WIRE_ERRORS, BatchStats
from cell.sdk.text_format import TextDecoder

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
        self, analyzer: FlowAnalyzer, fmt: str = "text", body: bool = True, loopback_format: str = "text"
    ) -> None:
        self.analyzer = analyzer
        self.fmt = fmt
        self.decoder = make_decoder(fmt, body)
        self.table = FlowTable(analyzer)
        self.stats = BatchStats(analyzer.name)
        self.last_time = 0.0
        # streams the analyzer hands on to the cell's L7 loopback; the front end takes the bytes
        self.loopback = LoopbackEncoder(loopback_format)

    def feed(self, data: bytes) -> list[dict]:
        """Consume interface bytes; return the records they completed."""
        self.stats.bytes += len(data)
        try:
            events = self.decoder.feed(data)
        except WireError as exc:
            # Framing is lost: nothing after this point can be trusted until the cell reconnects us.
            log.error("%s: interface stream is not in %s format: %s", self.analyzer.name, self.fmt, exc)
            WIRE_ERRORS.labels(self.analyzer.name).inc()
            raise
        return self.handle_events(events)

    def handle_events(self, events: list[Event]) -> list[dict]:
        """Dispatch already-decoded events; return the records they completed."""
        if events:
            self.last_time = events[-1].time
            self.stats.events.update(ev.event for ev in events)
            for key in self.table.handle(events):
                self.decoder.forget(key)
            if self.analyzer.handed_on or self.loopback.open:
                self._hand_on(events)
        return self._drain()

    def _hand_on(self, events: list[Event]) -> None:
        handed, self.analyzer.handed_on = self.analyzer.handed_on, []
        self.loopback.hand_on(handed)
        self.loopback.ended(events)

    def take_loopback(self) -> tuple[bytes, int]:
        """Interface events for the cell's L7 loopback produced since the last call (bytes, count)."""
        return self.loopback.take()

    def disconnected(self) -> list[dict]:
        """The interface closed: end every flow and return the records that flushes."""
        now = self.last_time or _time.time()
        self.table.end_all("DISCONNECTED", now)
        self._hand_on([])
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
        self.stats.flush(self.analyzer.errors, self.table.dropped)
        return records
