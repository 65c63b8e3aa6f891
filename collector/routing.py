"""Partition keys of record batches and their split over the consistent-hash ring (pure, no IO).

Each analysis app declares one partition key.  For a batch, every distinct key in use is hashed
once (vectorised) and mapped to its owner with one `searchsorted`; a record then goes once to each
distinct owner, with a per-record bit mask saying which keys that owner is responsible for, so the
node can feed each app exactly the records whose key it owns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from celltap.flowhash import _MASK64, P1, P2, P3, P5, xxh64, xxh64_rows
from celltap.flowkey import flow_hashes
from celltap.ring import Ring

PARTITION_KEYS = ("flow", "src", "dst", "exporter")
MAX_KEYS = 8  # one byte of mask per record


def address_rows(records: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(l3 per record: 4, 6 or 0, (n, 16) uint8 address bytes) of the source or destination address."""
    n = len(records)
    names = records.dtype.names or ()
    prefix = "source" if side == "src" else "destination"
    l3 = np.zeros(n, dtype=np.uint8)
    rows = np.zeros((n, 16), dtype=np.uint8)
    v4, v6 = f"{prefix}IPv4Address", f"{prefix}IPv6Address"
    if v6 in names:
        raw = np.ascontiguousarray(records[v6]).view(np.uint8).reshape(n, 16)
        has = raw.any(axis=1)
        rows[has] = raw[has]
        l3[has] = 6
    if v4 in names:
        take = l3 == 0
        be = records[v4].astype(">u4").view(np.uint8).reshape(n, 4)
        rows[take, :4] = be[take]
        l3[take] = 4
    return l3, rows


def xxh64_u32be(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """XXH64 of each uint32 value's 4 big-endian bytes (an IPv4 address), without building rows."""
    # The 4-byte tail step of XXH64 reads the bytes as a little-endian word: byte-swap the value.
    word = values.astype(np.uint32).byteswap().astype(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(len(values), (seed + int(P5) + 4) & _MASK64, dtype=np.uint64)
        h ^= word * P1
        h = ((h << np.uint64(23)) | (h >> np.uint64(41))) * P2 + P3
        h ^= h >> np.uint64(33)
        h *= P2
        h ^= h >> np.uint64(29)
        h *= P3
        h ^= h >> np.uint64(32)
    return h


def _address_hashes(records: np.ndarray, side: str, seed: int, fallback: int) -> np.ndarray:
    names = records.dtype.names or ()
    prefix = "source" if side == "src" else "destination"
    if f"{prefix}IPv6Address" not in names and f"{prefix}IPv4Address" in names:
        return xxh64_u32be(records[f"{prefix}IPv4Address"], seed)  # the common IPv4-only template
    l3, rows = address_rows(records, side)
    out = np.full(len(records), fallback, dtype=np.uint64)
    for version, width in ((4, 4), (6, 16)):
        sel = np.flatnonzero(l3 == version)
        if sel.size:
            out[sel] = xxh64_rows(np.ascontiguousarray(rows[sel, :width]), seed)
    return out


def _column(records: np.ndarray, name: str, dtype: type) -> np.ndarray:
    if name in (records.dtype.names or ()):
        return records[name].astype(dtype)
    return np.zeros(len(records), dtype=dtype)


def key_hashes(records: np.ndarray, key: str, exporter: str, seed: int = 0) -> np.ndarray:
    """uint64 hash of partition key `key` for every record (exporter hash where the key is missing)."""
    fallback = xxh64(exporter.encode(), seed)
    if key == "exporter":
        return np.full(len(records), fallback, dtype=np.uint64)
    if key in ("src", "dst"):
        return _address_hashes(records, key, seed, fallback)
    if key == "flow":
        l3s, src = address_rows(records, "src")
        l3d, dst = address_rows(records, "dst")
        l3 = np.where(l3s == l3d, l3s, 0)
        out = flow_hashes(
            l3, _column(records, "protocolIdentifier", np.uint8), src,
            _column(records, "sourceTransportPort", np.uint16), dst,
            _column(records, "destinationTransportPort", np.uint16), seed,
        )  # fmt: skip
        out[l3 == 0] = fallback
        return out
    raise ValueError(f"unknown partition key {key!r}; one of {', '.join(PARTITION_KEYS)}")


@dataclass(frozen=True)
class Part:
    """Records of a batch bound for one node: their indices and which keys the node owns for each."""

    node: str
    index: np.ndarray  # int64 record indices into the routed array
    mask: np.ndarray  # uint8 per selected record, bit i = keys[i]


def split_by_owner(owners: np.ndarray, ids: list[str], mask: np.ndarray | None = None) -> list[Part]:
    """Group (key, record) owner indices (shape keys x n) into one Part per distinct owner.

    `mask` (uint8 per record) restricts which key bits take part; a record appears in a node's Part
    once however many of its keys that node owns.
    """
    k, n = owners.shape
    parts: list[Part] = []
    if k == 1 and mask is None:  # one partition key: a plain partition of the records
        row = owners[0]
        for owner in np.flatnonzero(np.bincount(row, minlength=len(ids))):
            sel = np.flatnonzero(row == owner)
            parts.append(Part(ids[int(owner)], sel, np.ones(len(sel), dtype=np.uint8)))
        return parts
    if mask is None:
        masked = owners
    else:
        active = ((mask[None, :] >> np.arange(k, dtype=np.uint8)[:, None]) & 1).astype(bool)
        masked = np.where(active, owners, -1)
    present = np.flatnonzero(np.bincount((masked + 1).ravel(), minlength=len(ids) + 1)[1:])
    for owner in present:
        bits = np.zeros(n, dtype=np.uint8)
        for i in range(k):
            bits |= (masked[i] == owner).astype(np.uint8) << np.uint8(i)
        sel = np.flatnonzero(bits)
        parts.append(Part(ids[int(owner)], sel, bits[sel]))
    return parts


class Router:
    """A ring plus the rings without each member (where a member's keys go if it leaves)."""

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self._without: dict[str, Ring] = {}

    def without(self, member: str) -> Ring:
        """The ring with `member` removed (cached): its owners are `member`'s backups."""
        ring = self._without.get(member)
        if ring is None:
            ring = self._without[member] = self.ring.without_member(member)
        return ring

    def owners(self, hashes: list[np.ndarray], ring: Ring | None = None) -> np.ndarray:
        """(keys x n) owner indices into `ring.ids`, one searchsorted per key."""
        r = ring or self.ring
        return np.stack([r.owner_index(h) for h in hashes]) if hashes else np.zeros((0, 0), np.int32)

    def primaries(self, hashes: list[np.ndarray], mask: np.ndarray | None = None) -> list[Part]:
        """Split records over their key owners."""
        return split_by_owner(self.owners(hashes), self.ring.ids, mask)

    def backups(self, primary: str, hashes: list[np.ndarray], part: Part) -> list[Part]:
        """Split one primary's Part over the nodes that take its keys if it leaves (empty if alone).

        Indices in the returned Parts index the routed array, like `part.index`.
        """
        ring = self.without(primary)
        if not ring.ids:
            return []
        sub = [h[part.index] for h in hashes]
        out = split_by_owner(self.owners(sub, ring), ring.ids, part.mask)
        return [Part(p.node, part.index[p.index], p.mask) for p in out]
