"""Sans-IO dispatch of interface events to an analyzer: per-flow, per-direction byte streams for TCP,
one call per datagram for UDP.

An exception escaping an analyzer's handler is a bug, but it must cost only what it was handling:
the FlowTable counts it (`dropped["analyzer_exception"]`), logs the first few with their traceback,
and ignores the rest of that TCP flow (its later events are counted as `flow_failed`); a datagram
that raised is lost alone. The process and every other flow go on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, Event, FlowId

from celltap.flowid import flow_uid

log = logging.getLogger(__name__)

MAX_STREAMS = 100_000
LOGGED_EXCEPTIONS = 10  # tracebacks logged per flow table; later exceptions are only counted
UDP_TIMEOUT = 30.0  # the cell's default udp_timeout: a datagram flow idle this long ends (a new uid)


def with_uid(flow: FlowId, start: float) -> FlowId:
    """`flow` with the uid of the connection that started at `start` (seconds), unless it has one."""
    if flow.uid:
        return flow
    try:
        uid = flow_uid(flow.l3, flow.l4, flow.ip1, flow.port1, flow.ip2, flow.port2, round(start * 1e6))
    except (ValueError, KeyError, OverflowError):  # not an IP address or port: no uid can be derived
        return flow
    return replace(flow, uid=uid, start=start)


class StreamHandler(Protocol):
    """Per-TCP-flow state an analyzer returns from `FlowAnalyzer.stream`."""

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Bytes sent by endpoint `sender` (1 or 2), in order."""

    def end(self, reason: str, time: float) -> None:
        """The flow ended (NORMAL, RESET, TIMEOUT, COMPROMISED, or DISCONNECTED when the cell went away)."""


