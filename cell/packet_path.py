"""The per-packet path of the abstractor: one Python step per packet, in flow order.

Theory of operation. The packets of a batch arrive here sorted by flow (a stable sort, so capture
order inside a flow), with most pure ACKs already set aside (cell/ack_batching.py) and whole
connections already taken (cell/whole_path.py). Each packet finds or creates its flow, adds to the
flow's counters and goes to one of:

* the in-order fast path: payload without SYN/FIN/RST/zero window at exactly the next expected
  sequence number of a direction with no holes and no FIN: delivered straight away (plus a bit
  test for the direction's first `D` history letter);
* the pure-ACK shortcut: an ACK of an active direction only writes its `A` letter once;
* everything else (SYN, FIN, RST, gaps, retransmissions, a direction's first packet): the
  reassembler (cell/tcp_reassembly.py), which also keeps the Zeek-style TCP state;
* UDP and ICMP: one datagram / message each.

A TCP packet of no flow without SYN starts a flow when midstream pickup is on (the default): the
originator is its sender, unless the ports say otherwise (cell/tcp_state.py, `orient_midstream`).
"""

from __future__ import annotations

from sys import intern  # histories repeat: one string object per distinct history
from typing import TYPE_CHECKING

import numpy as np
from celltap.cell import events as ev
from celltap.cell.flow_table import END_DETECTED, Flow
from celltap.cell.tcp_reassembly import ACK, FIN, KEEP, SYN, ZWIN, segment
from celltap.cell.tcp_state import (
    A1_LETTER,
    A2_LETTER,
    D1_LETTER,
    D1_SENT,
    D2_LETTER,
    D2_SENT,
    after_close,
    bare_fin,
    bare_syn,
    orient_midstream,
)

from celltap.decode import DecodedBatch

if TYPE_CHECKING:
    from celltap.cell.abstractor import Abstractor

SLOW = 0x107  # SYN, FIN, RST or a zero window: not for the fast path


