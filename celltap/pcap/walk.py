"""Find record boundaries in a capture buffer without one Python step per record where it counts.

pcap records (16-byte header + frame) and pcapng blocks (total length in the header) form a
chain: each record's length says where the next starts, so the walk is sequential by nature.
Floods of one frame size (64-byte attacks, full-MSS bulk) are where per-packet cost hurts most,
and there the records form runs of equal length: a plain loop walks until it has seen a few equal
strides in a row, then guesses that the run goes on, verifies a whole window of guesses with numpy
(window doubling on success), and returns to the loop where lengths vary.  Mixed traffic thus costs
what a plain struct loop costs, and runs cost a few numpy calls per thousands of records.
"""

from __future__ import annotations

import struct

import numpy as np

MIN_WINDOW = 64
MAX_WINDOW = 65536
RUN_TO_SPECULATE = 16  # equal strides in a row before guessing that a run goes on
MAX_RUN_TO_SPECULATE = 4096  # after guesses that failed early, wait for longer runs


class RecordError(ValueError):
    """A record claims an impossible length; `offsets` are the complete records before it, `at` its offset."""

    def __init__(self, message: str, offsets: np.ndarray, at: int) -> None:
        super().__init__(message)
        self.offsets = offsets
        self.at = at


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
    above `max_stride` raises RecordError (a ValueError carrying the records found before it): the
    file is corrupt and resynchronising would be a guess.
    """
    u32 = struct.Struct(">I" if big_endian else "<I").unpack_from
    mv = memoryview(buf)
    header = max(len_off + 4, base)
    pieces: list[np.ndarray] = []
    scalar: list[int] = []
    append = scalar.append
    pos = start
    window = MIN_WINDOW
    last, same = -1, 0
    threshold = RUN_TO_SPECULATE
    while pos + header <= end:
        stride = base + u32(mv, pos + len_off)[0]
        if stride < header or stride > max_stride:
            if scalar:
                pieces.append(np.asarray(scalar, dtype=np.int64))
            found = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
            raise RecordError(f"record at byte {pos} claims {stride} bytes", found, pos)
        if pos + stride > end:
            break
        if stride != last:
            last, same = stride, 0
            append(pos)
            pos += stride
            continue
        same += 1
        if same < threshold or (end - pos) // stride < MIN_WINDOW:
            append(pos)
            pos += stride
            continue
        # A run: check `window` guesses at once.
        n = min((end - pos) // stride, window)
        cand = pos + stride * np.arange(n, dtype=np.int64)
        lens = gather_u32(buf, cand + len_off, big_endian)
        bad = np.flatnonzero(lens != stride - base)
        k = int(bad[0]) if bad.size else n
        if scalar:
            pieces.append(np.asarray(scalar, dtype=np.int64))
            scalar.clear()
        pieces.append(cand[:k])
        pos += k * stride
        if k == n:
            window = min(window * 2, MAX_WINDOW)
            threshold = RUN_TO_SPECULATE
        else:
            # A guess that failed early cost more than the loop would have: be slower to guess again.
            threshold = threshold * 2 if k < n // 2 else RUN_TO_SPECULATE
            threshold = min(threshold, MAX_RUN_TO_SPECULATE)
            window = MIN_WINDOW
            last, same = -1, 0
    if scalar:
        pieces.append(np.asarray(scalar, dtype=np.int64))
    if not pieces:
        return np.empty(0, dtype=np.int64), pos
    return (pieces[0] if len(pieces) == 1 else np.concatenate(pieces)), pos
