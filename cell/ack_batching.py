"""Pure ACKs settled per flow after a batch instead of one Python step each, with numpy.

Theory of operation. A pure ACK (TCP, no payload, no SYN/FIN/RST, not a zero window) of an active
direction changes no stream state: it only adds to its flow's packet and octet counters and its
last-seen time. Such ACKs are taken out of the batch before the per-packet loop and added to their
flows once per flow afterwards (`settle_acks`). The first pure ACK of each flow direction in a batch
stays in the loop: it may create a flow (midstream pickup), make an inactive endpoint active, or be
that direction's first ACK (Zeek's `A` history letter, written in capture order). The later ones
cannot do any of that, so the loop never needs them.
"""

from __future__ import annotations

import numpy as np

SLOW_FLAGS = 0x107  # FIN, SYN, RST and the cell's zero-window mark (cell.tcp_reassembly.ZWIN)


def pure_acks_to_set_aside(
    order: np.ndarray,
    l4: np.ndarray,
    plen: np.ndarray,
    flags: np.ndarray,
    hashes: np.ndarray,
    swap: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Split `order` (a stable argsort of `hashes`) into the packets for the loop and the pure ACKs set aside.

    Set aside: every pure ACK but the first of its flow direction in the batch. Returns (the rest
    of `order`, the set-aside positions or None); both keep flow order.
    """
    pure = ((l4 == 6) & (plen <= 0) & ((flags & SLOW_FLAGS) == 0))[order]
    if not pure.any():
        return order, None
    hs = hashes[order]
    ss = swap[order]
    run_start = np.ones(hs.shape[0], bool)
    run_start[1:] = hs[1:] != hs[:-1]
    later = np.zeros(hs.shape[0], bool)
    for side in (False, True):
        m = pure & (ss == side)
        c = np.cumsum(m)
        # the count before each flow's first packet, carried along the flow (c never decreases)
        before = np.maximum.accumulate(np.where(run_start, c - m, 0))
        later |= m & (c - before > 1)
    if not later.any():
        return order, None
    return order[~later], order[later]


def settle_acks(
    flows: dict, hashes: np.ndarray, swap: np.ndarray, pk: np.ndarray | None, octs: np.ndarray, ts: np.ndarray
) -> int:
    """Add pure ACKs to their flows' counters, one Python step per flow; return the packets of no flow."""
    uniq, inv = np.unique(hashes, return_inverse=True)
    m = uniq.shape[0]
    d2 = swap.astype(np.int64)
    slot = inv * 2 + d2
    ones = np.ones(inv.shape[0], np.int64) if pk is None else pk.astype(np.int64)
    pkts = np.bincount(slot, weights=ones, minlength=2 * m).astype(np.int64).reshape(m, 2)
    octets = np.bincount(slot, weights=octs.astype(np.int64), minlength=2 * m).astype(np.int64).reshape(m, 2)
    last = np.zeros(m, np.int64)
    np.maximum.at(last, inv, ts)
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
    return lost
