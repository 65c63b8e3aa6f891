"""Find TCP connections that open, carry in-order data and close cleanly inside one batch (numpy).

SF-TAP's connections-per-second workload is dominated by short connections: handshake, a few
segments, FIN both ways. For those the generic per-packet loop does work that the whole batch can
decide at once: which packets open the flow, that every segment is the next in order, and that both
FINs close it. `whole_connections` checks every flow of a batch in a few array passes and returns
the ones that need nothing of the reassembler but in-order delivery, so the abstractor handles them
flow by flow instead of packet by packet. Anything unusual (a missing SYN-ACK, a retransmission, a
gap, a RST, data after a FIN, a FIN carrying data, a second SYN, a zero window) leaves the flow to the
generic path. Pure ACKs may appear anywhere after the handshake (each direction's first one of the
batch is left among the packets: cell/ack_batching.py), also after the closing FIN.

For each returned flow it also gives where its history events are (first payload and FIN of each
side); cell/whole_path.py adds each side's first pure ACK (set aside before) and orders them
(`event_codes`) into the same history the per-packet path writes.
"""

from __future__ import annotations

import numpy as np

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
ZWIN = 0x100  # the cell's zero-window mark (cell.tcp_reassembly.ZWIN)
M32 = 0xFFFFFFFF
NO_EVENT = 1 << 40


def whole_connections(
    hashes: np.ndarray,
    swapped: np.ndarray,
    l4: np.ndarray,
    flags: np.ndarray,
    seq: np.ndarray,
    plen: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, close, events) of the flows that open and close cleanly within these packets.

    All inputs are per packet, already sorted by flow hash with each flow's packets in capture
    order (a stable sort). A returned flow's packets are `start..end-1`: SYN, SYN-ACK from the
    other side, then only in-order data segments, bare FINs and pure ACKs, exactly one FIN per
    side; `close` is the position of the second FIN (only pure ACKs follow it). `events` (flows x 4)
    holds the rank in its flow of the first payload of side 0 and side 1 and of their FINs
    (NO_EVENT: none); side 0 is the SYN's sender.
    """
    n = hashes.shape[0]
    empty = np.zeros(0, np.int64)
    if n < 4:
        return empty, empty, empty, empty
    flags = flags.astype(np.int64)
    brk = np.flatnonzero(hashes[1:] != hashes[:-1]) + 1
    starts = np.concatenate(([0], brk)).astype(np.int64)
    ends = np.concatenate((brk, [n])).astype(np.int64)
    size = ends - starts
    cand = size >= 4
    f7 = flags & 7
    ack = (flags & ACK) != 0
    plen64 = plen.astype(np.int64)
    s0 = starts[cand]
    s1 = s0 + 1
    cand[cand] = (
        (l4[s0] == 6)
        & (f7[s0] == SYN)
        & ~ack[s0]
        & (plen64[s0] == 0)
        & (f7[s1] == SYN)
        & ack[s1]
        & (plen64[s1] == 0)
        & (swapped[s1] != swapped[s0])
    )
    if not cand.any():
        return empty, empty, empty, empty
    starts, ends = starts[cand], ends[cand]
    size = ends - starts
    # per packet of the candidate flows: its side (0 = the SYN's sender) and rank in its flow
    off = np.concatenate(([0], np.cumsum(size)[:-1]))  # each flow's first row in the arrays below
    rank = np.arange(int(size.sum())) - np.repeat(off, size)
    first = np.repeat(starts, size)
    pos = first + rank
    side = (swapped[pos] != swapped[first]).astype(np.int64)
    pf7 = f7[pos]
    pl = plen64[pos]
    is_fin = pf7 == FIN
    is_ack = (pf7 == 0) & (pl == 0)
    body = rank >= 2
    # after the handshake: data segments (no SYN/FIN/RST, with payload), bare FINs or pure ACKs,
    # none advertising a zero window
    ok = (~body | ((pf7 == 0) & (pl > 0)) | (is_fin & (pl == 0)) | is_ack) & ((flags[pos] & ZWIN) == 0)
    # each data segment and FIN must start where its side's stream stands: ISN + 1 + the side's
    # bytes before it (a pure ACK's sequence number changes nothing)
    isn = seq[first + side].astype(np.int64)  # row 0 is side 0's SYN, row 1 side 1's SYN-ACK
    mine = np.zeros(pos.shape[0], np.int64)
    fin_before = np.zeros(pos.shape[0], np.int64)
    fins = []
    for k in (0, 1):
        on = side == k
        sent = np.where(on, pl, 0)
        mine[on] = _exclusive_sums(sent, off, size)[on]
        fk = (is_fin & on).astype(np.int64)
        fin_before[on] = _exclusive_sums(fk, off, size)[on]
        fins.append(np.add.reduceat(fk, off))
    ok &= ~body | is_ack | (((isn + 1 + mine) & M32) == seq[pos].astype(np.int64))
    # nothing but pure ACKs from a side after its own FIN; one FIN per side
    ok &= (fin_before == 0) | is_ack
    good = np.logical_and.reduceat(ok, off) & (fins[0] == 1) & (fins[1] == 1)
    if not good.any():
        return empty, empty, empty, empty
    # the second FIN closes the flow: the last FIN row of the flow
    fin_rank = np.where(is_fin, rank, -1)
    close = starts + np.maximum.reduceat(fin_rank, off)
    is_data = (pf7 == 0) & (pl > 0) & body
    side0 = side == 0
    events = np.empty((off.shape[0], 4), np.int64)
    for k, mask in enumerate((is_data, is_fin & body)):
        events[:, 2 * k] = np.minimum.reduceat(np.where(mask & side0, rank, NO_EVENT), off)
        events[:, 2 * k + 1] = np.minimum.reduceat(np.where(mask & ~side0, rank, NO_EVENT), off)
    return starts[good], ends[good], close[good], events[good]


def event_codes(pos: np.ndarray) -> np.ndarray:
    """Per flow, the order of its six history events as an integer.

    `pos` (flows x 6): where (any increasing measure) the first pure ACK of side 0 / 1 (`A`/`a`),
    the first payload (`D`/`d`) and the FIN (`F`/`f`) are, NO_EVENT where none. Code = sum of event
    k's place among the events that happened, as base-8 digit k (7: did not happen); equal codes
    mean equal histories.
    """
    places = np.argsort(np.argsort(pos, axis=1, kind="stable"), axis=1, kind="stable")
    places = np.where(pos < NO_EVENT, places, 7)
    return (places * (8 ** np.arange(6))).sum(axis=1)


def _exclusive_sums(values: np.ndarray, off: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Per row, the sum of `values` over the earlier rows of the same flow."""
    c = np.cumsum(values)
    return c - values - np.repeat(c[off] - values[off], size)
