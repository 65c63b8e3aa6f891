"""DiCAP mode: each cell sees the whole mirror and keeps its share with a kernel socket filter.

Classic BPF has 32-bit arithmetic, 16 scratch words and forward jumps only, so it cannot run
XXH64 and a 4096-point ring search per cell.  The partition we use instead, computed identically
by the filter (kernel), by `dicap_buckets` (numpy) and by the incubator's `partition: dicap`:

    h = src ^ dst                       (IPv4: the two addresses; IPv6: XOR of the eight words)
    h ^= sport ^ dport                  only for unfragmented TCP / UDP / SCTP (when use_ports)
    bucket = (h * 0x9E3779B1 mod 2^32) >> (32 - B)          (Fibonacci hashing, B bits)
    owner(bucket) = ring owner of xxh64(bucket as 4 bytes big-endian)  -- the incubator's ring

The filter sees frames after the kernel took one outer 802.1Q / 802.1ad tag out of the data, so
singly tagged flows partition on their IP header like untagged ones.  Frames without IPv4/IPv6
(or too short to hold the fields read) use h = 0, so exactly one cell (the owner of bucket 0)
gets them and counts them.  XOR is symmetric, so both directions of a
flow share a bucket; every fragment of a datagram hashes on its addresses only, so a datagram
is never split.  With `use_ports` a fragmented datagram may land on another cell than the
unfragmented packets of its flow; `use_ports=False` (address pairs) keeps even those together.

The cell's owned buckets are a bitmap of 2^B bits in 32-bit words; the filter finds the bucket's
word with a binary search (JGE + JA per level: cBPF cannot index a table) and tests the bit with
JSET.  That costs at most 2 instructions per word boundary plus 4 per word, so B = 14 (512
words, 16384 buckets) stays under the kernel's 4096-instruction limit for any membership, and
with 16384 buckets the sampling noise of the bucket-to-cell assignment is about 1 % of a share
(1024 buckets left cells of equal weight up to 40 % apart).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
from celltap.incubator.cells import CellSet
from numpy.lib.stride_tricks import sliding_window_view

from celltap.pcap.batch import FrameBatch

GOLDEN32 = 0x9E3779B1
ACCEPT = 0x40000  # snap length the filter returns for accepted frames (all of it)
MAX_BUCKETS_LOG2 = 14
DEFAULT_BUCKETS_LOG2 = 14
MAX_INSNS = 4096  # BPF_MAXINSNS

# Classic BPF opcodes (linux/filter.h).
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_H_IND = 0x48
LD_W_LEN = 0x80
LD_IMM, LD_MEM = 0x00, 0x60
LDX_MEM, LDX_B_MSH = 0x61, 0xB1
ST, TAX, TXA = 0x02, 0x07, 0x87
ALU_XOR_X, ALU_MUL_K, ALU_RSH_K, ALU_ADD_K = 0xAC, 0x24, 0x74, 0x04
ALU_AND_K, ALU_LSH_X = 0x54, 0x6C
JA, JEQ_K, JGE_K, JSET_K, JGE_X = 0x05, 0x15, 0x35, 0x45, 0x3D
RET_K = 0x06
PORT_PROTOS = (6, 17, 132)
KERNEL_UNTAGS = (0x8100, 0x88A8)  # TPIDs skb_vlan_untag() moves out of the frame data
ROW_WIDTH = 14 + 60 + 4  # Ethernet, IPv4 with options up to IHL 15, and the ports


class _Asm:
    """A tiny assembler with symbolic forward jumps."""

    def __init__(self) -> None:
        self.ins: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: object = 0, jt: object = 0, jf: object = 0) -> None:
        self.ins.append((code, jt, jf, k))  # type: ignore[arg-type]  # k: a label for JA

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ins)

    def assemble(self) -> bytes:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.ins):
            rel = []
            for j in (jt, jf):
                if isinstance(j, str):
                    d = self.labels[j] - i - 1
                    if not 0 <= d <= 255:
                        raise ValueError(f"BPF jump to {j} out of range ({d})")
                    rel.append(d)
                else:
                    rel.append(int(j))  # type: ignore[call-overload]
            if isinstance(k, str):  # JA: a 32-bit forward offset
                k = self.labels[k] - i - 1
            out.append(struct.pack("HBBI", code, rel[0], rel[1], k & 0xFFFFFFFF))
        return b"".join(out)


def owned_buckets(cells: CellSet, slot: int, buckets_log2: int) -> np.ndarray:
    """Bool per bucket: does the cell in `slot` own it on the ring."""
    owners = bucket_owner_slots(cells, buckets_log2)
    return owners == slot


def bucket_owner_slots(cells: CellSet, buckets_log2: int) -> np.ndarray:
    """Cell slot owning each bucket (ring owner of the bucket number's hash)."""
    from celltap.flowhash import xxh64_rows

    b = np.arange(1 << buckets_log2, dtype=">u4").view(np.uint8).reshape(-1, 4)
    return cells.owner_slots(xxh64_rows(b, cells.seed))


def bucket_words(owned: np.ndarray) -> list[int]:
    """The owned-bucket bitmap as 32-bit words: bucket b is bit b & 31 of word b >> 5."""
    bits = np.zeros(max(32, owned.size), np.uint64)
    bits[: owned.size] = owned
    weights = np.uint64(1) << np.arange(32, dtype=np.uint64)
    return (bits.reshape(-1, 32) * weights).sum(axis=1).astype(np.uint64).tolist()


def _bitmap_lookup(a: _Asm, words: list[int], lo: int, hi: int, tag: list[int]) -> None:
    """Code for A = word index in [lo, hi) and M[1] = bucket bit: accept iff the bit is set."""
    part = words[lo:hi]
    if not any(part):
        a.op(RET_K, 0)
        return
    if all(w == 0xFFFFFFFF for w in part):
        a.op(RET_K, ACCEPT)
        return
    if hi - lo == 1:
        a.op(LD_MEM, 1)
        a.op(JSET_K, part[0], 0, 1)
        a.op(RET_K, ACCEPT)
        a.op(RET_K, 0)
        return
    mid = (lo + hi) // 2
    tag[0] += 1
    right = f"w{tag[0]}"
    # cBPF conditional jumps reach 255 instructions; JA reaches any forward distance.
    a.op(JGE_K, mid, 0, 1)
    a.op(JA, right)
    _bitmap_lookup(a, words, lo, mid, tag)
    a.label(right)
    _bitmap_lookup(a, words, mid, hi, tag)


def build_filter(
    owned: np.ndarray, buckets_log2: int = DEFAULT_BUCKETS_LOG2, use_ports: bool = True
) -> bytes:
    """The classic BPF program (packed sock_filter array) accepting frames of the owned buckets."""
    if not 1 <= buckets_log2 <= MAX_BUCKETS_LOG2:
        raise ValueError(f"buckets_log2 must be 1..{MAX_BUCKETS_LOG2}")
    if owned.size != 1 << buckets_log2:
        raise ValueError(f"owned has {owned.size} buckets, expected {1 << buckets_log2}")
    a = _Asm()
    a.op(LD_IMM, 0)
    a.op(ST, 0)  # M[0] = h = 0 (non-IP, short frames)
    a.op(LD_W_LEN)
    a.op(JGE_K, 14, 0, "hash")
    a.op(LD_H_ABS, 12)
    a.op(JEQ_K, 0x0800, 0, "v6")
    # IPv4
    a.op(LD_W_LEN)
    a.op(JGE_K, 34, 0, "hash")
    a.op(LD_W_ABS, 26)
    a.op(TAX)
    a.op(LD_W_ABS, 30)
    a.op(ALU_XOR_X)
    a.op(ST, 0)
    if use_ports:
        a.op(LD_H_ABS, 20)
        a.op(JSET_K, 0x3FFF, "hash", 0)  # a fragment: addresses only
        a.op(LD_B_ABS, 23)
        a.op(JEQ_K, 6, "v4ports", 0)
        a.op(JEQ_K, 17, "v4ports", 0)
        a.op(JEQ_K, 132, "v4ports", "hash")
        a.label("v4ports")
        a.op(LDX_B_MSH, 14)  # X = 4 * IHL
        a.op(TXA)
        a.op(ALU_ADD_K, 18)
        a.op(TAX)
        a.op(LD_W_LEN)
        a.op(JGE_X, 0, 0, "hash")  # ports past the end of the frame: addresses only
        a.op(LDX_B_MSH, 14)
        a.op(LD_H_IND, 14)
        a.op(ST, 1)
        a.op(LD_H_IND, 16)
        a.op(LDX_MEM, 1)
        a.op(ALU_XOR_X)
        a.op(TAX)
        a.op(LD_MEM, 0)
        a.op(ALU_XOR_X)
        a.op(ST, 0)
    a.op(JEQ_K, 0, "hash", "hash")  # unconditional forward jump
    a.label("v6")
    a.op(JEQ_K, 0x86DD, 0, "hash")
    a.op(LD_W_LEN)
    a.op(JGE_K, 54, 0, "hash")
    a.op(LD_W_ABS, 22)
    for off in range(26, 54, 4):
        a.op(TAX)
        a.op(LD_W_ABS, off)
        a.op(ALU_XOR_X)
    a.op(ST, 0)
    if use_ports:
        a.op(LD_W_LEN)
        a.op(JGE_K, 58, 0, "hash")
        a.op(LD_B_ABS, 20)
        a.op(JEQ_K, 6, "v6ports", 0)
        a.op(JEQ_K, 17, "v6ports", 0)
        a.op(JEQ_K, 132, "v6ports", "hash")
        a.label("v6ports")
        a.op(LD_H_ABS, 54)
        a.op(TAX)
        a.op(LD_H_ABS, 56)
        a.op(ALU_XOR_X)
        a.op(TAX)
        a.op(LD_MEM, 0)
        a.op(ALU_XOR_X)
        a.op(ST, 0)
    a.label("hash")
    if not owned.any() or owned.all():
        a.op(RET_K, ACCEPT if owned.any() else 0)  # owns all buckets or none
        return a.assemble()
    a.op(LD_MEM, 0)
    a.op(ALU_MUL_K, GOLDEN32)
    a.op(ALU_RSH_K, 32 - buckets_log2)
    a.op(ST, 0)  # M[0] = bucket
    a.op(ALU_AND_K, 31)
    a.op(TAX)
    a.op(LD_IMM, 1)
    a.op(ALU_LSH_X)
    a.op(ST, 1)  # M[1] = 1 << (bucket & 31)
    a.op(LD_MEM, 0)
    a.op(ALU_RSH_K, 5)  # A = word index (0 when there are fewer than 32 buckets)
    words = bucket_words(owned)
    _bitmap_lookup(a, words, 0, len(words), [0])
    prog = a.assemble()
    if len(prog) // 8 > MAX_INSNS:
        raise ValueError("BPF program too long; use fewer buckets")
    return prog


def _be32(rows: np.ndarray, at: int) -> np.ndarray:
    return rows[:, at : at + 4].copy().view(">u4").ravel().astype(np.uint32)


def _be16(rows: np.ndarray, at: int) -> np.ndarray:
    return ((rows[:, at].astype(np.uint32) << 8) | rows[:, at + 1]).astype(np.uint32)


def untagged_rows(batch: FrameBatch, width: int = ROW_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """(rows, lengths): each frame's first `width` bytes as the filter sees them, zero past the end.

    The kernel's receive path takes one outer 802.1Q / 802.1ad tag out of the data before any
    socket filter runs; tagged rows are therefore the frame with bytes 12..15 cut out.  Whole-batch
    numpy: one row copy of `width + 4` bytes per frame (a sliding-window gather, memcpy per row),
    tagged rows shifted left by 4 from byte 12, and everything beyond the (untagged) length zeroed,
    since the buffer there holds other frames.
    """
    n = len(batch)
    wide = width + 4
    buf = batch.buf
    offs = batch.offsets.astype(np.int64)
    cap = batch.caplens.astype(np.int64)
    raw = np.zeros((n, wide), np.uint8)
    if n:
        # Frames closer than `wide` bytes to the end of the buffer are gathered from a padded copy
        # of that tail only: the buffer may be a whole capture ring, too big to copy per batch.
        near = offs + wide > buf.size
        far = np.flatnonzero(~near)
        if far.size:
            raw[far] = sliding_window_view(buf, wide)[offs[far]]
        if near.any():
            base = int(offs[near].min())
            tail = np.zeros(buf.size - base + wide, np.uint8)
            tail[: buf.size - base] = buf[base:]
            raw[near] = sliding_window_view(tail, wide)[offs[near] - base]
    et = (raw[:, 12].astype(np.int64) << 8) | raw[:, 13]
    tagged = (cap >= 18) & np.isin(et, KERNEL_UNTAGS)
    length = cap - 4 * tagged
    rows = raw[:, :width].copy()
    t = np.flatnonzero(tagged)
    if t.size:
        rows[t, 12:] = raw[t, 16:wide]
    rows[np.arange(width) >= length[:, None]] = 0
    return rows, length


def dicap_buckets(
    batch: FrameBatch, buckets_log2: int = DEFAULT_BUCKETS_LOG2, use_ports: bool = True
) -> np.ndarray:
    """Bucket of every Ethernet frame, exactly as the socket filter computes it."""
    n = len(batch)
    rows, length = untagged_rows(batch)
    et = _be16(rows, 12)
    h = np.zeros(n, np.uint32)
    v4 = (length >= 34) & (et == 0x0800)
    h[v4] = _be32(rows[v4], 26) ^ _be32(rows[v4], 30)
    if use_ports:
        r4 = rows[v4]
        nofrag = (_be16(r4, 20) & 0x3FFF) == 0
        pp = np.isin(r4[:, 23], PORT_PROTOS)
        ihl = (r4[:, 14] & 0x0F).astype(np.int64) * 4
        fits = length[v4] >= ihl + 18
        use = nofrag & pp & fits
        sel = np.flatnonzero(v4)[use]
        at = 14 + ihl[use]
        rr = rows[sel]
        j = np.arange(sel.size)
        sp = (rr[j, at].astype(np.uint32) << 8) | rr[j, at + 1]
        dp = (rr[j, at + 2].astype(np.uint32) << 8) | rr[j, at + 3]
        h[sel] ^= sp ^ dp
    v6 = (length >= 54) & (et == 0x86DD)
    r6 = rows[v6]
    acc = np.zeros(r6.shape[0], np.uint32)
    for off in range(22, 54, 4):
        acc ^= _be32(r6, off)
    if use_ports:
        ok = (length[v6] >= 58) & np.isin(r6[:, 20], PORT_PROTOS)
        acc[ok] ^= _be16(r6[ok], 54) ^ _be16(r6[ok], 56)
    h[v6] = acc
    with np.errstate(over="ignore"):
        return ((h.astype(np.uint64) * GOLDEN32) & 0xFFFFFFFF) >> (32 - buckets_log2)


def dicap_owner_slots(
    batch: FrameBatch, cells: CellSet, buckets_log2: int = DEFAULT_BUCKETS_LOG2, use_ports: bool = True
) -> np.ndarray:
    """The cell slot that keeps each frame under the DiCAP partition."""
    return bucket_owner_slots(cells, buckets_log2)[
        dicap_buckets(batch, buckets_log2, use_ports).astype(np.int64)
    ]


def cell_filter(
    members: Mapping[str, int],
    cell: str,
    seed: int = 0,
    buckets_log2: int = DEFAULT_BUCKETS_LOG2,
    use_ports: bool = True,
) -> bytes:
    """The socket filter for `cell` given the live members {id: weight}."""
    cells = CellSet(members, seed)
    if cell not in cells.slot_of:
        return build_filter(np.zeros(1 << buckets_log2, bool), buckets_log2, use_ports)
    return build_filter(owned_buckets(cells, cells.slot_of[cell], buckets_log2), buckets_log2, use_ports)
