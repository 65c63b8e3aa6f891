"""The whole-connection path: connections that open and close inside one batch, flow by flow.

Theory of operation. cell/whole_connections.py finds, with array passes, the connections of a
batch that need nothing of the reassembler but in-order delivery (handshake, in-order data, a FIN
each way, pure ACKs). Here each of them becomes a Flow in one step with its counters, stream end
points, Zeek history and TCP state set from the arrays, instead of one Python step per packet;
a one-talker connection under the classification window is classified and emitted at once
(CREATED, DATA, DESTROYED). The result (events, flow records, counters, history) is the same as
the per-packet path's for the same packets: tests/cell/test_whole_connections.py compares both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from celltap.cell import events as ev
from celltap.cell.event_times import ts_texts
from celltap.cell.flow_table import END_DETECTED, LINGER_NS, Flow
from celltap.cell.tcp_reassembly import ACK
from celltap.cell.tcp_state import CLOSED, ESTABLISHED, H_ACK, H_DATA, H_SENT, SYN_BOTH
from celltap.cell.whole_connections import NO_EVENT, event_codes, whole_connections

from celltap.decode import DecodedBatch
from celltap.pcap.batch import scatter_rows

if TYPE_CHECKING:
    from celltap.cell.abstractor import Abstractor, Sink

# both endpoints CLOSED, each having been ESTABLISHED before (cell/tcp_state.py's packing)
CLOSED_AFTER_ESTABLISHED = CLOSED | CLOSED << 4 | ESTABLISHED << 8 | ESTABLISHED << 12
_EVENT_LETTERS = "AaDdFf"  # side 0 (the SYN's sender, the originator) upper case


class ByteScratch:
    """A reusable byte buffer for gathers whose result is copied out at once.

    A fresh multi-megabyte numpy array per batch costs a page fault per 4 KiB page each time (the
    allocator hands large blocks back to the kernel when they are freed): for the cps workload's
    one-talker payloads that was ten times the copy itself. The buffer grows to the largest gather
    seen and is reused.
    """

    def __init__(self) -> None:
        self.buf = np.empty(0, np.uint8)

    def gather_bytes(self, src: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> bytes:
        """src[offsets[i]:offsets[i]+lengths[i]] for every i, concatenated."""
        lengths = lengths.astype(np.int64, copy=False)
        total = int(lengths.sum())
        if total == 0:
            return b""
        if self.buf.shape[0] < total:
            self.buf = np.empty(max(total, 2 * self.buf.shape[0]), np.uint8)
        starts = np.zeros(lengths.shape[0], np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        scatter_rows(self.buf, starts, src, offsets, lengths)
        return self.buf[:total].tobytes()


def whole_histories(codes: np.ndarray, swapped0: np.ndarray) -> tuple[list[str], list[int]]:
    """History strings and hbits of whole connections from their event-order codes (whole_connections)."""
    uniq, inv = np.unique(codes, return_inverse=True)
    texts: list[str] = []
    bits1: list[int] = []  # hbits when the originator is endpoint 1
    for code in uniq.tolist():
        placed = []
        b0 = b1 = 0
        for k in range(6):
            place = (code >> (3 * k)) & 7
            if place == 7:
                continue
            placed.append((place, _EVENT_LETTERS[k]))
            side_bits = H_ACK if k < 2 else (H_DATA | H_SENT if k < 4 else 0)
            if k % 2 == 0:
                b0 |= side_bits
            else:
                b1 |= side_bits
        placed.sort()
        texts.append("Sh" + "".join(c for _, c in placed))
        bits1.append(b0 | b1 << 8 | SYN_BOTH)
    swap_bits = [((b & 0xFF) << 8) | (b >> 8) for b in bits1]
    inv_l = inv.tolist()
    hist = [texts[i] for i in inv_l]
    hbits = [swap_bits[i] if s else bits1[i] for i, s in zip(inv_l, swapped0.tolist(), strict=True)]
    return hist, hbits


def take_whole_connections(
    ab: Abstractor,
    db: DecodedBatch,
    idx: np.ndarray,
    order: np.ndarray,
    cols: dict[str, np.ndarray],
    aside: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Open, feed and close the batch's whole connections flow by flow.

    Same events, counters and flow state as the per-packet loop and the ACK settlement would
    produce for them (see cell/whole_connections.py for what qualifies). `aside`: positions of the
    batch's pure ACKs (set aside before; those of these connections are counted here). Returns the
    rest of `order` and of `aside`.
    """
    hashes, swap, l4, abs_off, plen = cols["hashes"], cols["swap"], cols["l4"], cols["abs_off"], cols["plen"]
    hs = hashes[order]
    sw = swap[order]
    seq = db.tcp_seq[idx[order]]
    flags = cols["flags"][order]
    starts, ends, closes, events = whole_connections(hs, sw, l4[order], flags, seq, plen[order])
    if not starts.size:
        return order, aside
    flows = ab.table.flows
    new = np.fromiter((h not in flows for h in hs[starts].tolist()), bool, starts.shape[0])
    starts, ends, closes, events = starts[new], ends[new], closes[new], events[new]
    if not starts.size:
        return order, aside
    m = starts.shape[0]
    swapped0 = sw[starts]
    close_pos = order[closes]  # the closing FIN's position in the batch
    size = ends - starts
    off = np.concatenate(([0], np.cumsum(size)[:-1]))  # each flow's first entry in `rows`
    rows = np.repeat(starts - off, size) + np.arange(int(size.sum()))  # positions in `order`
    r_sw = sw[rows]
    pos = order[rows]  # the whole flows' packets, flow by flow, as positions in `idx`
    at_db = idx[pos]  # and in `db`
    octs = db.ip_len[at_db].astype(np.int64)
    pk2 = np.add.reduceat(r_sw.astype(np.int64), off)
    oc2 = np.add.reduceat(np.where(r_sw, octs, 0), off)
    oc1 = np.add.reduceat(octs, off) - oc2
    pk1 = size - pk2
    # The batch's pure ACKs of these flows: settled here, in the sums, not one flow at a time.
    # Each side's first one is where the per-packet path would write `A` (if it has ACK); its
    # last-seen time counts only if it came after the close (the per-packet path resets the time
    # at the close), the others' always (they are settled after the batch there).
    ack_last = np.full(m, -1, np.int64)
    hist_pos = np.full((m, 6), NO_EVENT, np.int64)
    if aside is not None and aside.size:
        a_h = hashes[aside]
        flow_h = hs[starts]
        by_h = np.argsort(flow_h)
        at = np.minimum(np.searchsorted(flow_h[by_h], a_h), by_h.shape[0] - 1)
        mine = flow_h[by_h][at] == a_h
        if mine.any():
            fi = by_h[at[mine]]
            a_pos = aside[mine]
            m_sw = swap[a_pos].astype(np.int64)
            a_db = idx[a_pos]
            m_oct = db.ip_len[a_db].astype(np.int64)
            a_ts = db.batch.ts_ns[a_db].astype(np.int64)
            pk2 = pk2 + np.bincount(fi, weights=m_sw, minlength=m).astype(np.int64)
            pk1 = pk1 + np.bincount(fi, weights=1 - m_sw, minlength=m).astype(np.int64)
            oc2 = oc2 + np.bincount(fi, weights=m_oct * m_sw, minlength=m).astype(np.int64)
            oc1 = oc1 + np.bincount(fi, weights=m_oct * (1 - m_sw), minlength=m).astype(np.int64)
            a_side = (m_sw != swapped0[fi]).astype(np.int64)  # 0: the SYN's sender
            _, first = np.unique(fi * 2 + a_side, return_index=True)  # `aside` is in capture order
            counts = np.ones(fi.shape[0], bool)
            counts[first] = a_pos[first] > close_pos[fi[first]]
            np.maximum.at(ack_last, fi[counts], a_ts[counts])
            has_ack = (cols["flags"][a_pos[first]] & ACK) != 0
            hist_pos[fi[first][has_ack], a_side[first][has_ack]] = a_pos[first][has_ack]
            aside = aside[~mine]
    r_pl = plen[pos].astype(np.int64)
    r_abs = abs_off[pos]
    sent2 = np.add.reduceat(np.where(r_sw, r_pl, 0), off)
    sent1 = np.add.reduceat(r_pl, off) - sent2
    # One talker and less than the classification window: the per-packet path would hold all
    # of it back and classify at the close. Those flows' stream bytes are gathered for the whole
    # batch at once; the others are fed segment by segment.
    # (and short enough for one DATA event: a classify_bytes above 65535 is allowed)
    window = min(ab.classify_bytes, ev.MAX_EVENT_DATA + 1)
    one = ((sent1 == 0) | (sent2 == 0)) & (sent1 + sent2 < window)
    r_one = np.repeat(one, size) & (r_pl > 0)
    blob = ab.whole_scratch.gather_bytes(db.batch.buf, r_abs[r_one], r_pl[r_one])
    data_end = np.cumsum(np.where(one, sent1 + sent2, 0))
    # the time of a one-talker flow's DATA event: its last segment's
    r_ts = db.batch.ts_ns[at_db]
    last_data = np.maximum.reduceat(np.where(r_pl > 0, np.arange(rows.shape[0]), -1), off)
    data_ts = np.where(last_data >= 0, r_ts[np.maximum(last_data, 0)], 0)
    talker = np.where(sent2 > 0, 2, 1)
    first = order[starts]  # the SYN's row in the idx-space arrays
    src, dst = cols["src"][first], cols["dst"][first]
    width = src.shape[1]
    src_b, dst_b = src.tobytes(), dst.tobytes()
    first_db = idx[first]
    vlans = (db.vlan[first_db].tolist(), db.vlan_inner[first_db].tolist()) if db.vlan.any() else None
    r_seq = seq[rows]
    isn_a = r_seq[off].astype(np.int64)  # the SYN's sender
    isn_b = r_seq[off + 1].astype(np.int64)  # the SYN-ACK's sender
    swapped0 = r_sw[off]
    isn1 = np.where(swapped0, isn_b, isn_a)
    isn2 = np.where(swapped0, isn_a, isn_b)
    nxt1 = (isn1 + 1 + sent1) & 0xFFFFFFFF
    nxt2 = (isn2 + 1 + sent2) & 0xFFFFFFFF
    sw_l = r_sw.tolist()
    po_l = r_abs.tolist()
    pl_l = r_pl.tolist()
    ts_l = r_ts.tolist()
    raw = memoryview(db.batch.buf)
    deliver = ab._deliver
    close = ab._close
    table_flows = ab.table.flows
    classify = ab.classifier.classify_tcp
    rule_sinks = ab.rule_sinks
    text_prefix = ev.text_prefix
    text_whole_flow_at = ev.text_whole_flow_at
    schedule = ab.table.schedule
    normal = ev.REASON_NORMAL
    at_data = 0
    # the flow closes at its second FIN (only pure ACKs may follow); its last-seen time is the latest
    # of that FIN, the rows after it and its set-aside ACKs (as the per-packet path keeps it)
    c_rank = np.repeat(closes - starts, size)
    r_rank = np.arange(rows.shape[0]) - np.repeat(off, size)
    close_ts = r_ts[off + closes - starts]
    seen_ts = np.maximum(np.maximum.reduceat(np.where(r_rank >= c_rank, r_ts, 0), off), ack_last)
    ev_at = starts[:, None] + np.minimum(events, 0x7FFFFFFF)  # row in `order` (clipped when none)
    hist_pos[:, 2:] = np.where(events < NO_EVENT, order[np.minimum(ev_at, order.shape[0] - 1)], NO_EVENT)
    hist_l, hbits_l = whole_histories(event_codes(hist_pos), swapped0)
    syns = (isn1.astype(np.uint64) | isn2.astype(np.uint64) << np.uint64(32)).tolist()
    # the text events' times (start, DATA, close), formatted for the whole batch at once
    times = ts_texts(np.concatenate((r_ts[off], data_ts, close_ts)))
    for k, (
        o0,
        n0,
        h,
        l3v,
        sp,
        dp,
        p1,
        p2,
        o1,
        o2,
        x1,
        x2,
        is_one,
        de,
        dts,
        who,
        s0,
        last,
        seen,
        t_start,
        t_data,
        t_end,
    ) in enumerate(
        zip(
            off.tolist(),
            size.tolist(),
            hs[starts].tolist(),
            cols["l3"][first].tolist(),
            cols["sport"][first].tolist(),
            cols["dport"][first].tolist(),
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
            close_ts.tolist(),
            seen_ts.tolist(),
            times[:m],
            times[m : 2 * m],
            times[2 * m :],
            strict=True,
        )
    ):
        at = k * width
        a = at + (4 if l3v == 4 else 16)
        ts0 = ts_l[o0]
        if s0:
            flow = Flow(h, h, l3v, 6, dst_b[at:a], dp, src_b[at:a], sp, 0, ts0)
            flow.orig = 2
        else:
            flow = Flow(h, h, l3v, 6, src_b[at:a], sp, dst_b[at:a], dp, 0, ts0)
        if vlans is not None:
            flow.vlan, flow.inner_vlan = vlans[0][k], vlans[1][k]
        # no idle timer: the flow closes below and then lingers on its own timer
        table_flows[h] = flow
        flow.pkts1 = p1
        flow.pkts2 = p2
        flow.octets1 = o1
        flow.octets2 = o2
        flow.nxt1 = flow.fin1 = x1
        flow.nxt2 = flow.fin2 = x2
        flow.closed1 = flow.closed2 = True
        flow.history = hist_l[k]
        flow.hbits = hbits_l[k]
        flow.tstate = CLOSED_AFTER_ESTABLISHED
        flow.syns = syns[k]
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
                ab.unrouted_bytes += len(data)
            else:
                sinks = rule_sinks[rule.name]
                sink = flow.sink = sinks[h % len(sinks)] if len(sinks) > 1 else sinks[0]
                if sink.fmt == "text":
                    prefix = text_prefix(l3v, 6, flow.addr1, flow.port1, flow.addr2, flow.port2, 0)
                    sink.parts += text_whole_flow_at(
                        prefix, t_start, who, m1 if who == 1 else m2, data, t_data, t_end, normal, sink.body
                    )
                    sink.events += 3 if data else 2
                else:
                    _whole_binary(flow, sink, who, data, dts, last)
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
        flow.last_ns = seen
    created = ab.flows_created
    created["tcp"] = created.get("tcp", 0) + int(starts.shape[0])
    ab.whole_flows += int(starts.shape[0])
    n_one = int(one.sum())
    if n_one:
        done = ab.flows_destroyed
        done["NORMAL"] = done.get("NORMAL", 0) + n_one
    generic = np.ones(order.shape[0], bool)
    generic[rows] = False
    return order[generic], aside


def _whole_binary(flow: Flow, sink: Sink, sender: int, data: bytes, data_ts: int, end_ns: int) -> None:
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
