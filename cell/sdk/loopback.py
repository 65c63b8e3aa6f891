"""The analyzer side of SF-TAP's L7 loopback: stream bytes an analyzer hands on (TLS after STARTTLS or
an HTTP CONNECT) go back to the cell as interface events, to be classified anew.

Theory of operation. `FlowAnalyzer.hand_on(flow, sender, data, time)` queues chunks; the session
drains them after each batch into a `LoopbackEncoder` (sans-IO), which writes, per handed-on stream:
CREATED with the connection's start time (`FlowId.start`, so the re-injected stream gets the same uid:
celltap.flowid leaves the hop out of it), one DATA event per chunk (from = the sender), and DESTROYED
when the original flow ends (its DESTROYED event) or the interface goes away. The flow's own hop is
written: the cell raises it by one. The bytes go to `<home>/loopback7` through `LoopbackWriter`
(blocking front end), which connects lazily and counts what it could not deliver
(`celltap_analyzer_loopback_dropped_events_total{reason}`: `no_loopback` when the cell has no
`loopback7` rule or socket, `loopback_closed` when the connection broke; both exist at 0 from the
writer's creation, `declare_loopback_reasons`).
"""

from __future__ import annotations

import logging
import socket

from celltap.cell.sdk.binary_format import encode_binary
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, Event, FlowId
from celltap.cell.sdk.text_format import encode_text
from prometheus_client import Counter as PromCounter

log = logging.getLogger(__name__)

LOOPBACK_EVENTS = PromCounter(
    "celltap_analyzer_loopback_events_total", "Events written to the cell's L7 loopback", ["analyzer"]
)
LOOPBACK_DROPPED = PromCounter(
    "celltap_analyzer_loopback_dropped_events_total",
    "Handed-on events not delivered to the L7 loopback, by reason",
    ["analyzer", "reason"],
)
LOOPBACK_DROP_REASONS = ("no_loopback", "loopback_closed")
MAX_BINARY_CHUNK = 0xFFFF  # the binary header's len is 16 bits
MAX_OPEN = 100_000


def _identity(flow: FlowId) -> tuple:
    return (flow.ip1, flow.ip2, flow.port1, flow.port2, flow.hop, flow.l3, flow.l4)


class LoopbackEncoder:
    """Handed-on chunks and flow ends -> SF-TAP interface events (text or binary), sans-IO."""

    def __init__(self, fmt: str = "text") -> None:
        self.fmt = fmt
        self.open: dict[tuple, FlowId] = {}  # handed-on streams not yet ended, by flow identity
        self.out: list[bytes] = []
        self.events = 0

    def _event(self, flow: FlowId, kind: str, time: float, sender: int = 0, data: bytes = b"") -> None:
        if self.fmt == "binary":
            if kind == DATA:
                for i in range(0, len(data), MAX_BINARY_CHUNK):
                    self.out.append(encode_binary(flow, DATA, time, sender, data[i : i + MAX_BINARY_CHUNK]))
                    self.events += 1
                return
            self.out.append(encode_binary(flow, kind, time, sender, data))
        else:
            self.out.append(encode_text(flow, kind, time, sender, data))
        self.events += 1

    def hand_on(self, chunks: list[tuple[FlowId, int, bytes, float]]) -> None:
        """Encode chunks handed on by the analyzer (in the order it handed them on)."""
        for flow, sender, data, time in chunks:
            ident = _identity(flow)
            if ident not in self.open:
                if len(self.open) >= MAX_OPEN:  # bounded: end the oldest handed-on stream
                    old_ident, old = next(iter(self.open.items()))
                    del self.open[old_ident]
                    self._event(old, DESTROYED, time)
                self.open[ident] = flow
                self._event(flow, CREATED, flow.start or time)
            if data:
                self._event(flow, DATA, time, sender, data)

    def ended(self, events: list[Event]) -> None:
        """End the handed-on streams whose original flow ended in this batch of events."""
        for ev in events:
            if ev.event is DESTROYED:
                flow = self.open.pop(_identity(ev.flow), None)
                if flow is not None:
                    self._event(flow, DESTROYED, ev.time)

    def close_all(self, time: float) -> None:
        """The interface went away: end every handed-on stream."""
        for flow in self.open.values():
            self._event(flow, DESTROYED, time)
        self.open.clear()

    def take(self) -> tuple[bytes, int]:
        """The encoded bytes and event count since the last call."""
        data, n = b"".join(self.out), self.events
        self.out, self.events = [], 0
        return data, n


def declare_loopback_reasons(analyzer: str) -> None:
    """Create the loopback drop counter's series of every reason at 0 (dashboards show 0, not No data)."""
    for reason in LOOPBACK_DROP_REASONS:
        LOOPBACK_DROPPED.labels(analyzer, reason)


class LoopbackWriter:
    """Blocking writer to `<home>/loopback7`: connects on first use, reconnects after a failure."""

    def __init__(self, path: str | None, analyzer: str) -> None:
        self.path = path
        self.analyzer = analyzer
        self.sock: socket.socket | None = None
        self.warned = False
        declare_loopback_reasons(analyzer)

    def send(self, data: bytes, events: int) -> None:
        """Write encoded events; count them as dropped (by reason) if the loopback is not there."""
        if not data:
            return
        if self.sock is None and not self._connect():
            LOOPBACK_DROPPED.labels(self.analyzer, "no_loopback").inc(events)
            return
        try:
            assert self.sock is not None
            self.sock.sendall(data)
            LOOPBACK_EVENTS.labels(self.analyzer).inc(events)
        except OSError as exc:
            log.warning("%s: L7 loopback %s: %s", self.analyzer, self.path, exc)
            LOOPBACK_DROPPED.labels(self.analyzer, "loopback_closed").inc(events)
            self.close()

    def _connect(self) -> bool:
        if self.path is None:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            if not self.warned:
                log.warning(
                    "%s: no L7 loopback at %s (%s): handed-on streams are dropped, counted",
                    self.analyzer,
                    self.path,
                    exc,
                )
                self.warned = True
            return False
        self.sock = sock
        return True

    def close(self) -> None:
        """Close the connection (the cell ends the streams it left open)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
