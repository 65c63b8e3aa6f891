"""SIP analyzer: Zeek's sip.log, one record per transaction (a request and its final response), over UDP
and TCP.

Theory of operation: messages come from `sip_message` (one per UDP datagram; framed by
Content-Length on TCP, however the segments cut them, keep-alive CRLFs skipped). Per flow, a request
opens a transaction keyed by Call-ID + CSeq (number and method); responses with the same key are
collected: provisional ones (1xx) are noted, the final one (>= 200) closes the transaction and its
record is written. ACK has no response: its record is written at once. A request repeated while its
transaction is open is a retransmission (counted, not a new transaction); a response that matches no
open transaction is written alone. Transactions still open are written (without status) when the
flow has been idle `FLOW_TIMEOUT` seconds of capture time, when its TCP connection ends and at the end
of input. Open transactions are bounded per flow and flows overall; past a bound the oldest is
written and counted, so nothing is dropped unseen.

The call setup time is measured on INVITE transactions: `setup_time` from the INVITE to its 2xx final
response (the call is answered), `ringing_time` from the INVITE to its first 18x provisional response.
"""

from __future__ import annotations

from collections import OrderedDict

from celltap.cell.analyzers.conn_id import conn_fields
from celltap.cell.analyzers.sip_message import MAX_HEAD, SipError, SipMessage, SipStream, parse_datagram
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer

FLOW_TIMEOUT = 64.0  # SIP's Timer B/F (64 * T1): a transaction without an answer by then has failed
MAX_OPEN_PER_FLOW = 1000
MAX_FLOWS = 100_000
MAX_DONE_KEYS = 64  # closed transactions remembered per flow, to know retransmitted responses


class _Transaction:
    __slots__ = ("depth", "orig", "provisional", "req", "ring", "ts")

    def __init__(self, orig: int, req: SipMessage, ts: float, depth: int) -> None:
        self.depth = depth  # Zeek's trans_depth: the request's place among the flow's requests
        self.orig = orig
        self.req = req
        self.ts = ts
        self.provisional: list[int] = []
        self.ring: float | None = None


class _Flow:
    __slots__ = ("depth", "done", "flow", "last", "open", "proto")

    def __init__(self, flow: FlowId, proto: str, time: float) -> None:
        self.flow = flow
        self.proto = proto
        self.last = time
        self.depth = 0
        self.open: OrderedDict[tuple, _Transaction] = OrderedDict()
        self.done: OrderedDict[tuple, None] = OrderedDict()


def _key(msg: SipMessage) -> tuple:
    seq, _, method = msg.headers["cseq"][0].partition(" ")
    return (msg.headers["call-id"][0], int(seq), method.strip().upper())


def _vias(msg: SipMessage) -> list[str]:
    return [v.strip() for value in msg.headers.get("via", []) for v in value.split(",") if v.strip()]


def sip_record(
    flow: FlowId, proto: str, t: _Transaction | None, resp: SipMessage | None, rts: float, orig: int
) -> dict:
    """One sip.log record (Zeek's fields; absent values are left out)."""
    rec = conn_fields(flow, orig, t.ts if t is not None else rts)
    rec["proto"] = proto
    if t is not None:
        rec["trans_depth"] = t.depth
    first = t.req if t is not None else resp
    assert first is not None
    if t is not None:
        req = t.req
        rec["method"] = req.method
        rec["uri"] = req.uri
        _put(rec, "date", req.first("date"))
        _put(rec, "request_from", req.first("from"))
        _put(rec, "request_to", req.first("to"))
    if resp is not None:
        _put(rec, "response_from", resp.first("from"))
        _put(rec, "response_to", resp.first("to"))
    _put(rec, "reply_to", first.first("reply-to"))
    rec["call_id"] = first.first("call-id")
    rec["seq"] = first.first("cseq")
    if t is not None:
        _put(rec, "subject", t.req.first("subject"))
        rec["request_path"] = _vias(t.req)
        _put(rec, "user_agent", t.req.first("user-agent"))
    if resp is not None:
        rec["response_path"] = _vias(resp)
        rec["status_code"] = resp.code
        rec["status_msg"] = resp.reason
        _put(rec, "warning", resp.first("warning"))
    if t is not None:
        rec["request_body_len"] = t.req.body_len
    if resp is not None:
        rec["response_body_len"] = resp.body_len
    ctype = (resp.first("content-type") if resp is not None else None) or (
        t.req.first("content-type") if t is not None else None
    )
    _put(rec, "content_type", ctype)
    if t is not None:
        if t.provisional:
            rec["provisional_codes"] = t.provisional
        if t.req.method == "INVITE":
            if t.ring is not None:
                rec["ringing_time"] = round(t.ring - t.ts, 6)
            if resp is not None and 200 <= resp.code < 300:
                rec["setup_time"] = round(rts - t.ts, 6)
    return rec


def _put(rec: dict, key: str, value: object) -> None:
    if value is not None:
        rec[key] = value


class SipTcpFlow:
    """SIP over TCP: each direction framed by Content-Length."""

    __slots__ = ("analyzer", "flow", "streams")

    def __init__(self, analyzer: SipAnalyzer, flow: FlowId) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.streams = {1: SipStream(), 2: SipStream()}

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        msgs, problems = self.streams[sender].feed(data)
        for reason in problems:
            self.analyzer.weird(self.flow, sender, time, reason)
        for msg in msgs:
            self.analyzer.message(self.flow, sender, msg, time, "tcp")

    def end(self, reason: str, time: float) -> None:
        """The flow ended: an unfinished message is weird; open transactions are written."""
        for sender, stream in self.streams.items():
            if not stream.failed and stream.leftover():
                self.analyzer.weird(self.flow, sender, time, "truncated_message")
        self.analyzer.end_flow(self.flow)


