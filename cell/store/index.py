"""Per-file flow index of the packet store: flow -> record offsets and time range, built with numpy.

Theory of operation. Each batch the cell decodes is appended to the open capture file as one write;
the index builder gets the same batch's decoded columns and the file offset of each record. For
every decodable IP frame it computes the canonical key rows and their XXH64 flow hash (the cell's
and incubator's hash, celltap.flowkey) in array passes and keeps three columns per frame (hash,
record offset, capture time) plus one key row per distinct flow of the batch. When the file is
closed, one stable argsort by hash groups the frames by flow (file order kept inside a flow), and
`reduceat` gives each flow's first and last time. The result is a compressed-sparse-row table:

    flows:   hash u64, key [38] u8 (IPv4 keys in the first 14 bytes), first_ns, last_ns, start, count
    records: rec_off u32 (file offset of the pcap record header), rec_ts i64, in flow order

plus the connections that ended while the file was open (`conn_*`: flowId = the uid's value, key,
first and last packet time, from the cell's own flow table, so uids match conn.log and IPFIX even
when a 5-tuple is reused). Frames without a flow key (non-IP, undecodable) are stored, not indexed,
and counted (`unindexed`). Non-first IP fragments carry no ports: they are indexed under the key
with ports 0. Files are `.idx` next to the capture, numpy's npz layout (written to a temporary name,
then renamed, so a reader never sees half an index).
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass, field, fields

import numpy as np

from celltap.decode import DecodedBatch
from celltap.flowhash import xxh64_rows
from celltap.flowkey import key_rows

KEY_WIDTH = 38


def key_len(row: np.ndarray) -> int:
    """Bytes of a padded key row that are the key (14 for IPv4, 38 for IPv6)."""
    return 14 if int(row[0]) == 4 else 38


def pad_key(key: bytes) -> np.ndarray:
    """A canonical key's bytes as a 38-byte index row."""
    row = np.zeros(KEY_WIDTH, np.uint8)
    row[: len(key)] = np.frombuffer(key, np.uint8)
    return row


def hash_padded(rows: np.ndarray) -> np.ndarray:
    """Flow hashes of padded key rows (each hashed over its real length)."""
    out = np.zeros(rows.shape[0], np.uint64)
    v4 = rows[:, 0] == 4
    for sel, width in ((v4, 14), (~v4, 38)):
        if sel.any():
            out[sel] = xxh64_rows(np.ascontiguousarray(rows[sel, :width]))
    return out


