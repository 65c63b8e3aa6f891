"""TCP stream reassembly on a Flow, sans-IO: segments in, in-order bytes out through a callback.

Per direction: the next expected sequence number (32-bit, compared modulo 2**32 so sequence wrap
is transparent), an out-of-order buffer (`OooBuffer`: byte runs keyed by position with a min-heap of
their starts; n segments cost O(n log n), never a rescan of the buffer per segment), and the
FIN's sequence number. Overlap policy "first wins": bytes already delivered are never replaced (a
retransmission or overlapping segment contributes only bytes past the delivered edge); a segment
at a position already buffered keeps the buffered bytes (only its tail past them is added), and
buffered runs that overlap are delivered lowest start first, each cut at the edge. A direction
whose buffer empties drops it, so the packet path's in-order fast path applies again.
Caps are real memory (allocation sizes), not payload: `ooo_limit` per flow,
`ooo_memory` for all flows. When one is hit, or at the end of a flow, the stream skips the hole to
the next buffered byte (counted in `gap_bytes` and the flow's `missed_bytes`, the skip by cap in
`cap_skips`): analyzers see a short stream, never a stalled one.

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
from heapq import heappop, heappush
from sys import getsizeof, intern  # intern: histories repeat, one string object per distinct history

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
# Real memory of one buffered run besides its bytearray: its start and end ints (32 B each), its
# entries in `runs` and `ends` (dict slots, ~2x over-allocated: ~100 B) and its heap slot (8 B).
RUN_SLOT = 176
OOO_BASE = 3 * 64 + 120  # the buffer object, two empty dicts and a list (never fewer bytes than these)


class TcpStats:
    """Reassembly counters (plain ints; the metrics layer exports deltas)."""

    __slots__ = (
        "cap_skips",
        "drops",
        "gap_bytes",
        "ooo_bytes",
        "ooo_mem",
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
        self.ooo_mem = 0  # real memory those buffers take (what ooo_limit / ooo_memory cap)
        self.gap_bytes = 0
        self.cap_skips = {"flow": 0, "memory": 0}  # holes skipped because a buffer cap was reached


def _rel(a: int, b: int) -> int:
    """a - b as a signed 32-bit sequence distance."""
    d = (a - b) & M32
    return d - 0x100000000 if d & 0x80000000 else d


class OooBuffer:
    """One direction's out-of-order bytes as runs keyed by unwrapped position; first-wins per start.

    Sequence numbers wrap at 2**32; positions do not: `sync(nxt)` moves the anchor to the current
    next expected sequence number (nxt moves forward by at most one segment plus what this buffer
    delivered between two calls, far below 2**31), so every buffered byte keeps one position.

    Runs: `runs` maps a start position to a bytearray, `ends` maps a run's end to its start (a
    segment that continues a run extends it in place; of overlapping runs that end alike, the first
    keeps the entry), `heap` holds the starts (a min-heap: the
    consumer always wants the lowest). Adding a segment is O(log n) (one heappush at most), taking
    the lowest run O(log n): n segments cost O(n log n) whatever their order, and skipping holes
    costs nothing per hole. A segment at an already buffered start keeps the buffered bytes and only
    contributes its tail past them ("first wins"); runs that overlap from different starts are cut
    when delivered (the lower start's bytes go first), as the in-order edge cuts retransmissions.
    `mem` is real memory (allocation sizes: the bytearrays' capacity plus RUN_SLOT per run).
    """

    __slots__ = ("ends", "heap", "high", "mem", "payload", "ref_pos", "ref_seq", "runs")

    def __init__(self, nxt: int) -> None:
        self.ref_seq = nxt
        self.ref_pos = 0
        self.runs: dict[int, bytearray] = {}
        self.ends: dict[int, int] = {}
        self.heap: list[int] = []
        self.high = 0  # highest end position ever buffered
        self.mem = OOO_BASE
        self.payload = 0

    def __len__(self) -> int:
        return len(self.heap)

    def sync(self, nxt: int) -> int:
        """Anchor at sequence number `nxt`; return its position."""
        self.ref_pos += _rel(nxt, self.ref_seq)
        self.ref_seq = nxt
        return self.ref_pos

    def seq(self, pos: int) -> int:
        """The sequence number at a position."""
        return (self.ref_seq + pos - self.ref_pos) & M32

    def add(self, seq: int, data: bytes) -> int:
        """Buffer a segment at sequence number `seq` (within 2**31 of the anchor, which the caller's
        window check guarantees); return how many of its bytes were new."""
        n = len(data)
        off = (seq - self.ref_seq) & M32
        start = self.ref_pos + (off - 0x100000000 if off & 0x80000000 else off)
        end = start + n
        runs, ends = self.runs, self.ends
        run = runs.get(start)
        if run is not None:
            have = len(run)
            if have >= n:
                return 0
            if ends.get(start + have) == start:
                del ends[start + have]
            before = getsizeof(run)
            run += data[have:]
            self.mem += getsizeof(run) - before
            ends.setdefault(end, start)
            n -= have
        else:
            at = ends.pop(start, None)
            if at is not None:
                run = runs[at]  # continues a run: extend it in place
                before = getsizeof(run)
                run += data
                self.mem += getsizeof(run) - before
                ends.setdefault(end, at)
            else:
                run = runs[start] = bytearray(data)
                ends.setdefault(end, start)  # (two overlapping runs may end alike: the first keeps it)
                heappush(self.heap, start)
                self.mem += getsizeof(run) + RUN_SLOT
        if end > self.high:
            self.high = end
        self.payload += n
        return n


def ooo_memory_of(flow: Flow) -> int:
    """Real memory held by a flow's out-of-order buffers (both directions)."""
    m = 0
    if flow.ooo1 is not None:
        m += flow.ooo1.mem
    if flow.ooo2 is not None:
        m += flow.ooo2.mem
    return m


def release(flow: Flow, stats: TcpStats) -> None:
    """Forget a flow's out-of-order buffers (the flow ended) and their accounting."""
    stats.ooo_bytes -= flow.ooo_bytes
    stats.ooo_mem -= ooo_memory_of(flow)
    flow.ooo_bytes = 0
    flow.ooo1 = flow.ooo2 = None


def _set_ooo(flow: Flow, d: int, ooo: OooBuffer | None) -> None:
    if d == 1:
        flow.ooo1 = ooo
    else:
        flow.ooo2 = ooo


def _drain(
    flow: Flow,
    d: int,
    nxt: int,
    ooo: OooBuffer,
    ts_ns: int,
    deliver: Deliver,
    stats: TcpStats,
    skip: bool = False,
) -> int:
    """Deliver buffered runs that now touch the in-order edge; return the new edge (sequence number).

    A run may start before the edge (in-order data or a lower run overlapped it): only its part past
    the edge goes. With `skip`, holes are jumped too (counted) until the buffer is empty.
    """
    edge = ooo.sync(nxt)
    heap, runs, ends = ooo.heap, ooo.runs, ooo.ends
    freed = payload = overlap = 0
    while heap:
        start = heap[0]
        if start > edge:
            if not skip:
                break
            gap = start - edge
            stats.gap_bytes += gap
            flow.missed_bytes += gap
            scaled(flow, d, G_COUNT, "g")
            edge = start
        heappop(heap)
        run = runs.pop(start)
        size = len(run)
        if ends.get(start + size) == start:
            del ends[start + size]
        freed += getsizeof(run) + RUN_SLOT
        payload += size
        cut = edge - start
        if cut:
            overlap += cut if cut < size else size
        if cut < size:
            deliver(flow, d, bytes(run[cut:]) if cut else bytes(run), ts_ns)
            edge = start + size
    if overlap:
        stats.overlap_bytes += overlap
    if payload:
        ooo.payload -= payload
        ooo.mem -= freed
        flow.ooo_bytes -= payload
        stats.ooo_bytes -= payload
        stats.ooo_mem -= freed
    nxt = ooo.seq(edge)
    if not heap:
        stats.ooo_mem -= ooo.mem
        if d == 1:
            flow.ooo1 = None
        else:
            flow.ooo2 = None
    return nxt


def skip_gaps(flow: Flow, d: int, ts_ns: int, deliver: Deliver, stats: TcpStats) -> None:
    """Deliver everything buffered in direction d, jumping over holes (end of flow / cap)."""
    ooo = flow.ooo1 if d == 1 else flow.ooo2
    if not ooo:
        return
    nxt = _drain(flow, d, flow.nxt1 if d == 1 else flow.nxt2, ooo, ts_ns, deliver, stats, skip=True)
    if d == 1:
        flow.nxt1 = nxt
    else:
        flow.nxt2 = nxt


def _drop(stats: TcpStats, reason: str) -> None:
    stats.drops[reason] = stats.drops.get(reason, 0) + 1


def _high(flow: Flow, d: int, nxt: int) -> int:
    """The end of the highest sequence seen from endpoint d (the next expected byte or past buffered data)."""
    ooo = flow.ooo1 if d == 1 else flow.ooo2
    if ooo:
        ooo.sync(nxt)
        end = ooo.seq(ooo.high)
        if _rel(end, nxt) > 0:
            return end
    return nxt


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
                ooo = OooBuffer(nxt)
                _set_ooo(flow, d, ooo)
                stats.ooo_mem += ooo.mem
            m0 = ooo.mem
            got = ooo.add(seq, payload)
            flow.ooo_bytes += got
            stats.ooo_bytes += got
            stats.ooo_mem += ooo.mem - m0
            if got != n:
                if got:
                    stats.overlap_bytes += n - got
                else:
                    stats.retrans_segments += 1
                    stats.retrans_bytes += n
                    scaled(flow, d, T_COUNT, "t")
            other = flow.ooo2 if d == 1 else flow.ooo1
            over_flow = (ooo.mem + other.mem if other is not None else ooo.mem) > ooo_limit
            if over_flow or stats.ooo_mem > ooo_memory:
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
