"""Bounded numpy reads for the batch decoder, and the shrinking set of frames still in play.

Every read is `np.take(mode="clip")`: a lying length can never read outside the buffer, and the
result of such a read is always masked by a length check of the same stage.
"""

from __future__ import annotations

import numpy as np

from celltap.decode.reasons import Reason


def u8(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bytes at `pos`, as int64 (zeros from an empty buffer: every length check fails there)."""
    if not buf.shape[0]:
        return np.zeros(pos.shape, np.int64)
    return np.take(buf, pos, mode="clip").astype(np.int64)


def u16(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian 16-bit words at `pos`."""
    return (u8(buf, pos) << 8) | u8(buf, pos + 1)


def u32(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Big-endian 32-bit words at `pos`."""
    return (u16(buf, pos) << 16) | u16(buf, pos + 2)


def rows(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """(len(pos), width) bytes starting at each `pos`."""
    if not buf.shape[0]:
        return np.zeros((pos.shape[0], width), np.uint8)
    return np.take(buf, pos[:, None] + np.arange(width, dtype=np.int64), mode="clip")


class Active:
    """The frames still being decoded, as an index set plus per-frame working arrays."""

    def __init__(self, idx: np.ndarray, **arrays: np.ndarray) -> None:
        self.idx = idx
        self.arrays = arrays

    def fail(self, bad: np.ndarray, reason: Reason, status: np.ndarray) -> None:
        """Mark the frames at `bad` (a mask over the set) with `reason` and drop them from the set."""
        if not bad.any():
            return
        status[self.idx[bad]] = reason
        keep = ~bad
        self.idx = self.idx[keep]
        self.arrays = {k: v[keep] for k, v in self.arrays.items()}

    def take(self, mask: np.ndarray) -> Active:
        """The subset at `mask`, as a new set."""
        return Active(self.idx[mask], **{k: v[mask] for k, v in self.arrays.items()})

    @staticmethod
    def concat(parts: list[Active]) -> Active:
        """One set of all frames of `parts` (which carry the same arrays)."""
        if len(parts) == 1:
            return parts[0]
        names = parts[0].arrays.keys()
        return Active(
            np.concatenate([p.idx for p in parts]),
            **{k: np.concatenate([p.arrays[k] for p in parts]) for k in names},
        )

    @staticmethod
    def none() -> Active:
        """An empty set with the link arrays (`off`, `et`)."""
        e = np.empty(0, np.int64)
        return Active(e, off=e, et=e)

    def __len__(self) -> int:
        return int(self.idx.size)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = value
