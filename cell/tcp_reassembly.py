"""TCP stream reassembly on a Flow, sans-IO: segments in, in-order bytes out through a callback.

Per direction: the next expected sequence number (32-bit, compared modulo 2**32 so sequence wrap
is transparent), an out-of-order buffer keyed by sequence number with a per-flow byte cap, and the
FIN's sequence number. Overlap policy: bytes already delivered are never replaced (a retransmission
or overlapping segment contributes only bytes past the delivered edge); among buffered segments,
the first one stored at a sequence number is kept unless a later one is longer.
When the out-of-order cap is hit, or at the end of a flow, the stream skips the hole to the next
buffered byte (counted in `gap_bytes`): analyzers see a short stream, never a stalled one.
"""

from __future__ import annotations

from collections.abc import Callable

from cell.events import REASON_NORMAL, REASON_RESET
from cell.flow_table import Flow

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
M32 = 0xFFFFFFFF
KEEP = -1

Deliver = Callable[[Flow, int, bytes, int], None]


class TcpStats:
    """Reassembly counters (plain ints; the metrics layer exports deltas)."""

    __slots__ = (
        "cap_skips",
        "gap_bytes",
        "ooo_bytes",
        "overlap_bytes",
        "retrans_bytes",
        "retrans_segments",
    )

    def __init__(self) -> None:
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
            nxt = first
        nxt = _drain(flow, d, nxt, ooo, ts_ns, deliver, stats)
    if d == 1:
        flow.nxt1 = nxt
    else:
        flow.nxt2 = nxt


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
) -> int:
    """Process one segment from endpoint d (1 or 2); return KEEP or the reason the flow ended."""
    if flags & RST:
        skip_gaps(flow, 1, ts_ns, deliver, stats)
        skip_gaps(flow, 2, ts_ns, deliver, stats)
        return REASON_RESET
    nxt = flow.nxt1 if d == 1 else flow.nxt2
    if flags & SYN:
        seq = (seq + 1) & M32
        if nxt < 0:
            nxt = seq
    elif nxt < 0:
        nxt = seq  # this direction's SYN was not seen (lost SYN-ACK, or midstream pickup)
    n = len(payload)
    if n:
        off = _rel(seq, nxt)
        if off <= 0:
            if -off >= n:
                stats.retrans_segments += 1
                stats.retrans_bytes += n
            else:
                if off:
                    stats.overlap_bytes += -off
                    payload = payload[-off:]
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
        if d == 1:
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
