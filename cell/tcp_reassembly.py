"""TCP stream reassembly on a Flow, sans-IO: segments in, in-order bytes out through a callback.

Per direction: the next expected sequence number (32-bit, compared modulo 2**32 so sequence wrap
is transparent), an out-of-order buffer keyed by sequence number with a per-flow byte cap, and the
FIN's sequence number. Overlap policy: bytes already delivered are never replaced (a retransmission
or overlapping segment contributes only bytes past the delivered edge); among buffered segments,
the first one stored at a sequence number is kept unless a later one is longer.
When the out-of-order cap is hit, or at the end of a flow, the stream skips the hole to the next
buffered byte (counted in `gap_bytes` and the flow's `missed_bytes`): analyzers see a short stream,
never a stalled one.

Windows (what a receiver would not accept is not stream state here either):
* A segment (or bare FIN) more than `seq_window` (1 GiB, the largest window TCP can advertise:
  65535 << 14) away from the next expected sequence number of its direction, either way, is
  dropped and counted (`tcp_seq_out_of_window`): a stray or bogus segment far away is never
  buffered, so a hole is never counted up to it.
* A RST is honoured only if its sequence number lies in [high, high + `rst_window`] where `high`
  is the end of the highest sequence of its sender seen so far (the next expected byte, or past
  data buffered out of order); RFC 5961 receivers accept exactly RCV.NXT, older ones anything in
  the window, and a RST from behind the data already seen is out of every window. A RST from an
  endpoint that sent nothing yet (a rejected SYN) is checked by its ACK number instead, which must
  fall within `rst_window` of the peer's next expected byte; without an ACK it is honoured.
  Others are an IDS evasion (a RST the receiver ignores): no stream state changes, the packet is
  counted (`tcp_rst_out_of_window`) and gets its `r` history letter like any RST seen.
* A SYN or SYN-ACK with a new ISN (a handshake retransmitted after the peer chose a new ISN, a new
  connection attempt) resynchronises its direction if no payload was seen on it yet (`resyncs`).
* A SYN's payload (TCP Fast Open) is stream data starting at ISN + 1.
"""

from __future__ import annotations

from collections.abc import Callable
from sys import intern  # histories repeat: one string object per distinct history

from celltap.cell.events import REASON_NORMAL, REASON_RESET
from celltap.cell.flow_table import Flow
from celltap.cell.tcp_state import (
    A1_LETTER,
    A2_LETTER,
    D1_LETTER,
    D2_LETTER,
    G_COUNT,
    H_BASE,
    H_SENT,
    T_COUNT,
    W_COUNT,
    control,
    control_letters,
    first_packet,
    scaled,
)

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
ZWIN = 0x100  # not a TCP flag: the cell marks a zero-window advertisement in the flags it passes
M32 = 0xFFFFFFFF
KEEP = -1
SEQ_WINDOW = 1 << 30
RST_WINDOW = 1 << 20

Deliver = Callable[[Flow, int, bytes, int], None]


class TcpStats:
    """Reassembly counters (plain ints; the metrics layer exports deltas)."""

    __slots__ = (
        "cap_skips",
        "drops",
        "gap_bytes",
        "ooo_bytes",
        "overlap_bytes",
        "resyncs",
        "retrans_bytes",
        "retrans_segments",
        "rst_window",
        "seq_window",
    )

    def __init__(self, drops: dict[str, int] | None = None) -> None:
        self.drops = {} if drops is None else drops  # packets ignored, by reason (the cell's drop dict)
        self.seq_window = SEQ_WINDOW
        self.rst_window = RST_WINDOW
        self.resyncs = 0  # directions resynchronised by a SYN / SYN-ACK with a new ISN
        self.retrans_segments = 0
        self.retrans_bytes = 0
        self.overlap_bytes = 0
        self.ooo_bytes = 0  # bytes currently buffered out of order, all flows
        self.gap_bytes = 0
        self.cap_skips = {"flow": 0, "memory": 0}  # holes skipped because a buffer cap was reached


def _rel(a: int, b: int) -> int:
    """a - b as a signed 32-bit sequence distance."""
    d = (a - b) & M32
    return d - 0x100000000 if d & 0x80000000 else d


