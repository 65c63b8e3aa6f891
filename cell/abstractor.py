"""The flow abstractor core, sans-IO: decoded frame batches in, interface byte streams and ended flows out.

Pipeline per batch: decode status -> IP defragmentation -> canonical flow key and hash (numpy, whole
batch) -> packets grouped by flow with one stable argsort (packet order inside a flow is kept) ->
per-flow TCP reassembly / UDP datagrams / ICMP messages -> classification -> events appended to the
interface sinks. The I/O edge (cell/interfaces.py) drains `Sink.parts` after each batch.

Connections that open, carry in-order data and close inside one batch (most of a
connections-per-second load) skip the per-packet loop: they are found with array passes
(cell/whole_connections.py) and handled flow by flow, with the same events, records and counters.

Flows end with a reason: NORMAL (FIN both ways), RESET, TIMEOUT (idle; also end of input),
COMPROMISED (reserved: a full table refuses new flows rather than evicting). A closed TCP flow
lingers briefly so trailing ACKs still count in its IPFIX record; the record is produced when the
flow leaves the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import xxhash

from cell import events as ev
from cell.classifier import Classifier
from cell.defrag import Defragmenter
from cell.flow_table import Flow, FlowTable
from cell.sftap_config import CellConfig, Rule
from cell.tcp_reassembly import ACK, FIN, KEEP, SYN, TcpStats, segment, skip_gaps
from cell.whole_connections import whole_connections
from celltap.decode import DecodedBatch, DecodeOptions, Reason, decode_batch
from celltap.flowkey import canonical_key, canonical_swap, flow_hashes
from celltap.pcap.batch import LINKTYPE_RAW, FrameBatch, gather_frames

log = logging.getLogger("celltap.cell")

# pure ACKs set aside: (flow hash, swapped, packets or None, octets, time) per ACK
AckArgs = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]

LINGER_NS = 2_000_000_000  # closed TCP flows absorb trailing ACKs / FIN retransmissions this long

# IPFIX flowEndReason (IANA IE 136)
END_IDLE, END_DETECTED, END_FORCED, END_RESOURCES = 1, 3, 4, 5

_PROTO_DIR = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "icmp"}


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
        self.tcp_stats = TcpStats()
        self.classify_bytes = g.classify_bytes
        self.classify_hold = max(g.classify_hold, g.classify_bytes)
        self.classify_memory = g.classify_memory
        self.held_total = 0  # stream bytes held back for classification, all flows
        self.classified_early = {"hold": 0, "memory": 0}  # classified before both sides spoke
        self.ooo_memory = g.ooo_memory
        self.ooo_limit = g.ooo_limit
        self.midstream = g.midstream
        self.decode_options = DecodeOptions(decapsulate=g.decapsulate)
        self.hop_limit = g.hop_limit
        self.max_flows = g.max_flows
        self.gc_budget = g.gc_scan
        self.batch_acks = True
        self.use_whole_connections = True  # the per-flow path for connections complete in one batch
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
        self.drops: dict[str, int] = {}  # packets not turned into flow data, by reason
        self.loopback_drops: dict[str, int] = {}  # L7 loopback events not re-injected, by reason
        self.packets = 0
        self.octets = 0
        self.flows_created: dict[str, int] = {}
        self.flows_destroyed: dict[str, int] = {}
        self.unrouted_bytes = 0  # flow data with no interface to go to (no rule, no default)
        self.now_ns = 0

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
        if sender == 1:
            if len(flow.head1) < limit:
                flow.head1 = (flow.head1 + data)[:limit]
        elif len(flow.head2) < limit:
            flow.head2 = (flow.head2 + data)[:limit]
        flow.held += len(data)
        self.held_total += len(data)
        if flow.head1 and flow.head2:
            self._classify_tcp(flow, sender)  # SF-TAP's trigger: both sides have spoken
        elif flow.held >= self.classify_hold:
            # One side keeps talking while the other is silent (a large upload before the answer).
            # A `down` regex needs the silent side's first bytes, so the flow waits for them, but
            # holds no more than classify_hold bytes...
            self.classified_early["hold"] += 1
            self._classify_tcp(flow, sender)
        elif self.held_total > self.classify_memory:
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
        self.tcp_stats.ooo_bytes -= flow.ooo_bytes
        flow.ooo_bytes = 0
        flow.ooo1 = flow.ooo2 = None
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
            self.process_decoded(decode_batch(batch, self.decode_options))
        self.collect(now_ns if now_ns is not None else self.now_ns)

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
        datagrams: list[tuple[bytes, int, int, int]] = []
        if frag.any():
            self._defragment(db, np.flatnonzero(frag), datagrams)
        keep = ~bad & ~frag
        known = (l4 == 6) | (l4 == 17) | (l4 == 1) | (l4 == 58)
        other = keep & ~known
        if other.any():
            self._drop("unsupported_l4", int(other.sum()))
        idx = np.flatnonzero(keep & known)
        if idx.size:
            self._process_packets(db, idx, weights)
        if datagrams:
            self._process_datagrams(datagrams)

    def _defragment(self, db: DecodedBatch, idx: np.ndarray, out: list[tuple[bytes, int, int, int]]) -> None:
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
                out.append((done[0], ts, done[1], done[2]))
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
        acks_apart = not self.midstream and self.batch_acks
        if acks_apart:
            # Pure ACKs (TCP, no payload, no SYN/FIN/RST) change no stream state: only their flow's
            # counters, settled per flow after the batch instead of per packet in the loop below.
            pure = (l4 == 6) & (db.payload_len[idx] <= 0) & ((db.tcp_flags[idx] & 7) == 0)
            if pure.any():
                acks = np.flatnonzero(pure)
                pk = None if weights is None else weights[0][idx][acks]
                octs = (db.ip_len[idx] if weights is None else weights[1][idx])[acks]
                ack_args = (hashes[acks], swap[acks], pk, octs, batch.ts_ns[idx][acks])
                keep = np.flatnonzero(~pure)
                hashes, swap, idx = hashes[keep], swap[keep], idx[keep]
                src, dst, sport, dport, l3, l4 = (
                    src[keep],
                    dst[keep],
                    sport[keep],
                    dport[keep],
                    l3[keep],
                    l4[keep],
                )
            else:
                ack_args = None
        else:
            ack_args = None
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
        if (
            self.use_whole_connections
            and weights is None
            and acks_apart
            and not short.any()
            and len(self.table) + order.shape[0] < self.max_flows
        ):
            order, ack_args = self._whole_connections(
                db, idx, order, hashes, swap, l4, abs_off, plen_all, ack_args
            )
        if weights is None:
            pk_l = None
            oct_l = db.ip_len[idx][order].tolist()
        else:
            pk_l = weights[0][idx][order].tolist()
            oct_l = weights[1][idx][order].tolist()
        pk_col = [1] * len(oct_l) if pk_l is None else pk_l
        columns = zip(
            hashes[order].tolist(),
            swap[order].tolist(),
            l4[order].tolist(),
            db.tcp_flags[idx][order].tolist(),
            db.tcp_seq[idx][order].tolist(),
            abs_off[order].tolist(),
            plen_all[order].tolist(),
            batch.ts_ns[idx][order].tolist(),
            pk_col,
            oct_l,
            order.tolist(),
            strict=True,
        )
        raw = memoryview(batch.buf)
        flows = self.table.flows
        deliver = self._deliver
        stats = self.tcp_stats
        ooo_limit = self.ooo_limit
        ooo_memory = self.ooo_memory
        midstream = self.midstream
        prev = -1
        flow: Flow | None = None
        l3_l = sport_l = dport_l = None
        src_b = dst_b = b""
        row = src.shape[1] if src.ndim == 2 else 16
        for h, swapped, proto, flags, seq, po, plen, ts, npk, noct, r in columns:
            if h != prev:
                prev = h
                flow = flows.get(h)
            if flow is not None and flow.ended and proto == 6 and flags & SYN and not flags & ACK:
                # a new connection on a lingering key (port reuse): the old record is complete
                self._export(flow)
                flow = None
            if flow is None:
                if proto == 6 and not (flags & SYN and not flags & ACK) and not midstream:
                    self._drop("tcp_no_syn")
                    continue
                if l3_l is None:
                    # plain-list views, built once per batch when the first new flow needs them
                    # (numpy scalar indexing costs more than the rest of a new flow's setup)
                    l3_l, sport_l, dport_l = l3.tolist(), sport.tolist(), dport.tolist()
                    src_b, dst_b = src.tobytes(), dst.tobytes()
                v = l3_l[r]
                at = r * row
                a = at + (4 if v == 4 else 16)
                flow = self._new_flow(
                    h, h, v, proto, src_b[at:a], sport_l[r], dst_b[at:a], dport_l[r], swapped, 0, ts
                )
                if flow is None:
                    continue
                if proto == 6 and not flags & SYN and midstream:
                    # midstream pickup: call the endpoint with the lower port the server
                    flow.init_dir = 2 if flow.port1 < flow.port2 else 1
            if flow.last_ns < ts:
                flow.last_ns = ts
            if swapped:
                flow.pkts2 += npk
                flow.octets2 += noct
            else:
                flow.pkts1 += npk
                flow.octets1 += noct
            if flow.ended:
                continue  # lingering after close: counted, nothing more to deliver
            if plen <= 0:
                if proto != 6:
                    continue
                f7 = flags & 7
                if f7 == SYN:
                    # a bare SYN / SYN-ACK: it only fixes the direction's initial sequence number
                    if swapped:
                        if flow.nxt2 < 0:
                            flow.nxt2 = (seq + 1) & 0xFFFFFFFF
                    elif flow.nxt1 < 0:
                        flow.nxt1 = (seq + 1) & 0xFFFFFFFF
                    continue
                if not f7 and (flow.nxt2 if swapped else flow.nxt1) >= 0:
                    continue  # a pure ACK changes no stream state
                if f7 == FIN and (flow.ooo2 if swapped else flow.ooo1) is None:
                    # a bare FIN with nothing buffered on its side: segment()'s FIN handling, inline
                    if swapped:
                        if flow.nxt2 >= 0:
                            flow.fin2 = seq
                            if flow.nxt2 == seq:
                                flow.closed2 = True
                            if flow.closed1 and flow.closed2:
                                self._close(flow, ev.REASON_NORMAL, ts, END_DETECTED)
                            continue
                    elif flow.nxt1 >= 0:
                        flow.fin1 = seq
                        if flow.nxt1 == seq:
                            flow.closed1 = True
                        if flow.closed1 and flow.closed2:
                            self._close(flow, ev.REASON_NORMAL, ts, END_DETECTED)
                        continue
                payload = b""
            else:
                payload = bytes(raw[po : po + plen])
                if proto == 6 and not flags & 7:
                    # fast path: the next in-order segment of a direction with no holes and no FIN yet
                    if swapped:
                        if seq == flow.nxt2 and flow.ooo2 is None and flow.fin2 < 0:
                            deliver(flow, 2, payload, ts)
                            flow.nxt2 = (flow.nxt2 + plen) & 0xFFFFFFFF
                            continue
                    elif seq == flow.nxt1 and flow.ooo1 is None and flow.fin1 < 0:
                        deliver(flow, 1, payload, ts)
                        flow.nxt1 = (flow.nxt1 + plen) & 0xFFFFFFFF
                        continue
            if proto == 6:
                res = segment(
                    flow, 2 if swapped else 1, flags, seq, payload, ts, deliver, stats, ooo_limit, ooo_memory
                )
                if res != KEEP:
                    self._close(flow, res, ts, END_DETECTED)
            elif payload:
                self._datagram(flow, 2 if swapped else 1, payload, ts)
        if ack_args is not None:
            self._account_acks(*ack_args)

    def _whole_connections(
        self,
        db: DecodedBatch,
        idx: np.ndarray,
        order: np.ndarray,
        hashes: np.ndarray,
        swap: np.ndarray,
        l4: np.ndarray,
        abs_off: np.ndarray,
        plen: np.ndarray,
        acks: AckArgs | None,
    ) -> tuple[np.ndarray, AckArgs | None]:
        """Open, feed and close the batch's whole connections flow by flow.

        Same events, counters and flow state as the per-packet loop and the ACK settlement would
        produce for them (see cell/whole_connections.py for what qualifies). Returns the rest of
        `order` and the pure ACKs that belong to other flows.
        """
        hs = hashes[order]
        sw = swap[order]
        seq = db.tcp_seq[idx][order]
        starts, ends = whole_connections(hs, sw, l4[order], db.tcp_flags[idx][order], seq, plen[order])
        if not starts.size:
            return order, acks
        flows = self.table.flows
        new = np.fromiter((h not in flows for h in hs[starts].tolist()), bool, starts.shape[0])
        starts, ends = starts[new], ends[new]
        if not starts.size:
            return order, acks
        size = ends - starts
        off = np.concatenate(([0], np.cumsum(size)[:-1]))  # each flow's first entry in `rows`
        rows = np.repeat(starts - off, size) + np.arange(int(size.sum()))  # positions in `order`
        r_sw = sw[rows]
        octs = db.ip_len[idx][order][rows].astype(np.int64)
        pk2 = np.add.reduceat(r_sw.astype(np.int64), off)
        oc2 = np.add.reduceat(np.where(r_sw, octs, 0), off)
        oc1 = np.add.reduceat(octs, off) - oc2
        pk1 = size - pk2
        # the batch's pure ACKs of these flows: settled here, in the sums, not one flow at a time
        ack_last = np.full(starts.shape[0], -1, np.int64)
        if acks is not None:
            a_h, a_sw, _a_pk, a_oct, a_ts = acks  # packet weights only come with datagrams
            flow_h = hs[starts]
            by_h = np.argsort(flow_h)
            at = np.minimum(np.searchsorted(flow_h[by_h], a_h), by_h.shape[0] - 1)
            mine = flow_h[by_h][at] == a_h
            if mine.any():
                fi = by_h[at[mine]]
                m_sw = a_sw[mine].astype(np.int64)
                m_oct = a_oct[mine].astype(np.int64)
                m = starts.shape[0]
                pk2 = pk2 + np.bincount(fi, weights=m_sw, minlength=m).astype(np.int64)
                pk1 = pk1 + np.bincount(fi, weights=1 - m_sw, minlength=m).astype(np.int64)
                oc2 = oc2 + np.bincount(fi, weights=m_oct * m_sw, minlength=m).astype(np.int64)
                oc1 = oc1 + np.bincount(fi, weights=m_oct * (1 - m_sw), minlength=m).astype(np.int64)
                np.maximum.at(ack_last, fi, a_ts[mine].astype(np.int64))
                rest = ~mine
                acks = (a_h[rest], a_sw[rest], None, a_oct[rest], a_ts[rest]) if rest.any() else None
        r_pl = plen[order][rows].astype(np.int64)
        sent2 = np.add.reduceat(np.where(r_sw, r_pl, 0), off)
        sent1 = np.add.reduceat(r_pl, off) - sent2
        # One talker and less than the classification window: the per-packet path would hold all
        # of it back and classify at the close. Those flows' stream bytes are gathered for the whole
        # batch at once; the others are fed segment by segment.
        # (and short enough for one DATA event: a classify_bytes above 65535 is allowed)
        window = min(self.classify_bytes, ev.MAX_EVENT_DATA + 1)
        one = ((sent1 == 0) | (sent2 == 0)) & (sent1 + sent2 < window)
        r_one = np.repeat(one, size) & (r_pl > 0)
        blob = gather_frames(db.batch.buf, abs_off[order][rows][r_one], r_pl[r_one]).tobytes()
        data_end = np.cumsum(np.where(one, sent1 + sent2, 0))
        # the time of a one-talker flow's DATA event: its last segment's
        r_ts = db.batch.ts_ns[idx][order][rows]
        last_data = np.maximum.reduceat(np.where(r_pl > 0, np.arange(rows.shape[0]), -1), off)
        data_ts = np.where(last_data >= 0, r_ts[np.maximum(last_data, 0)], 0)
        talker = np.where(sent2 > 0, 2, 1)
        first = order[starts]  # the SYN's row in the idx-space arrays
        src, dst = db.src[idx][first], db.dst[idx][first]
        width = src.shape[1]
        src_b, dst_b = src.tobytes(), dst.tobytes()
        r_seq = seq[rows]
        isn_a = r_seq[off].astype(np.int64)  # the SYN's sender
        isn_b = r_seq[off + 1].astype(np.int64)  # the SYN-ACK's sender
        swapped0 = r_sw[off]
        isn1 = np.where(swapped0, isn_b, isn_a)
        isn2 = np.where(swapped0, isn_a, isn_b)
        nxt1 = (isn1 + 1 + sent1) & 0xFFFFFFFF
        nxt2 = (isn2 + 1 + sent2) & 0xFFFFFFFF
        sw_l = r_sw.tolist()
        po_l = abs_off[order][rows].tolist()
        pl_l = r_pl.tolist()
        ts_l = r_ts.tolist()
        raw = memoryview(db.batch.buf)
        deliver = self._deliver
        close = self._close
        table_flows = self.table.flows
        classify = self.classifier.classify_tcp
        rule_sinks = self.rule_sinks
        text_prefix = ev.text_prefix
        text_whole_flow = ev.text_whole_flow
        schedule = self.table.schedule
        normal = ev.REASON_NORMAL
        at_data = 0
        for k, (o0, n0, h, l3v, sp, dp, p1, p2, o1, o2, x1, x2, is_one, de, dts, who, s0, al) in enumerate(
            zip(
                off.tolist(),
                size.tolist(),
                hs[starts].tolist(),
                db.l3[idx][first].tolist(),
                db.sport[idx][first].tolist(),
                db.dport[idx][first].tolist(),
                pk1.tolist(),
                pk2.tolist(),
                oc1.tolist(),
                oc2.tolist(),
                nxt1.tolist(),
                nxt2.tolist(),
                one.tolist(),
                data_end.tolist(),
                data_ts.tolist(),
                talker.tolist(),
                swapped0.tolist(),
                ack_last.tolist(),
                strict=True,
            )
        ):
            at = k * width
            a = at + (4 if l3v == 4 else 16)
            ts0 = ts_l[o0]
            if s0:
                flow = Flow(h, h, l3v, 6, dst_b[at:a], dp, src_b[at:a], sp, 0, ts0)
                flow.init_dir = 2
            else:
                flow = Flow(h, h, l3v, 6, src_b[at:a], sp, dst_b[at:a], dp, 0, ts0)
            # no idle timer: the flow closes below and then lingers on its own timer
            table_flows[h] = flow
            flow.pkts1 = p1
            flow.pkts2 = p2
            flow.octets1 = o1
            flow.octets2 = o2
            flow.nxt1 = flow.fin1 = x1
            flow.nxt2 = flow.fin2 = x2
            flow.closed1 = flow.closed2 = True
            last = ts_l[o0 + n0 - 1]
            if is_one:
                # One talker under the window: classify on all of it, then CREATED, DATA, DESTROYED
                # (what _classify_tcp and _close would produce at the close), inlined: this is the
                # connections-per-second hot path.
                data = blob[at_data:de]
                at_data = de
                if who == 1:
                    rule, m1, m2 = classify(data, b"", flow.port1, flow.port2)
                else:
                    rule, m1, m2 = classify(b"", data, flow.port1, flow.port2)
                flow.rule = rule
                flow.match1 = m1
                flow.match2 = m2
                flow.created = True
                if rule is None:
                    self.unrouted_bytes += len(data)
                else:
                    sinks = rule_sinks[rule.name]
                    sink = flow.sink = sinks[h % len(sinks)] if len(sinks) > 1 else sinks[0]
                    if sink.fmt == "text":
                        prefix = text_prefix(l3v, 6, flow.addr1, flow.port1, flow.addr2, flow.port2, 0)
                        sink.parts += text_whole_flow(
                            prefix, ts0, who, m1 if who == 1 else m2, data, dts, last, normal, sink.body
                        )
                        sink.events += 3 if data else 2
                    else:
                        self._whole_binary(flow, sink, who, data, dts, last)
                flow.end_reason = normal
                if last > ts0:
                    flow.end_ns = last
                flow.ended = True
                flow.ipfix_end = END_DETECTED
                schedule(flow, last + LINGER_NS)
            else:
                flow.pending = []
                for j in range(o0 + 2, o0 + n0):
                    pl = pl_l[j]
                    if pl:
                        po = po_l[j]
                        deliver(flow, 2 if sw_l[j] else 1, bytes(raw[po : po + pl]), ts_l[j])
                close(flow, ev.REASON_NORMAL, last, END_DETECTED)
            flow.last_ns = al if al > last else last
        created = self.flows_created
        created["tcp"] = created.get("tcp", 0) + int(starts.shape[0])
        self.whole_flows += int(starts.shape[0])
        n_one = int(one.sum())
        if n_one:
            done = self.flows_destroyed
            done["NORMAL"] = done.get("NORMAL", 0) + n_one
        generic = np.ones(order.shape[0], bool)
        generic[rows] = False
        return order[generic], acks

    def _whole_binary(
        self, flow: Flow, sink: Sink, sender: int, data: bytes, data_ts: int, end_ns: int
    ) -> None:
        """CREATED, one DATA (if any) and DESTROYED of a one-talker connection, binary format."""
        w = flow.wire_id()
        parts = sink.parts
        parts.append(ev.binary_created(w, flow.start_ns, sender if data else 0))
        if data:
            match = flow.match1 if sender == 1 else flow.match2
            sink.events += ev.binary_data(parts, w, sender, match, data, data_ts, sink.body)
        parts.append(ev.binary_destroyed(w, ev.REASON_NORMAL, end_ns))
        sink.events += 2
        flow.wire = None

    def _account_acks(
        self, hashes: np.ndarray, swap: np.ndarray, pk: np.ndarray | None, octs: np.ndarray, ts: np.ndarray
    ) -> None:
        """Add pure ACKs to their flows' counters, one Python step per flow; ACKs of no flow are dropped."""
        uniq, inv = np.unique(hashes, return_inverse=True)
        m = uniq.shape[0]
        d2 = swap.astype(np.int64)
        slot = inv * 2 + d2
        ones = np.ones(inv.shape[0], np.int64) if pk is None else pk.astype(np.int64)
        pkts = np.bincount(slot, weights=ones, minlength=2 * m).astype(np.int64).reshape(m, 2)
        octets = (
            np.bincount(slot, weights=octs.astype(np.int64), minlength=2 * m).astype(np.int64).reshape(m, 2)
        )
        last = np.zeros(m, np.int64)
        np.maximum.at(last, inv, ts)
        flows = self.table.flows
        lost = 0
        # flat columns: tolist() of an (m, 2) array builds a small list per row
        for h, p1, p2, o1, o2, t in zip(
            uniq.tolist(),
            pkts[:, 0].tolist(),
            pkts[:, 1].tolist(),
            octets[:, 0].tolist(),
            octets[:, 1].tolist(),
            last.tolist(),
            strict=True,
        ):
            flow = flows.get(h)
            if flow is None:
                lost += p1 + p2
                continue
            flow.pkts1 += p1
            flow.pkts2 += p2
            flow.octets1 += o1
            flow.octets2 += o2
            if flow.last_ns < t:
                flow.last_ns = t
        if lost:
            self._drop("tcp_no_syn", lost)

    def _datagram(self, flow: Flow, sender: int, payload: bytes, ts: int) -> None:
        if not flow.created:
            flow.created = True
            if flow.l4 == 17:
                rule, m1, m2 = self.classifier.classify_udp(payload, sender, flow.port1, flow.port2)
            else:
                rule, m1, m2 = self.icmp_rule.get(flow.l4), ev.MATCH_NONE, ev.MATCH_NONE
            self._route(flow, rule, m1, m2)
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
        """One event read from the L7 loopback (hop already raised); False when dropped by the hop limit."""
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
