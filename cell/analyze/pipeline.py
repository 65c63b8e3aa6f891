"""One process, one pass: frames -> the cell's abstractor -> every analyzer -> logs that join.

Theory of operation. `celltap analyze` is the cell and its analyzers without the sockets between
them. Each batch of frames goes through the same Abstractor a cell runs; the bytes it produced for
each interface (SF-TAP's text or binary format, exactly what a socket reader would get) are decoded
by the analyzer SDK's Session of the analyzer bound to that interface, in the same batch. So there
is no start-up order to get wrong: every interface has its reader before the first frame, and no
event can be produced for an interface nobody reads (those without an analyzer are counted).

Joins. Every record carries the connection's uid. The analyzers derive it from the CREATED event's
time (TCP); for datagram flows, which have no CREATED event, the Session asks this pipeline, which
looks the flow up in the abstractor's table (`uid_of`), so the analyzers' uid is the cell's uid by
construction. conn.log records are written when flows leave the cell's table (after their linger),
from the same Flow objects as the cell's IPFIX records.

L7 loopback. An analyzer that hands a stream on (TLS after STARTTLS or HTTP CONNECT) gets it
re-injected into the abstractor with SF-TAP's hop count + 1 and its connection's start time (so its
uid is its connection's uid); the new events are drained in the same batch, up to the hop limit.

Weirds. Analyzer records marked `_log: weird` and the cell's drop counters (per batch, per reason)
go to weird.log; each weird name is logged at most `weird_limit` times per run, the rest counted.
"""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field

from celltap.cell.abstractor import Abstractor
from celltap.cell.analyze.conn_log import conn_record, flow_uid
from celltap.cell.analyze.logs import LogSet
from celltap.cell.analyzers.registry import ANALYZERS
from celltap.cell.flow_table import Flow
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer, FlowTable
from celltap.cell.sdk.session import Session
from celltap.cell.sftap_config import CellConfig

from celltap.flowhash import xxh64
from celltap.flowid import key_bytes
from celltap.pcap.batch import FrameBatch

_L3 = {"ipv4": 4, "ipv6": 6}
_L4 = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
MAX_KEY_CACHE = 200_000


def analyzer_for_interface(ifname: str, bindings: dict[str, str]) -> str | None:
    """The analyzer bound to interface `ifname` (`http0` is `http` balanced): explicit, else by name."""
    if ifname in bindings:
        return bindings[ifname] or None
    base = ifname.rstrip("0123456789") or ifname
    if base in bindings:
        return bindings[base] or None
    return base if base in ANALYZERS else None


@dataclass
class Binding:
    """One interface of the cell and the analyzer reading it."""

    sink: str
    log: str
    session: Session


@dataclass
class RunTotals:
    """What a run saw, for the summary line and the tests."""

    records: Counter[str] = field(default_factory=Counter)
    unanalyzed_events: Counter[str] = field(default_factory=Counter)  # by interface
    weird_suppressed: Counter[str] = field(default_factory=Counter)
    loopback_events: int = 0