def feed_packets(
    ab: Abstractor,
    db: DecodedBatch,
    idx: np.ndarray,
    order: np.ndarray,
    cols: dict[str, np.ndarray],
    weights: tuple[np.ndarray, np.ndarray] | None,
) -> None:
    """Run the packets `order` (positions in `idx`) through their flows, one at a time."""
    batch = db.batch
    hashes, swap, l4, flags = cols["hashes"], cols["swap"], cols["l4"], cols["flags"]
    vlans: tuple | None = None  # (outer, inner) tag lists, built when the first new flow needs them
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
        flags[order].tolist(),
        db.tcp_seq[idx][order].tolist(),
        cols["abs_off"][order].tolist(),
        cols["plen"][order].tolist(),
        batch.ts_ns[idx][order].tolist(),
        pk_col,
        oct_l,
        order.tolist(),
        strict=True,
    )
    raw = memoryview(batch.buf)
    flows = ab.table.flows
    deliver = ab._deliver
    stats = ab.tcp_stats
    ooo_limit = ab.ooo_limit
    ooo_memory = ab.ooo_memory
    midstream = ab.midstream
    prev = -1
    flow: Flow | None = None
    l3_l = sport_l = dport_l = None
    src_b = dst_b = b""
    src, dst = cols["src"], cols["dst"]
    row = src.shape[1] if src.ndim == 2 else 16
    ack_col = None
    for h, swapped, proto, fl, seq, po, plen, ts, npk, noct, r in columns:
        if h != prev:
            prev = h
            flow = flows.get(h)
        if flow is not None and flow.ended and proto == 6 and fl & SYN and not fl & ACK:
            # a new connection on a lingering key (port reuse): the old record is complete
            ab._export(flow)
            flow = None
        if flow is None:
            syn_only = fl & SYN and not fl & ACK
            if proto == 6 and not syn_only and not midstream:
                ab._drop("tcp_no_syn")
                continue
            if l3_l is None:
                # plain-list views, built once per batch when the first new flow needs them
                # (numpy scalar indexing costs more than the rest of a new flow's setup)
                l3_l, sport_l, dport_l = cols["l3"].tolist(), cols["sport"].tolist(), cols["dport"].tolist()
                src_b, dst_b = src.tobytes(), dst.tobytes()
            v = l3_l[r]
            at = r * row
            a = at + (4 if v == 4 else 16)
            flow = ab._new_flow(
                h, h, v, proto, src_b[at:a], sport_l[r], dst_b[at:a], dport_l[r], swapped, 0, ts
            )
            if flow is None:
                continue
            if vlans is None:
                vlans = (db.vlan[idx].tolist(), db.vlan_inner[idx].tolist()) if db.vlan.any() else ()
            if vlans:
                flow.vlan, flow.inner_vlan = vlans[0][r], vlans[1][r]
            if proto == 6 and not syn_only:
                orient_midstream(flow, 2 if swapped else 1, fl, ab.server_ports)
        if flow.last_ns < ts:
            flow.last_ns = ts
        if swapped:
            flow.pkts2 += npk
            flow.octets2 += noct
        else:
            flow.pkts1 += npk
            flow.octets1 += noct
        if flow.ended:
            if proto == 6:
                after_close(flow, 2 if swapped else 1, fl, seq, plen)
            continue  # lingering after close: counted, nothing more to deliver
        if proto == 6:
            if plen > 0:
                payload = bytes(raw[po : po + plen])
                if not fl & SLOW:
                    # fast path: the next in-order segment of a direction with no holes and no FIN yet
                    if swapped:
                        if seq == flow.nxt2 and flow.ooo2 is None and flow.fin2 < 0:
                            if not flow.hbits & D2_LETTER:
                                flow.hbits |= D2_SENT  # the letter written, payload sent
                                flow.history = intern(flow.history + ("D" if flow.orig == 2 else "d"))
                            deliver(flow, 2, payload, ts)
                            flow.nxt2 = (flow.nxt2 + plen) & 0xFFFFFFFF
                            continue
                    elif seq == flow.nxt1 and flow.ooo1 is None and flow.fin1 < 0:
                        if not flow.hbits & D1_LETTER:
                            flow.hbits |= D1_SENT
                            flow.history = intern(flow.history + ("D" if flow.orig == 1 else "d"))
                        deliver(flow, 1, payload, ts)
                        flow.nxt1 = (flow.nxt1 + plen) & 0xFFFFFFFF
                        continue
            else:
                payload = b""
                if not fl & SLOW:
                    if (flow.nxt2 if swapped else flow.nxt1) >= 0:
                        # a pure ACK of an active direction changes no stream state
                        bit = A2_LETTER if swapped else A1_LETTER
                        if fl & ACK and not flow.hbits & bit:
                            flow.hbits |= bit
                            up = flow.orig == (2 if swapped else 1)
                            flow.history = intern(flow.history + ("A" if up else "a"))
                        continue
                elif fl & 7 == SYN:
                    # a bare SYN / SYN-ACK opening its direction fixes its initial sequence number
                    if swapped:
                        if flow.nxt2 < 0:
                            bare_syn(flow, 2, fl, seq)
                            flow.nxt2 = (seq + 1) & 0xFFFFFFFF
                            continue
                    elif flow.nxt1 < 0:
                        bare_syn(flow, 1, fl, seq)
                        flow.nxt1 = (seq + 1) & 0xFFFFFFFF
                        continue
                elif fl & 7 == FIN:
                    # a bare FIN right at the in-order edge with nothing buffered closes its direction
                    if swapped:
                        if seq == flow.nxt2 and flow.ooo2 is None:
                            bare_fin(flow, 2, fl, seq)
                            flow.fin2 = seq
                            flow.closed2 = True
                            if flow.closed1:
                                ab._close(flow, ev.REASON_NORMAL, ts, END_DETECTED)
                            continue
                    elif seq == flow.nxt1 and flow.ooo1 is None:
                        bare_fin(flow, 1, fl, seq)
                        flow.fin1 = seq
                        flow.closed1 = True
                        if flow.closed2:
                            ab._close(flow, ev.REASON_NORMAL, ts, END_DETECTED)
                        continue
            ack = -1
            if fl & 4:  # RST: its ACK number may be needed to judge it
                if ack_col is None:
                    ack_col = db.tcp_ack[idx]
                ack = int(ack_col[r])
            res = segment(
                flow, 2 if swapped else 1, fl, seq, payload, ts, deliver, stats, ooo_limit, ooo_memory, ack
            )
            if res != KEEP:
                ab._close(flow, res, ts, END_DETECTED)
        elif plen > 0:
            ab._datagram(flow, 2 if swapped else 1, bytes(raw[po : po + plen]), ts)


def zero_window_marks(db: DecodedBatch, idx: np.ndarray, l4: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """The TCP flags of the packets with ZWIN added where an ACK without SYN/FIN/RST advertises window 0."""
    out = flags.astype(np.int64)
    cand = np.flatnonzero((l4 == 6) & ((out & 0x17) == ACK))
    if cand.size:
        gi = idx[cand]
        pos = db.batch.offsets[gi] + db.l4_off[gi] + 14
        buf = db.batch.buf
        zero = (buf[pos] == 0) & (buf[pos + 1] == 0)
        if zero.any():
            out[cand[zero]] |= ZWIN
    return out