def _drain(
    flow: Flow, d: int, nxt: int, ooo: dict[int, bytes], ts_ns: int, deliver: Deliver, stats: TcpStats
) -> int:
    """Deliver buffered segments that now touch the in-order edge; return the new edge."""
    while ooo:
        data = ooo.pop(nxt, None)
        if data is None:
            # a buffered segment may start before the edge (overlap): find any that reaches past it
            for s in list(ooo):
                if _rel(s, nxt) <= 0:
                    data = ooo.pop(s)
                    flow.ooo_bytes -= len(data)
                    stats.ooo_bytes -= len(data)
                    cut = _rel(nxt, s)
                    stats.overlap_bytes += min(cut, len(data))
                    if cut < len(data):
                        data = data[cut:]
                        break
                    data = None
            if data is None:
                return nxt
        else:
            flow.ooo_bytes -= len(data)
            stats.ooo_bytes -= len(data)
        deliver(flow, d, data, ts_ns)
        nxt = (nxt + len(data)) & M32
    return nxt


def skip_gaps(flow: Flow, d: int, ts_ns: int, deliver: Deliver, stats: TcpStats) -> None:
    """Deliver everything buffered in direction d, jumping over holes (end of flow / cap)."""
    ooo = flow.ooo1 if d == 1 else flow.ooo2
    if not ooo:
        return
    nxt = flow.nxt1 if d == 1 else flow.nxt2
    while ooo:
        first = min(ooo, key=lambda s: _rel(s, nxt))
        gap = _rel(first, nxt)
        if gap > 0:
            stats.gap_bytes += gap
            flow.missed_bytes += gap
            scaled(flow, d, G_COUNT, "g")
            nxt = first
        nxt = _drain(flow, d, nxt, ooo, ts_ns, deliver, stats)
    if d == 1:
        flow.nxt1 = nxt
    else:
        flow.nxt2 = nxt


def _drop(stats: TcpStats, reason: str) -> None:
    stats.drops[reason] = stats.drops.get(reason, 0) + 1


def _high(flow: Flow, d: int, nxt: int) -> int:
    """The end of the highest sequence seen from endpoint d (the next expected byte or past buffered data)."""
    ooo = flow.ooo1 if d == 1 else flow.ooo2
    high = nxt
    if ooo:
        for s, data in ooo.items():
            end = (s + len(data)) & M32
            if _rel(end, high) > 0:
                high = end
    return high


def rst_acceptable(flow: Flow, d: int, seq: int, ack: int, window: int) -> bool:
    """Whether a RST from endpoint d would be honoured (see the module docstring for the rule)."""
    nxt = flow.nxt1 if d == 1 else flow.nxt2
    if nxt >= 0:
        return _rel(seq, nxt) >= 0 and _rel(seq, _high(flow, d, nxt)) <= window
    peer = flow.nxt2 if d == 1 else flow.nxt1
    if ack < 0 or peer < 0:
        return True
    return abs(_rel(ack, peer)) <= window