class Analysis:
    """The abstractor and its analyzers in one process, writing to a LogSet."""

    def __init__(
        self,
        cfg: CellConfig,
        logs: LogSet,
        bindings: dict[str, str] | None = None,
        weird_limit: int = 1000,
    ) -> None:
        self.cfg = cfg
        self.abstractor = Abstractor(cfg)
        self.logs = logs
        self.weird_limit = weird_limit
        self.weird_counts: Counter[str] = Counter()
        self.totals = RunTotals()
        self.bindings: dict[str, Binding] = {}
        self._key_hash: dict[tuple[FlowId, int], int] = {}
        self._ended_now: dict[int, Flow] = {}
        self._children: dict[tuple[int, int], tuple[FlowId, int]] = {}  # handed-on streams
        self._drops_seen: Counter[str] = Counter()
        udp_timeout = cfg.glob.udp_timeout
        for name, sink in self.abstractor.sinks.items():
            ifname = name.rsplit("/", 1)[-1]
            analyzer_name = analyzer_for_interface(ifname, bindings or {})
            if analyzer_name is None:
                continue
            analyzer: FlowAnalyzer = ANALYZERS[analyzer_name]()
            table = FlowTable(analyzer, udp_timeout=udp_timeout, uid_of=self.uid_of)
            session = Session(analyzer, sink.fmt, sink.body, table)
            self.bindings[name] = Binding(name, analyzer_name, session)

    # ------------------------------------------------------------------ uids
    def _flow_of(self, flow: FlowId) -> Flow | None:
        ident = (flow, flow.hop)
        h = self._key_hash.get(ident)
        if h is None:
            try:
                kb = key_bytes(flow.l3, flow.l4, flow.ip1, flow.port1, flow.ip2, flow.port2)
            except (ValueError, KeyError):
                return None
            h = xxh64(kb) if flow.hop == 0 else xxh64(kb + bytes((flow.hop,)))
            if len(self._key_hash) >= MAX_KEY_CACHE:
                self._key_hash.clear()
            self._key_hash[ident] = h
        found = self.abstractor.table.flows.get(h)
        return found if found is not None else self._ended_now.get(h)

    def uid_of(self, flow: FlowId) -> str:
        """The uid of the cell's flow that an interface event names ("" if the cell has none)."""
        found = self._flow_of(flow)
        return flow_uid(found) if found is not None else ""

    # ------------------------------------------------------------------ driving
    def process(self, batch: FrameBatch, now_ns: int | None = None) -> None:
        """One batch of frames through the cell and every analyzer."""
        self.abstractor.process_frames(batch, now_ns)
        self._drain()

    def tick(self, now_ns: int) -> None:
        """Time passes without frames (live): idle flows end, their records are written."""
        self.abstractor.collect(now_ns)
        self._drain()
        self.logs.tick()

    def finish(self) -> None:
        """End of input: every flow ends, every analyzer flushes, every record is written."""
        a = self.abstractor
        a.finish()
        self._drain()
        for child in list(self._children):
            self._end_child(child)
        self._drain()
        out: dict[str, list[dict]] = {}
        for b in self.bindings.values():
            self._route(b.log, b.session.disconnected(), out)
        self._write(out)
        self._cell_weirds()

    # ------------------------------------------------------------------ one drain
    def _drain(self) -> None:
        a = self.abstractor
        ended = a.take_ended()
        self._ended_now = {f.key: f for f in ended}
        out: dict[str, list[dict]] = {}
        for _ in range(a.hop_limit + 2):
            handed = self._feed_analyzers(out)
            if not handed:
                break
            self._hand_on(handed)
        ended += a.take_ended()
        self._ended_now = {}
        conns = [conn_record(f, f.rule.name if f.rule is not None else None) for f in ended if f.hop == 0]
        if conns:
            out.setdefault("conn", []).extend(conns)
        self._write(out)
        self._reap_children()
        self._cell_weirds()

    def _feed_analyzers(self, out: dict[str, list[dict]]) -> list[tuple[FlowId, int, bytes, float]]:
        handed: list[tuple[FlowId, int, bytes, float]] = []
        for name, sink in self.abstractor.sinks.items():
            if not sink.parts:
                continue
            parts, events = sink.take()
            b = self.bindings.get(name)
            if b is None:
                self.totals.unanalyzed_events[name] += events
                continue
            self._route(b.log, b.session.feed(b"".join(parts)), out)
            an = b.session.analyzer
            if an.handed_on:
                handed += an.handed_on
                an.handed_on = []
        return handed

    def _route(self, log: str, records: list[dict], out: dict[str, list[dict]]) -> None:
        for rec in records:
            target = rec.pop("_log", None) or log
            if target == "weird":
                if not self._weird_allowed(str(rec.get("name", ""))):
                    continue
            out.setdefault(target, []).append(rec)

    def _write(self, out: dict[str, list[dict]]) -> None:
        for log, records in out.items():
            if log != "conn":
                records.sort(key=_ts)
            self.logs.write(log, records)
            self.totals.records[log] += len(records)

    # ------------------------------------------------------------------ L7 loopback
    def _hand_on(self, handed: list[tuple[FlowId, int, bytes, float]]) -> None:
        a = self.abstractor
        for flow, sender, data, t in handed:
            l3, l4 = _L3.get(flow.l3), _L4.get(flow.l4)
            if l3 is None or l4 is None:
                a.count_loopback_drop("bad_event")
                continue
            try:
                a1 = socket.inet_pton(_FAMILY[l3], flow.ip1)
                a2 = socket.inet_pton(_FAMILY[l3], flow.ip2)
            except OSError:
                a.count_loopback_drop("bad_event")
                continue
            hop = flow.hop + 1
            ts_ns = round(t * 1e9)
            child, _ = a.loopback_key(l3, l4, a1, flow.port1, a2, flow.port2, hop)
            if (child, hop) not in self._children:
                parent = self._flow_of(flow)
                start = parent.start_ns if parent is not None else ts_ns
                # the stream starts with its connection: same start time, same uid
                if not a.inject("CREATED", l3, l4, a1, flow.port1, a2, flow.port2, hop, 0, b"", start):
                    continue
                self._children[(child, hop)] = (flow, parent.key if parent is not None else -1)
            self.totals.loopback_events += 1
            a.inject("DATA", l3, l4, a1, flow.port1, a2, flow.port2, hop, sender, data, ts_ns)

    def _reap_children(self) -> None:
        """A handed-on stream ends when its connection does."""
        if not self._children:
            return
        flows = self.abstractor.table.flows
        for child, (_flow, parent_key) in list(self._children.items()):
            parent = flows.get(parent_key)
            if parent is None or parent.ended:
                self._end_child(child)
        if self.abstractor.sinks and any(s.parts for s in self.abstractor.sinks.values()):
            out: dict[str, list[dict]] = {}
            self._feed_analyzers(out)
            self._write(out)

    def _end_child(self, child: tuple[int, int]) -> None:
        flow, _ = self._children.pop(child)
        l3, l4 = _L3[flow.l3], _L4[flow.l4]
        a1 = socket.inet_pton(_FAMILY[l3], flow.ip1)
        a2 = socket.inet_pton(_FAMILY[l3], flow.ip2)
        a = self.abstractor
        a.inject("DESTROYED", l3, l4, a1, flow.port1, a2, flow.port2, child[1], 0, b"", a.now_ns)

    # ------------------------------------------------------------------ weirds
    def _weird_allowed(self, name: str) -> bool:
        self.weird_counts[name] += 1
        if self.weird_counts[name] > self.weird_limit:
            self.totals.weird_suppressed[name] += 1
            return False
        return True

    def _cell_weirds(self) -> None:
        """The cell's drop counters that grew since the last batch, one weird record per reason."""
        a = self.abstractor
        now = Counter(a.drops)
        now.update({f"loopback_{k}": v for k, v in a.loopback_drops.items()})
        grown = now - self._drops_seen
        if not grown:
            return
        self._drops_seen = now
        ts = a.now_ns / 1e9
        recs = [
            {"ts": ts, "name": reason, "source": "cell", "count": n}
            for reason, n in sorted(grown.items())
            if self._weird_allowed(reason)
        ]
        if recs:
            self.logs.write("weird", recs)
            self.totals.records["weird"] += len(recs)

    # ------------------------------------------------------------------ summary
    def analyzer_errors(self) -> dict[str, Counter[str]]:
        """Parse errors and dropped events of each analyzer over the run."""
        out: dict[str, Counter[str]] = {}
        for b in self.bindings.values():
            c = out.setdefault(b.log, Counter())
            c.update(b.session.error_totals)
            c.update({f"dropped_{k}": v for k, v in b.session.dropped_totals.items()})
        return out


def _ts(rec: dict) -> float:
    ts = rec.get("ts")
    return ts if isinstance(ts, (int, float)) else 0.0
