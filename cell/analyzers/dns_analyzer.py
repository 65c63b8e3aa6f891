"""DNS analyzer: Zeek's dns.log, one record per query paired with its response, over UDP and TCP.

Theory of operation: every message (one UDP datagram, or one 2-byte-length-framed message of a TCP
direction, however the segments cut it) is parsed by `dns_message.parse_message`. A query (QR=0) is
kept pending in its flow under its transaction id; a response (QR=1) is paired with the oldest pending
query of the same flow, id and question (name case-insensitive, type, class; a response without a
question takes the oldest query with its id), and one record is written for the pair. A response
without a matching query is written alone (no `rtt`). Queries still pending after `QUERY_TIMEOUT`
seconds of capture time, at the end of their TCP flow and at the end of input are written alone (no
`rcode`). Pending queries are bounded per flow and overall: past the bound the oldest is written at
once, unanswered, and counted (`pending_flow_full` / `pending_full`), so nothing is lost.

Problems inside a message (compression loops, bad pointers, truncated RRs, bad rdata) cost only what
could not be decoded: the record keeps the rest, and each problem is counted and reported as a weird
record (`"_log": "weird"`, name `dns_<reason>`). A message shorter than a header is weird alone.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from itertools import count

from celltap.cell.analyzers.conn_id import conn_fields
from celltap.cell.analyzers.dns_message import (
    OPCODE_NAMES,
    DnsError,
    class_name,
    parse_message,
    rcode_name,
    type_name,
)
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer

QUERY_TIMEOUT = 30.0  # seconds of capture time a query waits for its response (the cell's UDP timeout)
MAX_PENDING_PER_FLOW = 1000
MAX_PENDING = 100_000


class _Query:
    """A query waiting for its response."""

    __slots__ = ("fkey", "flow", "key", "msg", "orig", "proto", "seq", "ts")

    def __init__(self, flow: FlowId, orig: int, ts: float, proto: str, msg: dict, key: tuple, seq: int):
        self.fkey = _flow_key(flow)
        self.flow = flow
        self.orig = orig
        self.ts = ts
        self.proto = proto
        self.msg = msg
        self.key = key
        self.seq = seq


def _flow_key(flow: FlowId) -> object:
    # the uid names the connection and hashes once (a str caches its hash; a FlowId rehashes 8 fields)
    return flow.uid or flow


def _question_key(msg: dict) -> tuple | None:
    if not msg["questions"]:
        return None
    name, qtype, qclass = msg["questions"][0]
    return (name.lower(), qtype, qclass)


def dns_record(
    flow: FlowId, orig: int, proto: str, query: dict | None, qts: float, resp: dict | None, rts: float
) -> dict:
    """One dns.log record from a query and/or its response (Zeek's field names and meanings)."""
    first = query if query is not None else resp
    assert first is not None
    rec = conn_fields(flow, orig, qts if query is not None else rts)
    rec["proto"] = proto
    rec["trans_id"] = first["id"]
    if query is not None and resp is not None:
        rec["rtt"] = round(rts - qts, 6)
    questions = first["questions"] or (resp["questions"] if resp is not None else [])
    if questions:
        name, qtype, qclass = questions[0]
        rec["query"] = name.lower()  # Zeek logs the query lower-cased
        rec["qclass"] = qclass
        rec["qclass_name"] = class_name(qclass)
        rec["qtype"] = qtype
        rec["qtype_name"] = type_name(qtype)
        if len(questions) > 1:  # mDNS asks several at once; Zeek's `query` holds one
            rec["extra_questions"] = [
                {"query": n.lower(), "qtype": t, "qtype_name": type_name(t), "qclass": c}
                for n, t, c in questions[1:]
            ]
    rec["opcode"] = first["opcode"]
    rec["opcode_name"] = OPCODE_NAMES.get(first["opcode"], f"opcode-{first['opcode']}")
    if resp is not None:
        rec["rcode"] = resp["rcode"]
        rec["rcode_name"] = rcode_name(resp["rcode"])
    rflags = resp["flags"] if resp is not None else 0
    qflags = first["flags"]
    rec["AA"] = bool(rflags & 0x400)
    rec["TC"] = bool(rflags & 0x200)
    rec["RD"] = bool(qflags & 0x100)
    rec["RA"] = bool(rflags & 0x80)
    rec["Z"] = (qflags >> 4) & 0x7  # the three bits after RA (Z, AD, CD), as Zeek counts them
    if resp is not None:
        if resp["answers"]:
            rec["answers"] = [rr[4] for rr in resp["answers"]]
            rec["TTLs"] = [float(rr[3]) for rr in resp["answers"]]
        if resp["auth"]:
            rec["auth"] = [rr[4] for rr in resp["auth"]]
        if resp["addl"]:
            rec["addl"] = [rr[4] for rr in resp["addl"]]
    rec["rejected"] = resp is not None and resp["rcode"] != 0 and not resp["questions"]
    if query is not None and query["edns"] is not None:
        rec["query_edns"] = query["edns"]
    if resp is not None and resp["edns"] is not None:
        rec["response_edns"] = resp["edns"]
    return rec


class DnsTcpFlow:
    """Length-prefixed DNS messages in each direction of a TCP flow."""

    __slots__ = ("analyzer", "bufs", "flow")

    def __init__(self, analyzer: DnsAnalyzer, flow: FlowId) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.bufs = {1: b"", 2: b""}

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint: every complete message is handled, the rest waits."""
        buf = self.bufs[sender] + data if self.bufs[sender] else data
        pos = 0
        while len(buf) - pos >= 2:
            (length,) = struct.unpack_from(">H", buf, pos)
            if len(buf) - pos - 2 < length:
                break
            self.analyzer.message(self.flow, sender, buf[pos + 2 : pos + 2 + length], time, "tcp")
            pos += 2 + length
        self.bufs[sender] = buf[pos:]

    def end(self, reason: str, time: float) -> None:
        """The flow ended: a message cut off is weird; its queries still pending are written."""
        for sender, buf in self.bufs.items():
            if buf:
                self.analyzer.weird(self.flow, sender, time, "truncated_tcp_message", f"{len(buf)} bytes")
        self.analyzer.flush_flow(self.flow)


class DnsAnalyzer(FlowAnalyzer):
    """DNS over UDP (one datagram, one message) and TCP; query/response pairs as Zeek's dns.log."""

    name = "dns"
    # every parse-error reason this analyzer counts (tests/deploy/test_metrics_at_start.py checks the list)
    error_reasons = (
        "truncated_tcp_message",
        "short_message",
        "bad_edns_option",
        "truncated_question",
        "truncated_rr",
        "multiple_opt_rrs",
        "bad_rdata",
        "truncated_name",
        "compression_loop",
        "bad_pointer",
        "bad_label_type",
        "name_too_long",
        "pending_flow_full",
        "pending_full",
    )

    def __init__(self) -> None:
        super().__init__()
        self.query_timeout = QUERY_TIMEOUT
        self.max_pending_per_flow = MAX_PENDING_PER_FLOW
        self.max_pending = MAX_PENDING
        # flow key -> transaction id -> queries in arrival order; and every pending query in arrival order
        self.pending: dict[object, dict[int, list[_Query]]] = {}
        self.pending_count: dict[object, int] = {}
        self.queue: OrderedDict[int, _Query] = OrderedDict()
        self._seq = count()

    def stream(self, flow: FlowId, time: float) -> DnsTcpFlow:
        """Start a TCP DNS flow."""
        return DnsTcpFlow(self, flow)

    def datagram(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        """One UDP datagram is one message."""
        self.message(flow, sender, data, time, "udp")

    def weird(self, flow: FlowId, orig: int, time: float, reason: str, addl: str = "") -> None:
        """Count a problem and report it as a weird.log record."""
        self.error(reason)
        rec = conn_fields(flow, orig, time)
        rec.update({"_log": "weird", "name": f"dns_{reason}", "notice": False, "source": "DNS"})
        if addl:
            rec["addl"] = addl
        self.records.append(rec)

    def message(self, flow: FlowId, sender: int, data: bytes, time: float, proto: str) -> None:
        """Parse one message; pair, hold or write it; report what in it is malformed."""
        queue = self.queue
        if queue:
            self._expire(time)
        try:
            msg = parse_message(data)
        except DnsError as exc:
            self.weird(flow, sender, time, exc.reason, f"{len(data)} bytes")
            return
        client = 3 - sender if msg["qr"] else sender
        if msg["weird"]:
            for reason in dict.fromkeys(msg["weird"]):
                self.weird(flow, client, time, reason)
        if msg["qr"]:
            self._response(flow, client, msg, time, proto)
        else:
            self._query(flow, client, msg, time, proto)

    def _query(self, flow: FlowId, client: int, msg: dict, time: float, proto: str) -> None:
        fkey = _flow_key(flow)
        count = self.pending_count.get(fkey, 0)
        if count >= self.max_pending_per_flow:
            self.error("pending_flow_full")
            self.records.append(dns_record(flow, client, proto, msg, time, None, 0.0))
            return
        if len(self.queue) >= self.max_pending:
            self.error("pending_full")
            self._write_unanswered(self.queue[next(iter(self.queue))])
        seq = next(self._seq)
        q = _Query(flow, client, time, proto, msg, _question_key(msg), seq)
        self.pending.setdefault(fkey, {}).setdefault(msg["id"], []).append(q)
        self.pending_count[fkey] = self.pending_count.get(fkey, 0) + 1  # the eviction above may be ours
        self.queue[seq] = q

    def _response(self, flow: FlowId, client: int, msg: dict, time: float, proto: str) -> None:
        match = None
        by_id = self.pending.get(_flow_key(flow))
        waiting = by_id.get(msg["id"]) if by_id else None
        if waiting:
            key = _question_key(msg)
            for q in waiting:
                if key is None or q.key == key:
                    match = q
                    break
        if match is None:
            self.records.append(dns_record(flow, client, proto, None, 0.0, msg, time))
            return
        self._forget(match)
        self.records.append(dns_record(flow, match.orig, match.proto, match.msg, match.ts, msg, time))

    def _forget(self, q: _Query) -> None:
        del self.queue[q.seq]
        by_id = self.pending[q.fkey]
        waiting = by_id[q.msg["id"]]
        waiting.remove(q)
        if not waiting:
            del by_id[q.msg["id"]]
            if not by_id:
                del self.pending[q.fkey]
        left = self.pending_count[q.fkey] - 1
        if left:
            self.pending_count[q.fkey] = left
        else:
            del self.pending_count[q.fkey]

    def _write_unanswered(self, q: _Query) -> None:
        self._forget(q)
        self.records.append(dns_record(q.flow, q.orig, q.proto, q.msg, q.ts, None, 0.0))

    def _expire(self, now: float) -> None:
        limit = now - self.query_timeout
        queue = self.queue
        while queue:
            q = queue[next(iter(queue))]
            if q.ts >= limit:
                break
            self._write_unanswered(q)

    def flush_flow(self, flow: FlowId) -> None:
        """Write the flow's pending queries (its TCP connection ended)."""
        by_id = self.pending.get(_flow_key(flow))
        if by_id:
            for q in sorted((q for qs in by_id.values() for q in qs), key=lambda q: q.seq):
                self._write_unanswered(q)

    def close(self, time: float) -> None:
        """End of input: write every query still pending."""
        while self.queue:
            self._write_unanswered(self.queue[next(iter(self.queue))])