def segment(
    flow: Flow,
    d: int,
    flags: int,
    seq: int,
    payload: bytes,
    ts_ns: int,
    deliver: Deliver,
    stats: TcpStats,
    ooo_limit: int,
    ooo_memory: int = 1 << 62,
    ack: int = -1,
) -> int:
    """Process one segment from endpoint d (1 or 2); return KEEP or the reason the flow ended.

    `ack` is the segment's acknowledgment number when it carries ACK (-1: not given); only a RST
    from an endpoint that sent nothing before needs it.
    """
    n = len(payload)
    nxt = flow.nxt1 if d == 1 else flow.nxt2
    if flags & 7:
        control_letters(flow, d, flags, seq, n)
        if flags & RST:
            if not rst_acceptable(flow, d, seq, ack if flags & ACK else -1, stats.rst_window):
                _drop(stats, "tcp_rst_out_of_window")
                return KEEP
            control(flow, d, flags, n)
            skip_gaps(flow, 1, ts_ns, deliver, stats)
            skip_gaps(flow, 2, ts_ns, deliver, stats)
            return REASON_RESET
        control(flow, d, flags, n)
    else:
        if n:
            bit = D1_LETTER if d == 1 else D2_LETTER
            if not flow.hbits & bit:
                flow.hbits |= bit
                flow.history = intern(flow.history + ("D" if d == flow.orig else "d"))
        elif flags & ACK:
            bit = A1_LETTER if d == 1 else A2_LETTER
            if not flow.hbits & bit:
                flow.hbits |= bit
                flow.history = intern(flow.history + ("A" if d == flow.orig else "a"))
        if nxt < 0:
            first_packet(flow, d, flags, n)
    if flags & ZWIN:
        scaled(flow, d, W_COUNT, "w")
    if flags & SYN:
        seq = (seq + 1) & M32
        sent = H_SENT << 8 if d == 2 else H_SENT
        if nxt < 0:
            nxt = seq
        elif seq != nxt and not flow.hbits & sent and not (flow.ooo1 if d == 1 else flow.ooo2):
            # a new ISN before any payload: the handshake was redone (peer restarted, new attempt)
            stats.resyncs += 1
            nxt = seq
    elif nxt < 0:
        nxt = seq  # this direction's SYN was not seen (lost SYN-ACK, or midstream pickup)
        sh = 0 if d == 1 else 32
        flow.syns = (flow.syns & ~(M32 << sh)) | ((seq - 1) & M32) << sh
        flow.hbits |= H_BASE if d == 1 else H_BASE << 8
    if n:
        off = _rel(seq, nxt)
        if off > stats.seq_window or off < -stats.seq_window:
            # absurdly far from the stream: not this connection's data (nor its FIN)
            _drop(stats, "tcp_seq_out_of_window")
            if d == 1:
                flow.nxt1 = nxt
            else:
                flow.nxt2 = nxt
            return KEEP
        flow.hbits |= H_SENT << 8 if d == 2 else H_SENT
        if off <= 0:
            if -off >= n:
                stats.retrans_segments += 1
                stats.retrans_bytes += n
                scaled(flow, d, T_COUNT, "t")
            else:
                if off:
                    stats.overlap_bytes += -off
                    payload = payload[-off:]
                    scaled(flow, d, T_COUNT, "t")
                deliver(flow, d, payload, ts_ns)
                nxt = (nxt + len(payload)) & M32
                ooo = flow.ooo1 if d == 1 else flow.ooo2
                if ooo:
                    nxt = _drain(flow, d, nxt, ooo, ts_ns, deliver, stats)
        else:
            ooo = flow.ooo1 if d == 1 else flow.ooo2
            if ooo is None:
                ooo = {}
                if d == 1:
                    flow.ooo1 = ooo
                else:
                    flow.ooo2 = ooo
            old = ooo.get(seq)
            if old is None or len(old) < n:
                grow = n - (len(old) if old else 0)
                ooo[seq] = payload
                flow.ooo_bytes += grow
                stats.ooo_bytes += grow
            else:
                stats.retrans_segments += 1
                stats.retrans_bytes += n
                scaled(flow, d, T_COUNT, "t")
            over_flow = flow.ooo_bytes > ooo_limit
            if over_flow or stats.ooo_bytes > ooo_memory:
                # over a cap (this flow's, or all flows' together) nothing is dropped: the hole is
                # skipped (counted in gap_bytes) and what this flow buffered is delivered
                stats.cap_skips["flow" if over_flow else "memory"] += 1
                if d == 1:
                    flow.nxt1 = nxt
                else:
                    flow.nxt2 = nxt
                skip_gaps(flow, d, ts_ns, deliver, stats)
                nxt = flow.nxt1 if d == 1 else flow.nxt2
    if flags & FIN:
        fin = (seq + n) & M32
        if not n and abs(_rel(fin, nxt)) > stats.seq_window:
            _drop(stats, "tcp_seq_out_of_window")
        elif d == 1:
            flow.fin1 = fin
        else:
            flow.fin2 = fin
    if d == 1:
        flow.nxt1 = nxt
        if flow.fin1 >= 0 and nxt == flow.fin1:
            flow.closed1 = True
    else:
        flow.nxt2 = nxt
        if flow.fin2 >= 0 and nxt == flow.fin2:
            flow.closed2 = True
    if flow.closed1 and flow.closed2:
        return REASON_NORMAL
    return KEEP
