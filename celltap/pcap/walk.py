"""Find record boundaries in a capture buffer without one Python step per record.

pcap records (16-byte header + frame) and pcapng blocks (total length in the header) form a
chain: each record's length says where the next starts, so the walk is sequential by nature.
Real captures are dominated by runs of equal-length records (64-byte floods, full-MSS bulk), so
we guess the next run from the current record's stride, verify the guess for a whole window with
numpy, and fall back to a short scalar walk where lengths vary.  The window doubles on success and
resets on failure, so a capture of random lengths costs little more than the scalar loop.
"""

from __future__ import annotations

import struct

import numpy as np

MIN_WINDOW = 32
MAX_WINDOW = 65536
SCALAR_RUN = 32


def gather_u32(buf: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """Read an unaligned 32-bit unsigned integer at each position of `pos`."""
    b0 = buf[pos].astype(np.uint32)
    b1 = buf[pos + 1].astype(np.uint32)
    b2 = buf[pos + 2].astype(np.uint32)
    b3 = buf[pos + 3].astype(np.uint32)
    if big_endian:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)


def walk_records(
    buf: np.ndarray,
    start: int,
    end: int,
    base: int,
    len_off: int,
    big_endian: bool,
    max_stride: int,
) -> tuple[np.ndarray, int]:
    """Return (offsets of complete records in buf[start:end], offset where the walk stopped).

    A record at p is `base + u32(p + len_off)` bytes long.  The walk stops at the first record that
    does not fit in `end` (its bytes arrive with the next chunk).  A stride below the header size or
    above `max_stride` raises ValueError: the file is corrupt and resynchronising would be a guess.
    """
    u32 = struct.Struct(">I" if big_endian else "<I").unpack_from
    mv = memoryview(buf)
    header = max(len_off + 4, base)
    pieces: list[np.ndarray] = []
    scalar: list[int] = []
    pos = start
    window = MIN_WINDOW
    while pos + header <= end:
        stride = base + u32(mv, pos + len_off)[0]
        if stride < header or stride > max_stride:
            raise ValueError(f"record at byte {pos} claims {stride} bytes")
        if pos + stride > end:
            break
        fit = (end - pos) // stride
        if fit >= MIN_WINDOW:
            n = min(fit, window)
            cand = pos + stride * np.arange(n, dtype=np.int64)
            lens = gather_u32(buf, cand + len_off, big_endian)
            bad = np.flatnonzero(lens != stride - base)
            k = int(bad[0]) if bad.size else n
            if scalar:
                pieces.append(np.asarray(scalar, dtype=np.int64))
                scalar = []
            pieces.append(cand[:k])
            pos += k * stride
            if k == n:
                window = min(window * 2, MAX_WINDOW)
                continue
            window = MIN_WINDOW
            if k >= SCALAR_RUN // 2:
                continue
        # Short run: a plain loop is cheaper than another failed guess.
        for _ in range(SCALAR_RUN):
            if pos + header > end:
                break
            stride = base + u32(mv, pos + len_off)[0]
            if stride < header or stride > max_stride:
                raise ValueError(f"record at byte {pos} claims {stride} bytes")
            if pos + stride > end:
                break
            scalar.append(pos)
            pos += stride
        else:
            continue
        break
    if scalar:
        pieces.append(np.asarray(scalar, dtype=np.int64))
    if not pieces:
        return np.empty(0, dtype=np.int64), pos
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)), pos