def flow_ids_padded(rows: np.ndarray, start_ns: np.ndarray) -> np.ndarray:
    """flowIds (celltap.flowid: XXH64 of key bytes and first-packet microsecond) of padded key rows."""
    out = np.zeros(rows.shape[0], np.uint64)
    us = (np.asarray(start_ns, np.int64) // 1000).astype("<u8").view(np.uint8).reshape(-1, 8)
    v4 = rows[:, 0] == 4
    for sel, width in ((v4, 14), (~v4, 38)):
        if sel.any():
            out[sel] = xxh64_rows(np.concatenate([rows[sel, :width], us[sel]], axis=1))
    return out


@dataclass
class KeyColumns:
    """What the index needs of a decoded batch (not the frames: the writer holds their records)."""

    linktype: int
    caplens: np.ndarray
    ts_ns: np.ndarray
    status: np.ndarray
    l3: np.ndarray
    l4: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray

    BYTES_PER_FRAME = 8 + 8 + 1 + 1 + 1 + 16 + 16 + 2 + 2  # upper bound, for queue accounting

    def __len__(self) -> int:
        return int(self.status.shape[0])

    @classmethod
    def of(cls, db: DecodedBatch) -> KeyColumns:
        """The columns of a decoded batch (references, no copies)."""
        b = db.batch
        return cls(
            b.linktype, b.caplens, b.ts_ns, db.status, db.l3, db.l4, db.src, db.dst, db.sport, db.dport
        )


@dataclass
class FileIndex:
    """The index of one capture file (see the module docstring)."""

    hash: np.ndarray
    key: np.ndarray
    first_ns: np.ndarray
    last_ns: np.ndarray
    start: np.ndarray
    count: np.ndarray
    rec_off: np.ndarray
    rec_ts: np.ndarray
    conn_fid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    conn_key: np.ndarray = field(default_factory=lambda: np.zeros((0, KEY_WIDTH), np.uint8))
    conn_first: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    conn_last: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    meta: np.ndarray = field(default_factory=lambda: np.zeros(6, np.int64))  # see META

    META = ("linktype", "frames", "bytes", "unindexed", "first_ns", "last_ns")

    def meta_value(self, name: str) -> int:
        """One of META's values."""
        return int(self.meta[self.META.index(name)])

    def to_bytes(self) -> bytes:
        """The index as it is saved (an .npz archive)."""
        buf = io.BytesIO()
        np.savez(buf, **{f.name: getattr(self, f.name) for f in fields(self)})
        return buf.getvalue()

    def save(self, path: str, data: bytes | None = None) -> int:
        """Write atomically (temporary name, fsync-free rename); returns the bytes written.

        `data` is `to_bytes()` when the caller already has it (to make room for its size first)."""
        data = self.to_bytes() if data is None else data
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return len(data)

    @classmethod
    def load(cls, path: str) -> FileIndex:
        """Read an index written by save()."""
        with np.load(path) as z:
            return cls(**{f.name: z[f.name] for f in fields(cls)})

    def consistent(self, file_size: int) -> bool:
        """True when the tables agree with each other and with a capture file of `file_size` bytes."""
        f, r, c = self.hash.shape[0], self.rec_off.shape[0], self.conn_fid.shape[0]
        return bool(
            self.key.shape == (f, KEY_WIDTH)
            and all(a.shape == (f,) for a in (self.first_ns, self.last_ns, self.start, self.count))
            and self.rec_ts.shape == (r,)
            and self.conn_key.shape == (c, KEY_WIDTH)
            and all(a.shape == (c,) for a in (self.conn_first, self.conn_last))
            and self.meta.shape == (len(self.META),)
            and (f == 0 or (int(self.start.min()) >= 0 and int((self.start + self.count).max()) <= r))
            and (r == 0 or int(self.rec_off.max()) + 16 <= file_size)
            and bool(np.all(self.hash[1:] >= self.hash[:-1]))
        )

    def lookup(self, flow_hash: int, key: np.ndarray) -> np.ndarray:
        """Positions (into rec_off / rec_ts) of the records of one flow, in file order."""
        lo = int(np.searchsorted(self.hash, np.uint64(flow_hash)))
        hi = int(np.searchsorted(self.hash, np.uint64(flow_hash), side="right"))
        for f in range(lo, hi):
            if np.array_equal(self.key[f], key):
                s = int(self.start[f])
                return np.arange(s, s + int(self.count[f]))
        return np.zeros(0, np.int64)


class IndexBuilder:
    """Accumulates one open file's frames, batch by batch; finish() makes its FileIndex."""

    def __init__(self, linktype: int) -> None:
        self.linktype = linktype
        self._hash: list[np.ndarray] = []
        self._off: list[np.ndarray] = []
        self._ts: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._key_hash: list[np.ndarray] = []
        self._conns: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.frames = 0
        self.bytes = 0
        self.unindexed = 0
        self.first_ns = 0
        self.last_ns = 0
        self.indexed = 0
        self.flow_rows = 0
        self.lock = threading.Lock()  # the writer adds while a query thread may take a snapshot

    def add(
        self, db: KeyColumns, rec_off: np.ndarray, nbytes: int, lo: int = 0, hi: int | None = None
    ) -> None:
        """Index frames lo..hi of a written batch: `rec_off[j]` is the file offset of frame lo+j's record."""
        hi = len(db) if hi is None else hi
        n = hi - lo
        if n <= 0:
            return
        ts = db.ts_ns[lo:hi]
        ok = db.status[lo:hi] == 0
        l3 = db.l3[lo:hi]
        parts = []
        for version in (4, 6):
            sel = np.flatnonzero(ok & (l3 == version))
            if not sel.size:
                continue
            at = sel + lo
            rows = key_rows(version, db.l4[at], db.src[at], db.sport[at], db.dst[at], db.dport[at])
            hashes = xxh64_rows(rows)
            uniq, first = np.unique(hashes, return_index=True)
            padded = np.zeros((uniq.size, KEY_WIDTH), np.uint8)
            padded[:, : rows.shape[1]] = rows[first]
            parts.append((padded, uniq, hashes, rec_off[sel], ts[sel]))
        tmin, tmax = int(ts.min()), int(ts.max())
        with self.lock:
            self.frames += n
            self.bytes += nbytes
            self.first_ns = tmin if not self.first_ns else min(self.first_ns, tmin)
            self.last_ns = max(self.last_ns, tmax)
            for padded, uniq, hashes, offs, tss in parts:
                self._keys.append(padded)
                self._key_hash.append(uniq)
                self._hash.append(hashes)
                self._off.append(offs)
                self._ts.append(tss)
                self.indexed += hashes.size
                self.flow_rows += uniq.size
            self.unindexed = self.frames - self.indexed

    def add_conns(self, fid: np.ndarray, keys: np.ndarray, first: np.ndarray, last: np.ndarray) -> None:
        """Connections the cell ended while this file was open (their uids, keys and time spans)."""
        if fid.size:
            with self.lock:
                self._conns.append((fid, keys, first, last))

    def snapshot(self) -> FileIndex:
        """The index of what has been added so far (the open file's, for a query meanwhile)."""
        copy = IndexBuilder(self.linktype)
        with self.lock:
            for name in ("_hash", "_off", "_ts", "_keys", "_key_hash", "_conns"):
                setattr(copy, name, list(getattr(self, name)))
            for name in ("frames", "bytes", "unindexed", "first_ns", "last_ns", "indexed", "flow_rows"):
                setattr(copy, name, getattr(self, name))
        return copy.finish()

    def estimate_bytes(self) -> int:
        """An upper bound of the index's size on disk (for retention before it is written)."""
        conns = sum(c[0].size for c in self._conns)
        return 8192 + 16 * self.indexed + 80 * self.flow_rows + 70 * conns

    def finish(self) -> FileIndex:
        """Group the frames by flow: one stable argsort, reduceat for time ranges."""
        if self._hash:
            h = np.concatenate(self._hash)
            off = np.concatenate(self._off)
            ts = np.concatenate(self._ts)
        else:
            h, off, ts = np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        order = np.argsort(h, kind="stable")
        h, off, ts = h[order], off[order], ts[order]
        uniq, start, count = np.unique(h, return_index=True, return_counts=True)
        if uniq.size:
            first_ns = np.minimum.reduceat(ts, start)
            last_ns = np.maximum.reduceat(ts, start)
            kh = np.concatenate(self._key_hash)
            kr = np.concatenate(self._keys)
            _, pick = np.unique(kh, return_index=True)  # sorted like uniq: the same hashes
            keys = kr[pick]
        else:
            first_ns = last_ns = np.zeros(0, np.int64)
            keys = np.zeros((0, KEY_WIDTH), np.uint8)
        idx = FileIndex(
            hash=uniq.astype(np.uint64),
            key=keys,
            first_ns=first_ns.astype(np.int64),
            last_ns=last_ns.astype(np.int64),
            start=start.astype(np.int64),
            count=count.astype(np.int64),
            rec_off=off.astype(np.uint32),
            rec_ts=ts.astype(np.int64),
            meta=np.array(
                [self.linktype, self.frames, self.bytes, self.unindexed, self.first_ns, self.last_ns],
                np.int64,
            ),
        )
        if self._conns:
            idx.conn_fid = np.concatenate([c[0] for c in self._conns]).astype(np.uint64)
            idx.conn_key = np.concatenate([c[1] for c in self._conns])
            idx.conn_first = np.concatenate([c[2] for c in self._conns]).astype(np.int64)
            idx.conn_last = np.concatenate([c[3] for c in self._conns]).astype(np.int64)
        return idx
