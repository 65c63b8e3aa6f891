"""The cluster-wide flow hash: XXH64 of canonical key bytes, scalar and vectorised (numpy).

XXH64 needs only wrapping 64-bit multiplies, which numpy's uint64 arithmetic gives us, so the
vectorised path is bit-identical to the `xxhash` package (tests compare them on random keys).
"""

from __future__ import annotations

import numpy as np
import xxhash

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1


def xxh64(data: bytes, seed: int = 0) -> int:
    """Scalar XXH64 of `data` (the reference: the xxhash package)."""
    return xxhash.xxh64_intdigest(data, seed)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    acc = acc + lane * P2
    return _rotl(acc, 31) * P1


def _merge(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    h = h ^ _round(np.zeros_like(v), v)
    return h * P1 + P4


def xxh64_rows(rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """XXH64 of every row of a 2-D uint8 array (all rows the same length), as uint64."""
    n, length = rows.shape
    padded_len = (length + 7) & ~7
    if padded_len != length or not rows.flags.c_contiguous:
        buf = np.zeros((n, padded_len), dtype=np.uint8)
        buf[:, :length] = rows
    else:
        buf = rows
    lanes = buf.view("<u8").reshape(n, padded_len // 8)
    s = np.uint64(seed & _MASK64)
    with np.errstate(over="ignore"):
        pos = 0
        if length >= 32:
            v1 = np.full(n, s + P1 + P2, dtype=np.uint64)
            v2 = np.full(n, s + P2, dtype=np.uint64)
            v3 = np.full(n, s, dtype=np.uint64)
            v4 = np.full(n, s - P1, dtype=np.uint64)
            while pos + 32 <= length:
                lane = pos // 8
                v1 = _round(v1, lanes[:, lane])
                v2 = _round(v2, lanes[:, lane + 1])
                v3 = _round(v3, lanes[:, lane + 2])
                v4 = _round(v4, lanes[:, lane + 3])
                pos += 32
            h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
            h = _merge(h, v1)
            h = _merge(h, v2)
            h = _merge(h, v3)
            h = _merge(h, v4)
        else:
            h = np.full(n, s + P5, dtype=np.uint64)
        h = h + np.uint64(length)
        while pos + 8 <= length:
            k1 = _round(np.zeros(n, dtype=np.uint64), lanes[:, pos // 8])
            h = _rotl(h ^ k1, 27) * P1 + P4
            pos += 8
        if pos + 4 <= length:
            word = lanes[:, pos // 8] & np.uint64(0xFFFFFFFF)
            h = _rotl(h ^ (word * P1), 23) * P2 + P3
            pos += 4
        while pos < length:
            byte = rows[:, pos].astype(np.uint64)
            h = _rotl(h ^ (byte * P5), 11) * P1
            pos += 1
        h = h ^ (h >> np.uint64(33))
        h = h * P2
        h = h ^ (h >> np.uint64(29))
        h = h * P3
        h = h ^ (h >> np.uint64(32))
    return h
