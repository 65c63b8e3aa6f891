"""Per-batch frame classification: flow hash, decode status, FIN/RST and fragment columns.

Plain Ethernet + IPv4 (no options, not fragmented) + TCP/UDP frames -- nearly all traffic -- take
a fast lane that reads fixed offsets from a (n, 48) header gather and hashes the canonical key
directly; everything else goes through the shared batch decoder.  Both lanes give the same hash
(tests/incubator/test_classify.py holds them equal against `decode_batch` + `flow_hashes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from celltap.decode import DEFAULT_OPTIONS, DecodeOptions, Reason, decode_batch
from celltap.flowkey import flow_hashes
from celltap.pcap.batch import LINKTYPE_ETHERNET, FrameBatch

HDR = 48  # Ethernet 14 + IPv4 20 + TCP up to byte 14 (flags): enough for the fast lane
TCP_FIN_RST = 0x05


@dataclass
class Classified:
    """Column arrays for one batch; fragment details only for the (rare) fragment frames."""

    status: np.ndarray  # uint8 Reason
    hashes: np.ndarray  # uint64 flow hash (0 where there is no flow)
    closing: np.ndarray  # bool: TCP FIN or RST
    frag: np.ndarray  # bool: an IP fragment
    frag_first: np.ndarray  # bool: fragment at offset 0 (carries the ports)
    frag_index: np.ndarray  # int64 positions of fragment frames
    frag_l3: np.ndarray
    frag_l4: np.ndarray
    frag_src: np.ndarray  # (k, 16) uint8
    frag_dst: np.ndarray
    frag_id: np.ndarray


def header_rows(batch: FrameBatch, width: int = HDR) -> tuple[np.ndarray, np.ndarray]:
    """(rows, usable): the first `width` bytes of each frame long enough, as one row gather."""
    buf = batch.buf
    usable = batch.caplens >= width
    offs = batch.offsets
    # Frames at the very end of the buffer may lack `width` bytes after them; they go the slow way.
    usable &= offs + width <= buf.shape[0]
    if buf.shape[0] < width:
        return np.zeros((0, width), np.uint8), np.zeros(len(batch), bool)
    rows = sliding_window_view(buf, width)[offs[usable]]
    return rows, usable


def _fast_lane(
    batch: FrameBatch, seed: int, tunnel_ports: tuple[int, ...] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fast frame positions, their hashes, their FIN/RST flag, fast mask); conservative by design."""
    n = len(batch)
    if batch.linktype != LINKTYPE_ETHERNET or n == 0:
        e = np.empty(0, np.int64)
        return e, np.empty(0, np.uint64), np.empty(0, bool), np.zeros(n, bool)
    rows, usable = header_rows(batch)
    pos = np.flatnonzero(usable)
    w = rows.view(">u2")  # 16-bit big-endian words: the header fields sit on even offsets
    tot = w[:, 8].astype(np.int64)
    proto = rows[:, 23]
    tcp = proto == 6
    doff = (rows[:, 46] >> 4).astype(np.int64) * 4
    ok = (
        (w[:, 6] == 0x0800)
        & (rows[:, 14] == 0x45)
        & (tcp | (proto == 17))
        & ((w[:, 10] & 0x3FFF) == 0)
        & (tot >= np.where(tcp, 40, 28))
        & (tot + 14 <= batch.wirelens[pos])
        & (tot + 14 <= batch.caplens[pos])
        & (~tcp | ((doff >= 20) & (doff <= tot - 20)))
    )
    for port in tunnel_ports:  # VXLAN / Geneve are decapsulated: the inner flow (slow lane)
        ok &= tcp | (w[:, 18] != port)
    if not ok.all():
        w, rows, tcp, pos = w[ok], rows[ok], tcp[ok], pos[ok]
    u = w.astype(np.uint64)
    sh16 = np.uint64(16)
    # Endpoints as 48-bit numbers (address, port): their order is the canonical order.
    s = (((u[:, 13] << sh16) | u[:, 14]) << sh16) | u[:, 17]
    d = (((u[:, 15] << sh16) | u[:, 16]) << sh16) | u[:, 18]
    swap = s > d
    a = np.where(swap, d, s)
    b = np.where(swap, s, d)
    hashes = xxh64_key14(rows[:, 23].astype(np.uint64), a, b, seed)
    closing = tcp & ((rows[:, 47] & TCP_FIN_RST) != 0)
    fast = np.zeros(n, bool)
    fast[pos] = True
    return pos, hashes, closing, fast


