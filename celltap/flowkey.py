"""The canonical flow key, scalar and batch, and its bytes (what the flow hash consumes).

Key = (l3, l4, addr1, port1, addr2, port2) where (addr1, port1) is the lexicographically smaller
endpoint by (address bytes, port), as in SF-TAP: both directions of a flow share one key.
Bytes: l3 (4 or 6), l4 (IP protocol number), addr1 (4 or 16 bytes), port1 (big-endian u16),
addr2, port2: 14 bytes for IPv4, 38 for IPv6.  Protocols without ports use port 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from celltap.flowhash import xxh64, xxh64_rows

KEY_LEN_V4 = 14
KEY_LEN_V6 = 38


class FlowKey(NamedTuple):
    """A canonical flow key; `addr1`/`addr2` are 4 or 16 raw address bytes."""

    l3: int
    l4: int
    addr1: bytes
    port1: int
    addr2: bytes
    port2: int

    def to_bytes(self) -> bytes:
        """The key's canonical byte encoding."""
        return (
            bytes((self.l3, self.l4))
            + self.addr1
            + self.port1.to_bytes(2, "big")
            + self.addr2
            + self.port2.to_bytes(2, "big")
        )

    def hash(self, seed: int = 0) -> int:
        """The cluster-wide flow hash of this key."""
        return xxh64(self.to_bytes(), seed)


def canonical_key(l3: int, l4: int, src: bytes, sport: int, dst: bytes, dport: int) -> tuple[FlowKey, bool]:
    """Return (key, swapped): swapped is True when (src, sport) became endpoint 2."""
    if (src, sport) <= (dst, dport):
        return FlowKey(l3, l4, src, sport, dst, dport), False
    return FlowKey(l3, l4, dst, dport, src, sport), True


def canonical_swap(src: np.ndarray, sport: np.ndarray, dst: np.ndarray, dport: np.ndarray) -> np.ndarray:
    """Batch: True where (src, sport) > (dst, dport), i.e. the endpoints must be swapped.

    `src`/`dst` are (n, 16) uint8 address rows (IPv4 in the first 4 bytes, the rest zero).
    """
    s = np.ascontiguousarray(src).view(">u8").reshape(-1, 2)
    d = np.ascontiguousarray(dst).view(">u8").reshape(-1, 2)
    return (s[:, 0] > d[:, 0]) | (
        (s[:, 0] == d[:, 0]) & ((s[:, 1] > d[:, 1]) | ((s[:, 1] == d[:, 1]) & (sport > dport)))
    )


def key_rows(
    l3: int, l4: np.ndarray, src: np.ndarray, sport: np.ndarray, dst: np.ndarray, dport: np.ndarray
) -> np.ndarray:
    """Canonical key bytes of n flows of one IP version as an (n, 14 or 38) uint8 array."""
    n = l4.shape[0]
    alen = 4 if l3 == 4 else 16
    swap = canonical_swap(src, sport, dst, dport)
    a1 = np.where(swap[:, None], dst[:, :alen], src[:, :alen])
    a2 = np.where(swap[:, None], src[:, :alen], dst[:, :alen])
    p1 = np.where(swap, dport, sport).astype(np.uint16)
    p2 = np.where(swap, sport, dport).astype(np.uint16)
    rows = np.empty((n, 2 + 2 * (alen + 2)), dtype=np.uint8)
    rows[:, 0] = l3
    rows[:, 1] = l4
    rows[:, 2 : 2 + alen] = a1
    rows[:, 2 + alen] = p1 >> 8
    rows[:, 3 + alen] = p1 & 0xFF
    rows[:, 4 + alen : 4 + 2 * alen] = a2
    rows[:, 4 + 2 * alen] = p2 >> 8
    rows[:, 5 + 2 * alen] = p2 & 0xFF
    return rows


def flow_hashes(
    l3: np.ndarray,
    l4: np.ndarray,
    src: np.ndarray,
    sport: np.ndarray,
    dst: np.ndarray,
    dport: np.ndarray,
    seed: int = 0,
) -> np.ndarray:
    """Flow hash of every row (0 where l3 is neither 4 nor 6); both directions hash alike."""
    out = np.zeros(l3.shape[0], dtype=np.uint64)
    for version in (4, 6):
        sel = np.flatnonzero(l3 == version)
        if sel.size:
            rows = key_rows(version, l4[sel], src[sel], sport[sel], dst[sel], dport[sel])
            out[sel] = xxh64_rows(rows, seed)
    return out