class FlowAnalyzer:
    """Base of every analyzer: collects records and error counts; the front end drains them per batch."""

    name = "base"
    # every reason `error` is called with: their counter series exist from the start, at 0
    error_reasons: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.errors: Counter[str] = Counter()
        # stream bytes handed on to the cell's L7 loopback, drained by the front end
        self.handed_on: list[tuple[FlowId, int, bytes, float]] = []

    def error(self, reason: str) -> None:
        """Count one parse error by reason."""
        self.errors[reason] += 1

    def hand_on(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        """Hand stream bytes to the cell's L7 loopback to be classified anew (TLS after STARTTLS/CONNECT).

        The front end re-injects them as a stream of the same connection (same endpoints and start
        time, so the same uid; SF-TAP's hop count + 1). Call it with each direction's bytes, in order.
        """
        self.handed_on.append((flow, sender, data, time))

    def stream(self, flow: FlowId, time: float) -> StreamHandler | None:
        """Return a handler for a new TCP flow, or None to ignore the flow."""
        return None

    def datagram(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        """Handle one UDP datagram sent by endpoint `sender`."""

    def close(self, time: float) -> None:
        """End of input: flush any state that would otherwise wait for more traffic."""


class FlowTable:
    """Routes decoded events to an analyzer's per-flow handlers; bounded in the number of live flows."""

    def __init__(
        self,
        analyzer: FlowAnalyzer,
        max_streams: int = MAX_STREAMS,
        udp_timeout: float = UDP_TIMEOUT,
        uid_of: Callable[[FlowId], str] | None = None,
    ) -> None:
        self.analyzer = analyzer
        # In-process front ends know the cell's flow table: `uid_of` gives a datagram flow's uid exactly
        # ("" when unknown) instead of inferring connection starts from idle gaps.
        self.uid_of = uid_of
        self.max_streams = max_streams
        self.udp_timeout = udp_timeout
        self.streams: dict[bytes, StreamHandler | None] = {}
        # Datagram flows have no CREATED event: the first datagram seen after `udp_timeout` of silence
        # starts a connection, as in the cell; key -> (identity with uid, time of the last datagram)
        self.datagram_flows: dict[bytes, tuple[FlowId, float]] = {}
        self.dropped: Counter[str] = Counter()  # events dropped by reason, drained by the front end
        self.exceptions = 0  # analyzer exceptions so far (the first few are logged)

    def handle(self, events: list[Event]) -> list[bytes]:
        """Dispatch a batch of events; return the keys of flows that ended (decoders may forget them)."""
        streams = self.streams
        analyzer = self.analyzer
        ended: list[bytes] = []
        for ev in events:
            kind = ev.event
            try:
                if kind is DATA:
                    if ev.flow.l4 != "tcp":
                        analyzer.datagram(self._datagram_flow(ev), ev.sender, ev.data, ev.time)
                        continue
                    try:
                        handler = streams[ev.key]
                    except KeyError:
                        # DATA without CREATED: we connected (or reconnected) mid-flow; analyze what we get.
                        handler = self._open(ev)
                    if handler is not None:
                        handler.data(ev.sender, ev.data, ev.time)
                elif kind is CREATED:
                    old = streams.pop(ev.key, None)
                    if old is not None:
                        old.end("REPLACED", ev.time)
                    self._open(ev)
                elif kind is DESTROYED:
                    handler = streams.pop(ev.key, None)
                    ended.append(ev.key)
                    if handler is not None:
                        handler.end(ev.reason or "NORMAL", ev.time)
            except Exception as exc:  # an analyzer bug costs this event and its flow, never the process
                self._failed(ev, exc)
        return ended

    def _failed(self, ev: Event, exc: Exception) -> None:
        """Count an analyzer exception; a TCP flow that raised is ignored from now on."""
        self.dropped["analyzer_exception"] += 1
        self.exceptions += 1
        if self.exceptions <= LOGGED_EXCEPTIONS:
            log.warning(
                "%s: analyzer raised on a %s event of %s (the flow is dropped and counted)",
                self.analyzer.name,
                ev.event,
                ev.flow,
                exc_info=exc,
            )
        if ev.flow.l4 == "tcp" and ev.event is not DESTROYED:
            self.streams[ev.key] = _FailedFlow(self.dropped)

    def _datagram_flow(self, ev: Event) -> FlowId:
        if ev.flow.uid:
            return ev.flow
        if self.uid_of is not None:
            uid = self.uid_of(ev.flow)
            if uid:
                return replace(ev.flow, uid=uid)
        flows = self.datagram_flows
        known = flows.get(ev.key)
        if known is not None and ev.time - known[1] <= self.udp_timeout:
            flows[ev.key] = (known[0], ev.time)
            return known[0]
        if known is None and len(flows) >= self.max_streams:
            # bounded: forget the least recently started datagram flow (its next datagram gets a new uid)
            del flows[next(iter(flows))]
        flow = with_uid(ev.flow, ev.time)
        flows.pop(ev.key, None)
        flows[ev.key] = (flow, ev.time)
        return flow

    def _open(self, ev: Event) -> StreamHandler | None:
        if len(self.streams) >= self.max_streams:
            self.dropped["flow_table_full"] += 1
            return None
        flow = ev.flow
        uid = self.uid_of(flow) if self.uid_of is not None and not flow.uid else ""
        handler = self.analyzer.stream(replace(flow, uid=uid) if uid else with_uid(flow, ev.time), ev.time)
        self.streams[ev.key] = handler
        return handler

    def end_all(self, reason: str, time: float) -> None:
        """End every live flow (the cell went away or input ended) and let the analyzer flush."""
        streams, self.streams = self.streams, {}
        for key, handler in streams.items():
            if handler is not None:
                try:
                    handler.end(reason, time)
                except Exception as exc:  # see handle(): costs this flow only
                    self._failed(Event(DESTROYED, key, FlowId("", "", 0, 0, 0, "", ""), time), exc)
        try:
            self.analyzer.close(time)
        except Exception as exc:
            self._failed(Event(DESTROYED, b"", FlowId("", "", 0, 0, 0, "", ""), time), exc)


class _FailedFlow:
    """The handler of a flow whose analyzer raised: its later bytes are counted, not analyzed."""

    __slots__ = ("dropped",)

    def __init__(self, dropped: Counter[str]) -> None:
        self.dropped = dropped

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Count the event as dropped."""
        self.dropped["flow_failed"] += 1

    def end(self, reason: str, time: float) -> None:
        """Nothing to flush."""