_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def xxh64_key14(proto: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0) -> np.ndarray:
    """XXH64 of IPv4 canonical keys [4, proto, a (6 bytes BE), b (6 bytes BE)] from integers.

    Equal to `celltap.flowhash.xxh64_rows` on the 14 key bytes; skipping the row build is what
    makes the fast lane fast.  XXH64 reads little-endian lanes, hence the byte swaps.
    """
    ra = a.byteswap()  # low 16 bits are zero; bytes a0..a5 now sit at bits 16..63
    rb = b.byteswap() >> np.uint64(16)  # bytes b0..b5 at bits 0..47
    lane0 = ra | (proto << np.uint64(8)) | np.uint64(4)
    word = rb & np.uint64(0xFFFFFFFF)
    b4 = (rb >> np.uint64(32)) & np.uint64(0xFF)
    b5 = rb >> np.uint64(40)
    with np.errstate(over="ignore"):
        h = np.full(a.shape[0], np.uint64((seed + 0x27D4EB2F165667C5 + 14) & 0xFFFFFFFFFFFFFFFF))
        k1 = _rotl(lane0 * _P2, 31) * _P1
        h = _rotl(h ^ k1, 27) * _P1 + _P4
        h = _rotl(h ^ (word * _P1), 23) * _P2 + _P3
        h = _rotl(h ^ (b4 * _P5), 11) * _P1
        h = _rotl(h ^ (b5 * _P5), 11) * _P1
        h ^= h >> np.uint64(33)
        h *= _P2
        h ^= h >> np.uint64(29)
        h *= _P3
        h ^= h >> np.uint64(32)
    return h


def classify(batch: FrameBatch, seed: int = 0, options: DecodeOptions = DEFAULT_OPTIONS) -> Classified:
    """Classify every frame of `batch` (see module doc)."""
    n = len(batch)
    status = np.zeros(n, np.uint8)
    hashes = np.zeros(n, np.uint64)
    closing = np.zeros(n, bool)
    frag = np.zeros(n, bool)
    frag_first = np.zeros(n, bool)
    fpos, fh, fcl, fast = _fast_lane(batch, seed, options.udp_tunnel_ports())
    hashes[fpos] = fh
    closing[fpos] = fcl
    slow = np.flatnonzero(~fast)
    empty16 = np.zeros((0, 16), np.uint8)
    fi = np.empty(0, np.int64)
    f_l3 = f_l4 = f_id = np.empty(0, np.uint32)
    f_src = f_dst = empty16
    if slow.size:
        sub = batch.select(slow)
        d = decode_batch(sub, options)
        status[slow] = d.status
        ok = d.status == Reason.OK
        h = flow_hashes(d.l3, d.l4, d.src, d.sport, d.dst, d.dport, seed)
        h[~ok] = 0
        hashes[slow] = h
        closing[slow] = ok & (d.l4 == 6) & ((d.tcp_flags & TCP_FIN_RST) != 0)
        isf = ok & d.is_frag
        frag[slow] = isf
        frag_first[slow] = isf & (d.frag_off == 0)
        sel = np.flatnonzero(isf)
        if sel.size:
            fi = slow[sel]
            f_l3, f_l4, f_id = d.l3[sel], d.l4[sel], d.frag_id[sel]
            f_src, f_dst = d.src[sel], d.dst[sel]
        # Non-first fragments have no ports: their flow hash is decided by the fragment tracker.
        hashes[slow[isf & (d.frag_off != 0)]] = 0
    return Classified(status, hashes, closing, frag, frag_first, fi, f_l3, f_l4, f_src, f_dst, f_id)