class SipAnalyzer(FlowAnalyzer):
    """SIP over UDP and TCP: transactions as Zeek's sip.log, bounded per flow and overall."""

    name = "sip"
    # every parse-error reason this analyzer counts (tests/deploy/test_metrics_at_start.py checks the list)
    error_reasons = (
        "message_too_long",
        "bad_start_line",
        "bad_header_line",
        "bad_content_length",
        "missing_call_id_or_cseq",
        "bad_cseq",
        "truncated_body",
        "junk_before_start_line",
        "junk_too_long",
        "head_too_long",
        "missing_content_length",
        "truncated_message",
        "flow_table_full",
        "request_retransmitted",
        "response_retransmitted",
        "open_transactions_full",
    )

    def __init__(self) -> None:
        super().__init__()
        self.flows: OrderedDict[FlowId, _Flow] = OrderedDict()  # least recently active first
        self.flow_timeout = FLOW_TIMEOUT
        self.max_open_per_flow = MAX_OPEN_PER_FLOW
        self.max_flows = MAX_FLOWS

    def stream(self, flow: FlowId, time: float) -> SipTcpFlow:
        """Start a TCP SIP flow."""
        return SipTcpFlow(self, flow)

    def datagram(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        """One UDP datagram is one SIP message (a keep-alive of CRLFs alone is skipped)."""
        if len(data) > 2 * MAX_HEAD:
            self.weird(flow, sender, time, "message_too_long")
            return
        try:
            msg = parse_datagram(data)
        except SipError as exc:
            if exc.reason != "keepalive":
                self.weird(flow, sender, time, exc.reason)
            return
        if msg.junk:
            self.weird(flow, sender, time, "junk_before_start_line")
        self.message(flow, sender, msg, time, "udp")

    def weird(self, flow: FlowId, orig: int, time: float, reason: str) -> None:
        """Count a problem and report it as a weird.log record."""
        self.error(reason)
        rec = conn_fields(flow, orig, time)
        rec.update({"_log": "weird", "name": f"sip_{reason}", "notice": False, "source": "SIP"})
        self.records.append(rec)

    def message(self, flow: FlowId, sender: int, msg: SipMessage, time: float, proto: str) -> None:
        """Handle one parsed message of a flow."""
        self._expire(time)
        state = self.flows.get(flow)
        if state is None:
            if len(self.flows) >= self.max_flows:
                self.error("flow_table_full")
                self._close_flow(next(iter(self.flows)))
            state = self.flows[flow] = _Flow(flow, proto, time)
        else:
            self.flows.move_to_end(flow)
        state.last = time
        key = _key(msg)
        if msg.method is not None:
            self._request(state, sender, key, msg, time)
        else:
            self._response(state, sender, key, msg, time)

    def _request(self, state: _Flow, sender: int, key: tuple, msg: SipMessage, time: float) -> None:
        if key in state.open:
            self.error("request_retransmitted")
            return
        state.depth += 1
        t = _Transaction(sender, msg, time, state.depth)
        if msg.method == "ACK":  # no response to an ACK
            self.records.append(sip_record(state.flow, state.proto, t, None, time, sender))
            return
        if len(state.open) >= self.max_open_per_flow:
            self.error("open_transactions_full")
            self._write_open(state, next(iter(state.open)))
        state.open[key] = t

    def _response(self, state: _Flow, sender: int, key: tuple, msg: SipMessage, time: float) -> None:
        t = state.open.get(key)
        if t is None:
            if key in state.done:
                self.error("response_retransmitted")
                return
            self.records.append(sip_record(state.flow, state.proto, None, msg, time, 3 - sender))
            return
        if msg.code < 200:
            t.provisional.append(msg.code)
            if t.ring is None and 180 <= msg.code < 190:
                t.ring = time
            return
        del state.open[key]
        state.done[key] = None
        if len(state.done) > MAX_DONE_KEYS:
            state.done.popitem(last=False)
        self.records.append(sip_record(state.flow, state.proto, t, msg, time, t.orig))

    def _write_open(self, state: _Flow, key: tuple) -> None:
        t = state.open.pop(key)
        self.records.append(sip_record(state.flow, state.proto, t, None, 0.0, t.orig))

    def _close_flow(self, flow: FlowId) -> None:
        state = self.flows.pop(flow)
        while state.open:
            self._write_open(state, next(iter(state.open)))

    def _expire(self, now: float) -> None:
        flows = self.flows
        while flows:
            state = flows[next(iter(flows))]
            if now - state.last <= self.flow_timeout:
                break
            if state.proto == "tcp":
                # the connection lives on (its end is signalled): write what waited, keep trans_depth
                while state.open:
                    self._write_open(state, next(iter(state.open)))
                state.last = now
                flows.move_to_end(state.flow)
            else:
                self._close_flow(state.flow)

    def end_flow(self, flow: FlowId) -> None:
        """A TCP flow ended: write its open transactions."""
        if flow in self.flows:
            self._close_flow(flow)

    def close(self, time: float) -> None:
        """End of input: write every open transaction."""
        while self.flows:
            self._close_flow(next(iter(self.flows)))
