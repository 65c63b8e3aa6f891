"""Pure ACKs settled per flow after a batch instead of one Python step each, with numpy.

Theory of operation. A pure ACK (TCP, no payload, no SYN/FIN/RST, not a zero window) of an active
direction changes no stream state: it only adds to its flow's packet and octet counters and its
last-seen time. The abstractor sets every pure ACK of a batch aside before anything else; the
whole-connection path (cell/whole_path.py) counts those of its connections in its sums. Of the
rest, each flow direction's first goes back into the per-packet loop (`route_first_acks`): it may
create a flow (midstream pickup), make an inactive endpoint active, or be that direction's first
ACK (Zeek's `A` history letter, written in capture order). The later ones cannot do any of that:
they are added to their flows once per flow after the loop (`settle_acks`).
"""

from __future__ import annotations

import numpy as np

SLOW_FLAGS = 0x107  # FIN, SYN, RST and the cell's zero-window mark (cell.tcp_reassembly.ZWIN)


def route_first_acks(
    order: np.ndarray, aside: np.ndarray, hashes: np.ndarray, swap: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move each flow direction's first set-aside pure ACK into `order`; (new order, still aside).

    `order` holds positions sorted by flow hash, capture order inside a flow; `aside` positions in
    capture order. The new order keeps both properties.
    """
    h = hashes[aside]
    s = swap[aside]
    o = np.lexsort((s, h))  # by flow, then direction; stable, so capture order inside a group
    hs, ss = h[o], s[o]
    first = np.ones(o.shape[0], bool)
    first[1:] = (hs[1:] != hs[:-1]) | (ss[1:] != ss[:-1])
    routed = aside[o[first]]
    both = np.concatenate((order, routed))
    return both[np.lexsort((both, hashes[both]))], np.sort(aside[o[~first]])


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
