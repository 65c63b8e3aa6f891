"""Duplicate frame removal (HPCAP's and Arkime's packet dedup), batch-wise, for mirror ports that
deliver the same packet twice (a SPAN session on both ports of a link, ingress and egress copies).

What counts as a duplicate.  Two frames are copies of one packet when their IP packets are equal
byte for byte except for the fields a router rewrites on the way: the IPv4 TTL and header checksum,
the IPv6 hop limit (Arkime ignores the same fields).  The link layer (MAC addresses, VLAN tags, and
with `decapsulate: yes` the outer headers of a tunnel) is not compared, so two mirror sessions that
tag differently still match; the packet is taken up to its IP length (Ethernet padding is not
compared).  Frames that are not IP, or that do not decode, are compared whole.  A frame is a
duplicate when the last earlier frame with the same content -- kept or dropped -- was captured at
most `window_ns` before or after it (capture times: `FrameBatch.ts_ns`); the first copy to arrive is
kept.  A real retransmission differs (IPv4 identification, TCP timestamps) or comes later than any
sensible window (Linux's minimum RTO is 200 ms); the default window is 10 ms.

How. Per batch, with numpy only: the compared bytes of every frame are laid in a zero-padded (frames,
width) matrix (rows of 4-byte words, in chunks that bound memory), the rewritten fields zeroed, and each
row hashed by two multilinear hashes over 2^64 with random 64-bit coefficients (drawn per process; one
integer matrix product for both), the length folded in; the top 32 bits of each make the 64-bit content
hash (the multilinear family's top half is universal: two different packets collide with probability
about 2^-64). The window is an array of (hash, time) of recent frames; the batch is appended, one stable
argsort by hash puts copies next to each other in arrival order, and a frame is a duplicate when its
predecessor in that order has the same hash and a time within the window. Entries older than the window
are trimmed after each batch, and at most `max_entries` are kept (the oldest go first: a duplicate
farther back than that is not found, never the other way round).
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from celltap.decode import DecodedBatch
from celltap.pcap.batch import FrameBatch, scatter_rows

DEFAULT_WINDOW_S = 0.01
_CHUNK_BYTES = 1 << 22  # the padded matrix of one chunk
_MAX_WORDS = 1 << 15  # 128 KiB frames (the largest snaplen celltap reads is 256 KiB: the rest is cut)
# Random per process (os.urandom seeds the generator): the hash is linear, so with coefficients known in
# advance an attacker could craft two different packets with one hash and have the second dropped.
# Results never depend on them (only the 2^-64 collision chance does).
_rng = np.random.default_rng()
_COEF = _rng.integers(1, 2**63, size=(_MAX_WORDS + 1, 2), dtype=np.uint64) | np.uint64(1)
_SHIFT = np.uint64(32)


def content_hashes(batch: FrameBatch, start: np.ndarray, length: np.ndarray, ttl_at: np.ndarray,
                   csum_at: np.ndarray) -> np.ndarray:  # fmt: skip
    """64-bit hash of buf[offsets + start : + length] per frame, with the byte at `ttl_at` and the two at
    `csum_at` (relative to start; -1: none) read as zero."""
    n = len(batch)
    length = np.minimum(length, 4 * _MAX_WORDS)
    out = np.empty(n, np.uint64)
    width = int(-(-int(length.max(initial=0)) // 4) * 4) or 4
    rows = max(1, _CHUNK_BYTES // width)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        k = hi - lo
        m = np.zeros((k, width), np.uint8)
        flat = m.reshape(-1)
        scatter_rows(flat, np.arange(k, dtype=np.int64) * width, batch.buf,
                     batch.offsets[lo:hi] + start[lo:hi], length[lo:hi])  # fmt: skip
        r = np.arange(k)
        t = ttl_at[lo:hi]
        sel = t >= 0
        m[r[sel], t[sel]] = 0
        c = csum_at[lo:hi]
        sel = c >= 0
        m[r[sel], c[sel]] = 0
        m[r[sel], c[sel] + 1] = 0
        words = m.view("<u4")
        with np.errstate(over="ignore"):
            # (k, words) @ (words, 2): both hashes in one pass, sums wrapping mod 2^64
            h = words @ _COEF[: words.shape[1]]
            h += length[lo:hi].astype(np.uint64)[:, None] * _COEF[_MAX_WORDS]
        out[lo:hi] = (h[:, 0] >> _SHIFT) << _SHIFT | (h[:, 1] >> _SHIFT)
    return out


def compared_bytes(db: DecodedBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(start, length, TTL/hop-limit position, checksum position) of what dedup compares per frame."""
    batch = db.batch
    ip = (db.status == 0) & (db.l3_off >= 0) & ((db.l3 == 4) | (db.l3 == 6))
    start = np.where(ip, db.l3_off, 0).astype(np.int64)
    length = np.where(ip, np.minimum(batch.caplens - start, db.ip_len), batch.caplens).astype(np.int64)
    length = np.maximum(length, 0)
    v4 = ip & (db.l3 == 4)
    v6 = ip & (db.l3 == 6)
    ttl_at = np.where(v4 & (length > 8), 8, np.where(v6 & (length > 7), 7, -1))
    csum_at = np.where(v4 & (length > 11), 10, -1)
    return start, length, ttl_at, csum_at


def select_decoded(db: DecodedBatch, keep: np.ndarray) -> DecodedBatch:
    """The decoded columns of the frames at `keep` (mask or positions)."""
    cols = {f.name: getattr(db, f.name)[keep] for f in fields(db) if f.name != "batch"}
    return DecodedBatch(batch=db.batch.select(keep), **cols)


class Deduplicator:
    """Finds the duplicates of each batch against the batch itself and a window of recent frames."""

    def __init__(self, window_ns: int, max_entries: int = 1 << 20) -> None:
        self.window_ns = window_ns
        self.max_entries = max_entries
        self.hashes = np.empty(0, np.uint64)
        self.times = np.empty(0, np.int64)

    def duplicates(self, db: DecodedBatch) -> np.ndarray:
        """Mask of the frames of `db` that are duplicates; the window moves on past the batch."""
        n = len(db)
        h = content_hashes(db.batch, *compared_bytes(db))
        ts = db.batch.ts_ns.astype(np.int64)
        all_h = np.concatenate((self.hashes, h))
        all_t = np.concatenate((self.times, ts))
        order = np.argsort(all_h, kind="stable")  # stable: copies stay in arrival order
        sh, st = all_h[order], all_t[order]
        dup_sorted = np.zeros(order.size, bool)
        dup_sorted[1:] = (sh[1:] == sh[:-1]) & (np.abs(st[1:] - st[:-1]) <= self.window_ns)
        dup = np.empty(order.size, bool)
        dup[order] = dup_sorted
        newest = int(all_t.max()) if all_t.size else 0
        recent = all_t >= newest - self.window_ns
        self.hashes, self.times = all_h[recent][-self.max_entries :], all_t[recent][-self.max_entries :]
        return dup[all_h.size - n :]
