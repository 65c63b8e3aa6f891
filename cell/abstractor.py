"""The flow abstractor core, sans-IO: decoded frame batches in, interface byte streams and ended flows out.

Pipeline per batch: decode status -> IP defragmentation -> canonical flow key and hash (numpy, whole
batch) -> packets grouped by flow with one stable argsort (packet order inside a flow is kept) ->
per-flow TCP reassembly / UDP datagrams / ICMP messages -> classification -> events appended to the
interface sinks. The I/O edge (cell/interfaces.py) drains `Sink.parts` after each batch.

Three paths share the TCP work: most pure ACKs are settled per flow after the batch
(cell/ack_batching.py); connections that open, carry in-order data and close inside one batch (most
of a connections-per-second load) are found with array passes (cell/whole_connections.py) and
handled flow by flow (cell/whole_path.py); everything else goes packet by packet
(cell/packet_path.py, cell/tcp_reassembly.py). All three produce the same events, records,
counters and Zeek-style history / TCP state (cell/tcp_state.py).

Flows end with a reason: NORMAL (FIN both ways), RESET, TIMEOUT (idle; also end of input),
COMPROMISED (reserved: a full table refuses new flows rather than evicting). A closed TCP flow
lingers briefly so trailing ACKs still count in its IPFIX record; the record is produced when the
flow leaves the table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xxhash
from celltap.cell import events as ev
from celltap.cell.ack_batching import SLOW_FLAGS, route_first_acks, settle_acks
from celltap.cell.classifier import Classifier
from celltap.cell.dedup import Deduplicator, select_decoded
from celltap.cell.defrag import Defragmenter
from celltap.cell.flow_table import END_DETECTED, END_FORCED, END_IDLE, LINGER_NS, Flow, FlowTable
from celltap.cell.memory_budget import derived_max_flows
from celltap.cell.packet_path import feed_packets, zero_window_marks
from celltap.cell.sftap_config import CellConfig, Rule
from celltap.cell.tcp_reassembly import TcpStats, release, skip_gaps
from celltap.cell.tcp_state import likely_server_ports
from celltap.cell.whole_path import ByteScratch, take_whole_connections

from celltap.decode import DecodedBatch, DecodeOptions, Reason, decode_batch
from celltap.flowkey import canonical_key, canonical_swap, flow_hashes
from celltap.pcap.batch import LINKTYPE_RAW, FrameBatch

log = logging.getLogger("celltap.cell")


_PROTO_DIR = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "icmp"}
# Real memory of one chunk held for classification besides its bytes: the (sender, data, ts) tuple
# (64 B), the bytes object's header (33 B), the ts int (32 B), the list slot (8 B, plus over-allocation),
# and a margin that covers the two head copies' object headers (33 B each) from the first chunk on.
CHUNK_MEMORY = 176


def hold_floor(classify_bytes: int) -> int:
    """The least classify_hold (real memory) that lets a flow hold one chunk of classify_bytes, so the
    `up` regex sees a whole window before a silent peer forces the flow on."""
    return 2 * classify_bytes + CHUNK_MEMORY


def _held_memory(flow: Flow) -> int:
    """Real memory a flow holds for classification: its chunks and its two head copies (their bytes;
    a head's object header is inside CHUNK_MEMORY's margin)."""
    return flow.held + len(flow.pending or ()) * CHUNK_MEMORY + len(flow.head1) + len(flow.head2)


@dataclass
class Sink:
    """One interface socket: the bytes produced for it since the last drain."""

    name: str  # e.g. "tcp/http0", "udp/dns", "icmp/icmp"
    fmt: str
    body: bool
    parts: list[bytes] = field(default_factory=list)
    events: int = 0
    total_events: int = 0
    total_bytes: int = 0

    def take(self) -> tuple[list[bytes], int]:
        """The parts and event count produced since the last call (and reset them)."""
        parts, events = self.parts, self.events
        self.total_events += events
        self.total_bytes += sum(map(len, parts))
        self.parts = []
        self.events = 0
        return parts, events


def sink_name(rule: Rule, sock: str) -> str:
    """Path of an interface socket relative to home."""
    d = _PROTO_DIR.get(rule.proto)
    return f"{d}/{sock}" if d else sock


class Abstractor:
    """Flow table + reassembly + classification; produces interface events and ended-flow records."""

    def __init__(self, cfg: CellConfig) -> None:
        g = cfg.glob
        self.cfg = cfg
        self.classifier = Classifier(cfg)
        self.table = FlowTable(g.timeout, g.udp_timeout, LINGER_NS / 1e9)
        self.defrag = Defragmenter(g.defrag_timeout, g.defrag_memory)
        self.drops: dict[str, int] = {}  # packets not turned into flow data, by reason
        self.tcp_stats = TcpStats(self.drops)  # the reassembler counts its drops here too
        self.classify_bytes = g.classify_bytes
        # real memory per flow, never below one direction's classify_bytes with its head copy and chunk
        self.classify_hold = max(g.classify_hold, hold_floor(g.classify_bytes))
        self.classify_memory = g.classify_memory
        self.held_total = 0  # stream bytes held back for classification, all flows
        self.held_mem = 0  # real memory of what is held back (what classify_memory caps)
        self.classified_early = {"hold": 0, "memory": 0}  # classified before both sides spoke
        self.ooo_memory = g.ooo_memory
        self.ooo_limit = g.ooo_limit
        self.midstream = g.midstream
        self.decode_options = DecodeOptions(decapsulate=g.decapsulate)
        self.server_ports = likely_server_ports([p for r in cfg.rules for p in r.ports])
        self.hop_limit = g.hop_limit
        # unset: what the memory budget leaves after the buffers (cell/memory_budget.py)
        self.max_flows = g.max_flows if g.max_flows is not None else derived_max_flows(cfg)
        self.gc_budget = g.gc_scan
        self.batch_acks = True
        self.use_whole_connections = True  # the per-flow path for connections complete in one batch
        self.whole_scratch = ByteScratch()  # its one-talker payload gathers (cell/whole_path.py)
        self.whole_flows = 0  # connections that took it
        self.sinks: dict[str, Sink] = {}
        self.rule_sinks: dict[str, list[Sink]] = {}
        for rule in [*cfg.rules, *cfg.special.values()]:
            if rule.name in ("loopback7", "pcap"):
                continue
            sinks = []
            for sock in rule.socket_names():
                name = sink_name(rule, sock)
                sink = self.sinks.get(name)
                if sink is None:
                    sink = self.sinks[name] = Sink(name, rule.fmt, rule.body)
                sinks.append(sink)
            self.rule_sinks[rule.name] = sinks
        self.icmp_rule = {1: cfg.special.get("icmp"), 58: cfg.special.get("icmpv6")}
        self.finished: list[Flow] = []
        self.loopback_drops: dict[str, int] = {}  # L7 loopback events not re-injected, by reason
        self.packets = 0
        self.octets = 0
        self.flows_created: dict[str, int] = {}
        self.flows_destroyed: dict[str, int] = {}
        self.unrouted_bytes = 0  # flow data with no interface to go to (no rule, no default)
        self.now_ns = 0
        # duplicate removal (global `dedup: yes`): off by default, then nothing below changes
        self.dedup = Deduplicator(round(g.dedup_window * 1e9)) if g.dedup else None
        self.on_decoded: Callable[[DecodedBatch], None] | None = None  # e.g. the packet store's submit

    # ------------------------------------------------------------------ counters
    def _drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count input the core never saw as flow data (e.g. a broken pcap injection stream)."""
        self._drop(reason, n)

    def count_loopback_drop(self, reason: str, n: int = 1) -> None:
        """Count L7 loopback events that were not re-injected."""
        self.loopback_drops[reason] = self.loopback_drops.get(reason, 0) + n

    # ------------------------------------------------------------------ events
    def _emit_destroyed(self, flow: Flow, reason: int, ts_ns: int) -> None:
        sink = flow.sink
        if sink is None:
            return
        w = flow.wire or flow.wire_id()
        if sink.fmt == "text":
            data = ev.text_destroyed(w, reason, ts_ns)
        else:
            data = ev.binary_destroyed(w, reason, ts_ns)
        sink.parts.append(data)
        sink.events += 1

    def _emit_data(self, flow: Flow, sender: int, data: bytes, ts_ns: int) -> None:
        sink = flow.sink
        if sink is None:
            self.unrouted_bytes += len(data)
            return
        match = flow.match1 if sender == 1 else flow.match2
        w = flow.wire or flow.wire_id()
        if sink.fmt == "text":
            sink.events += ev.text_data(sink.parts, w, sender, match, data, ts_ns, sink.body)
        else:
            sink.events += ev.binary_data(sink.parts, w, sender, match, data, ts_ns, sink.body)

    # ------------------------------------------------------------------ classification
    def _route(self, flow: Flow, rule: Rule | None, m1: int, m2: int) -> None:
        flow.rule = rule
        flow.match1, flow.match2 = m1, m2
        if rule is not None:
            sinks = self.rule_sinks[rule.name]
            flow.sink = sinks[flow.hash % len(sinks)] if len(sinks) > 1 else sinks[0]

    def _classify_tcp(self, flow: Flow, trigger: int = 0) -> None:
        rule, m1, m2 = self.classifier.classify_tcp(flow.head1, flow.head2, flow.port1, flow.port2)
        flow.rule = rule
        flow.match1, flow.match2 = m1, m2
        flow.created = True
        self.held_mem -= _held_memory(flow)
        pending = flow.pending
        flow.pending = None
        flow.head1 = flow.head2 = b""
        self.held_total -= flow.held
        flow.held = 0
        if rule is None:
            for _sender, data, _ts in pending or ():
                self.unrouted_bytes += len(data)
            return
        sinks = self.rule_sinks[rule.name]
        sink = flow.sink = sinks[flow.hash % len(sinks)] if len(sinks) > 1 else sinks[0]
        # every connection passes here once: its CREATED event is emitted here
        w = flow.wire or flow.wire_id()
        t = flow.start_ns
        sink.parts.append(ev.text_created(w, t) if sink.fmt == "text" else ev.binary_created(w, t, trigger))
        sink.events += 1
        if not pending:
            return
        # consecutive chunks of one direction held back for classification leave as one DATA event
        run: list[bytes] = []
        run_sender = pending[0][0]
        run_ts = 0
        emit = self._emit_data
        for sender, data, ts in pending:
            if sender != run_sender:
                emit(flow, run_sender, run[0] if len(run) == 1 else b"".join(run), run_ts)
                run = []
                run_sender = sender
            run.append(data)
            run_ts = ts
        emit(flow, run_sender, run[0] if len(run) == 1 else b"".join(run), run_ts)

    def _deliver(self, flow: Flow, sender: int, data: bytes, ts_ns: int) -> None:
        """In-order stream bytes of a TCP flow (callback of the reassembler)."""
        pending = flow.pending
        if pending is None:
            self._emit_data(flow, sender, data, ts_ns)
            return
        pending.append((sender, data, ts_ns))
        limit = self.classify_bytes
        grew = len(data) + CHUNK_MEMORY
        if sender == 1:
            if len(flow.head1) < limit:
                grew -= len(flow.head1)
                flow.head1 = (flow.head1 + data)[:limit]
                grew += len(flow.head1)
        elif len(flow.head2) < limit:
            grew -= len(flow.head2)
            flow.head2 = (flow.head2 + data)[:limit]
            grew += len(flow.head2)
        flow.held += len(data)
        self.held_total += len(data)
        self.held_mem += grew
        if flow.head1 and flow.head2:
            self._classify_tcp(flow, sender)  # SF-TAP's trigger: both sides have spoken
        elif _held_memory(flow) >= self.classify_hold:
            # One side keeps talking while the other is silent (a large upload before the answer).
            # A `down` regex needs the silent side's first bytes, so the flow waits for them, but
            # holds no more than classify_hold bytes of real memory (tiny segments cost their
            # bookkeeping, as in classify_memory)...
            self.classified_early["hold"] += 1
            self._classify_tcp(flow, sender)
        elif self.held_mem > self.classify_memory:
            # ...and all flows together no more than classify_memory (many silent servers)
            self.classified_early["memory"] += 1
            self._classify_tcp(flow, sender)

    # ------------------------------------------------------------------ flow lifecycle
    def _new_flow(
        self,
        key: int,
        fhash: int,
        l3: int,
        l4: int,
        src: bytes,
        sport: int,
        dst: bytes,
        dport: int,
        swapped: bool,
        hop: int,
        ts_ns: int,
    ) -> Flow | None:
        if len(self.table) >= self.max_flows:
            self._drop("flow_table_full")
            return None
        if swapped:
            flow = Flow(key, fhash, l3, l4, dst, dport, src, sport, hop, ts_ns)
            flow.init_dir = 2
        else:
            flow = Flow(key, fhash, l3, l4, src, sport, dst, dport, hop, ts_ns)
        if l4 == 6:
            flow.pending = []
        self.table.add(flow)
        name = ev.L4_NAMES.get(l4, str(l4))
        self.flows_created[name] = self.flows_created.get(name, 0) + 1
        return flow

    def _close(self, flow: Flow, reason: int, ts_ns: int, ipfix_end: int) -> None:
        """End a flow's stream: flush, classify if still undecided, DESTROYED (TCP); keep it lingering."""
        if flow.ended:
            return
        if flow.l4 == 6:
            if flow.ooo1:
                skip_gaps(flow, 1, ts_ns, self._deliver, self.tcp_stats)
            if flow.ooo2:
                skip_gaps(flow, 2, ts_ns, self._deliver, self.tcp_stats)
            if flow.pending is not None:  # SF-TAP at DESTROYED: endpoint 1's data first, if any
                self._classify_tcp(flow, 1 if flow.head1 else 2 if flow.head2 else 0)
            self._emit_destroyed(flow, reason, ts_ns)
        self._mark_ended(flow, reason, ts_ns, ipfix_end)

    def _mark_ended(self, flow: Flow, reason: int, ts_ns: int, ipfix_end: int) -> None:
        """The bookkeeping of a closed stream: reason, linger timer, counters, freed buffers."""
        flow.end_reason = reason
        flow.end_ns = max(flow.end_ns, ts_ns)
        flow.ended = True
        flow.ipfix_end = ipfix_end
        self.table.schedule(flow, ts_ns + LINGER_NS)
        release(flow, self.tcp_stats)
        key = ev.REASON_NAMES[reason]
        self.flows_destroyed[key] = self.flows_destroyed.get(key, 0) + 1
        flow.wire = None
        flow.head1 = flow.head2 = b""

    def _export(self, flow: Flow) -> None:
        """The flow leaves the table: its record goes to the IPFIX exporter."""
        self.table.remove(flow)
        self.finished.append(flow)

    # ------------------------------------------------------------------ batch processing
    def process_frames(self, batch: FrameBatch, now_ns: int | None = None) -> None:
        """Decode and process one batch of captured frames."""
        if len(batch):
            db = decode_batch(batch, self.decode_options)
            if self.dedup is not None:
                db = self._drop_duplicates(db)
            if self.on_decoded is not None:
                self.on_decoded(db)  # the packet store: what the cell analyzes, duplicates removed
            self.process_decoded(db)
        self.collect(now_ns if now_ns is not None else self.now_ns)

    def _drop_duplicates(self, db: DecodedBatch) -> DecodedBatch:
        """Count and take out the batch's duplicate frames (cell/dedup.py); they count as received."""
        assert self.dedup is not None
        dup = self.dedup.duplicates(db)
        k = int(np.count_nonzero(dup))
        if k == 0:
            return db
        self._drop("duplicate", k)
        self.packets += k
        self.octets += int(db.batch.wirelens[dup].sum())
        return select_decoded(db, ~dup)

    def process_decoded(self, db: DecodedBatch, weights: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Process decoded frames; `weights` = (packets, wire octets) per frame for reassembled datagrams."""
        n = len(db)
        if n == 0:
            return
        batch = db.batch
        status = db.status
        bad = status != 0
        if bad.any():
            for code, cnt in enumerate(np.bincount(status[bad])):
                if cnt:
                    self._drop(f"decode_{Reason(code).label}", int(cnt))
        if weights is None:
            self.packets += n
            self.octets += int(batch.wirelens.sum())
        ts_all = batch.ts_ns
        if n:
            self.now_ns = max(self.now_ns, int(ts_all.max()))
        l4 = db.l4
        frag = db.is_frag & ~bad
        datagrams: list[tuple[bytes, int, int, int, int]] = []
        if frag.any():
            self._defragment(db, np.flatnonzero(frag), datagrams)
        keep = ~bad & ~frag
        known = (l4 == 6) | (l4 == 17) | (l4 == 1) | (l4 == 58)
        other = keep & ~known
        if other.any():
            self._drop("unsupported_l4", int(other.sum()))
        idx = np.flatnonzero(keep & known)
        if not datagrams:
            if idx.size:
                self._process_packets(db, idx, weights)
            return
        # A reassembled datagram takes the place of its last fragment: the batch's packets before it
        # go first (a TCP segment must not land after its connection's FIN in the stream's history).
        done = 0
        group: list[tuple[bytes, int, int, int]] = []
        for data, ts, pk, oc, at in datagrams:
            cut = int(np.searchsorted(idx, at))
            if cut > done:
                if group:
                    self._process_datagrams(group)
                    group = []
                self._process_packets(db, idx[done:cut], weights)
                done = cut
            group.append((data, ts, pk, oc))
        if group:
            self._process_datagrams(group)
        if done < idx.size:
            self._process_packets(db, idx[done:], weights)

    def _defragment(
        self, db: DecodedBatch, idx: np.ndarray, out: list[tuple[bytes, int, int, int, int]]
    ) -> None:
        """Push fragments; completed datagrams go to `out` with the frame index of their last fragment."""
        batch = db.batch
        buf = batch.buf
        offs = batch.offsets
        caps = batch.caplens
        for i in idx.tolist():
            start = int(offs[i]) + int(db.l3_off[i])
            ip_len = int(db.ip_len[i])
            if start + ip_len > int(offs[i]) + int(caps[i]):
                self._drop("fragment_truncated")
                continue
            packet = buf[start : start + ip_len].tobytes()
            ts = int(batch.ts_ns[i])
            done = self.defrag.push(packet, ts, ip_len)
            if done is not None:
                out.append((done[0], ts, done[1], done[2], i))
        self.defrag.expire(self.now_ns)

    def _process_datagrams(self, datagrams: list[tuple[bytes, int, int, int]]) -> None:
        fb = FrameBatch.from_frames([d[0] for d in datagrams], [d[1] for d in datagrams], LINKTYPE_RAW)
        pk = np.array([d[2] for d in datagrams], dtype=np.int64)
        oc = np.array([d[3] for d in datagrams], dtype=np.int64)
        self.process_decoded(decode_batch(fb, self.decode_options), (pk, oc))

    def _process_packets(
        self, db: DecodedBatch, idx: np.ndarray, weights: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        src = db.src[idx]
        dst = db.dst[idx]
        sport = db.sport[idx]
        dport = db.dport[idx]
        l3 = db.l3[idx]
        l4 = db.l4[idx]
        hashes = flow_hashes(l3, l4, src, sport, dst, dport)
        swap = canonical_swap(src, sport, dst, dport)
        batch = db.batch
        flags = zero_window_marks(db, idx, l4, db.tcp_flags[idx])
        aside = None
        if self.batch_acks:
            # pure ACKs change no stream state but counters: set aside, settled per flow (whole
            # connections count theirs; the others after the per-packet loop)
            pure = (l4 == 6) & (db.payload_len[idx] <= 0) & ((flags & SLOW_FLAGS) == 0)
            if pure.any():
                aside = np.flatnonzero(pure)
                rest = np.flatnonzero(~pure)
                order = rest[np.argsort(hashes[rest], kind="stable")]
        if aside is None:
            order = np.argsort(hashes, kind="stable")
        abs_off = batch.offsets[idx] + db.payload_off[idx]
        icmp = (l4 == 1) | (l4 == 58)
        if icmp.any():
            # ICMP DATA is the whole ICMP message
            l4o = batch.offsets[idx] + db.l4_off[idx]
            abs_off = np.where(icmp, l4o, abs_off)
            plen_all = np.where(icmp, db.ip_len[idx] - (db.l4_off[idx] - db.l3_off[idx]), db.payload_len[idx])
        else:
            plen_all = db.payload_len[idx]
        # a snaplen-truncated capture holds fewer payload bytes than the IP length says: never read
        # past the frame (the missing bytes become a hole in the stream)
        room = batch.offsets[idx] + batch.caplens[idx] - abs_off
        short = plen_all > room
        if short.any():
            self._drop("payload_truncated", int(short.sum()))
            plen_all = np.where(short, np.maximum(room, 0), plen_all)
        cols = {
            "hashes": hashes,
            "swap": swap,
            "l4": l4,
            "flags": flags,
            "abs_off": abs_off,
            "plen": plen_all,
            "src": src,
            "dst": dst,
            "sport": sport,
            "dport": dport,
            "l3": l3,
        }
        if (
            self.use_whole_connections
            and weights is None
            and self.batch_acks
            and not short.any()
            and len(self.table) + order.shape[0] < self.max_flows
        ):
            order, aside = take_whole_connections(self, db, idx, order, cols, aside)
        ack_args = None
        if aside is not None and aside.size:
            # each flow direction's first pure ACK goes through the loop (it may start a flow,
            # activate an endpoint, write `A`); the rest are settled after it
            order, aside = route_first_acks(order, aside, hashes, swap)
            pk = None if weights is None else weights[0][idx][aside]
            octs = (db.ip_len[idx] if weights is None else weights[1][idx])[aside]
            ack_args = (hashes[aside], swap[aside], pk, octs, batch.ts_ns[idx][aside])
        feed_packets(self, db, idx, order, cols, weights)
        if ack_args is not None:
            lost = settle_acks(self.table.flows, *ack_args)
            if lost:
                # their flow's first packet of the batch was refused before them
                self._drop("flow_table_full" if self.midstream else "tcp_no_syn", lost)

    def _datagram(self, flow: Flow, sender: int, payload: bytes, ts: int) -> None:
        if not flow.created:
            flow.created = True
            if flow.l4 == 17:
                rule, m1, m2 = self.classifier.classify_udp(payload, sender, flow.port1, flow.port2)
            else:
                rule, m1, m2 = self.icmp_rule.get(flow.l4), ev.MATCH_NONE, ev.MATCH_NONE
            self._route(flow, rule, m1, m2)
        if sender == 1:
            flow.payload1 += len(payload)
        else:
            flow.payload2 += len(payload)
        self._emit_data(flow, sender, payload, ts)

    # ------------------------------------------------------------------ timers and the end of input
    def collect(self, now_ns: int) -> None:
        """Garbage-collect: partial scan of due timers; idle flows end (TIMEOUT), lingering ones leave."""
        if now_ns > self.now_ns:
            self.now_ns = now_ns
        for flow in self.table.expired(self.now_ns, self.gc_budget):
            if flow.dead:
                continue
            if not flow.ended:
                both_fin = flow.fin1 >= 0 and flow.fin2 >= 0
                self._close(flow, ev.REASON_NORMAL if both_fin else ev.REASON_TIMEOUT, self.now_ns, END_IDLE)
            self._export(flow)
        if self.defrag.pending:
            self.defrag.expire(self.now_ns)

    def finish(self) -> None:
        """End of input: every flow ends now (TIMEOUT unless both FINs were seen), records are produced."""
        for flow in self.table.all_flows():
            if not flow.ended:
                both_fin = flow.fin1 >= 0 and flow.fin2 >= 0
                reason = ev.REASON_NORMAL if both_fin else ev.REASON_TIMEOUT
                self._close(flow, reason, self.now_ns, END_FORCED)
            self._export(flow)
        self.defrag.expire(1 << 62)

    def take_ended(self) -> list[Flow]:
        """Flows that left the table since the last call (for the IPFIX exporter)."""
        out = self.finished
        self.finished = []
        return out

    # ------------------------------------------------------------------ L7 loopback
    def loopback_key(
        self, l3: int, l4: int, a1: bytes, p1: int, a2: bytes, p2: int, hop: int
    ) -> tuple[int, int]:
        """(table key, balance hash) of a re-injected flow: the hop is part of the identity."""
        fk, _ = canonical_key(l3, l4, a1, p1, a2, p2)
        kb = fk.to_bytes()
        return xxhash.xxh64_intdigest(kb + bytes((hop,))), xxhash.xxh64_intdigest(kb)

    def inject(
        self,
        event: str,
        l3: int,
        l4: int,
        a1: bytes,
        p1: int,
        a2: bytes,
        p2: int,
        hop: int,
        sender: int,
        data: bytes,
        ts_ns: int,
    ) -> bool:
        """One event read from the L7 loopback (hop already raised); False when dropped (counted)."""
        alen = 4 if l3 == 4 else 16
        if not (0 <= p1 <= 0xFFFF and 0 <= p2 <= 0xFFFF and 0 <= hop <= 0xFF and len(a1) == len(a2) == alen):
            self.count_loopback_drop("bad_event")  # the input edge validates; this guards other callers
            return False
        if hop > self.hop_limit:
            self.count_loopback_drop("hop_limit")
            return False
        if ts_ns > self.now_ns:
            self.now_ns = ts_ns
        key, fhash = self.loopback_key(l3, l4, a1, p1, a2, p2, hop)
        flow = self.table.flows.get(key)
        if flow is not None and flow.ended:
            self._export(flow)
            flow = None
        if event == "DESTROYED":
            if flow is not None:
                self._close(flow, ev.REASON_NORMAL, ts_ns, END_DETECTED)
            return True
        if flow is None:
            flow = self._new_flow(key, fhash, l3, l4, a1, p1, a2, p2, False, hop, ts_ns)
            if flow is None:
                return False
        flow.last_ns = max(flow.last_ns, ts_ns)
        if event == "DATA" and data:
            if sender == 1:
                flow.pkts1 += 1
                flow.octets1 += len(data)
            else:
                flow.pkts2 += 1
                flow.octets2 += len(data)
            if l4 == 6:
                self._deliver(flow, sender, data, ts_ns)
            else:
                self._datagram(flow, sender, data, ts_ns)
        return True
