"""Retrieval from one cell's store directory: the frames of a flow (by uid or 5-tuple) in a time range.

Theory of operation. A query names a flow by its canonical key (from a 5-tuple) or by its uid.
A uid is resolved to (key, first packet, last packet) through the connections the cell recorded
when it ended them (each index's `conn_*` table: the cell's own flow identity), and, for
connections still live, by computing the uid of every indexed flow from its key and its first
packet time in the oldest file that holds it (one vectorised XXH64 pass per file). The key is then
looked up in each file whose time range meets the query's (a binary search on the index's sorted
hashes), the records' offsets are filtered by their indexed times, and the records are gathered
from the memory-mapped file with numpy (no Python step per packet). A file without an index (the
file being written, or one whose index could not be written) is indexed on the fly by walking its
records. Results of several files (and, in the cluster, of several cells) are merged by capture
time with a stable sort, so frames of equal time keep their file order.
"""

from __future__ import annotations

import mmap
import os
import socket
from dataclasses import dataclass

import numpy as np
from celltap.cell.store.index import (
    FileIndex,
    IndexBuilder,
    KeyColumns,
    flow_ids_padded,
    hash_padded,
    pad_key,
)
from celltap.cell.store.writer import FILE_RE

from celltap.decode import DecodeOptions, decode_batch
from celltap.flowid import flow_id_from_uid, key_bytes
from celltap.pcap.batch import FrameBatch, gather_frames
from celltap.pcap.reader import PCAP_MAGIC_NS
from celltap.pcap.walk import walk_records

NS_MAX = (1 << 63) - 1
_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}


class QueryError(ValueError):
    """A query the store cannot answer as asked (bad uid, bad flow text); one line for the user."""


@dataclass
class Query:
    """What to retrieve: one flow by key or uid, between two capture times (ns, inclusive)."""

    uid: str | None = None
    key: bytes | None = None
    t_from: int = 0
    t_to: int = NS_MAX


def parse_flow(text: str) -> bytes:
    """'tcp 10.0.0.1:80 10.0.0.2:5000' (either order; [v6]:port) -> canonical key bytes."""
    parts = text.split()
    if len(parts) != 3:
        raise QueryError(f"--flow: expected 'PROTO ADDR:PORT ADDR:PORT', got {text!r}")
    proto_s, a, b = parts
    proto = _PROTOS.get(proto_s.lower())
    if proto is None:
        if not (proto_s.isascii() and proto_s.isdigit()) or not 0 <= int(proto_s) <= 255:
            raise QueryError(
                f"--flow: unknown protocol {proto_s!r} (tcp, udp, icmp, icmpv6, sctp or a number)"
            )
        proto = int(proto_s)
    ends = [_endpoint(x) for x in (a, b)]
    if len(ends[0][0]) != len(ends[1][0]):
        raise QueryError(f"--flow: mixes IPv4 and IPv6 addresses: {text!r}")
    (a1, p1), (a2, p2) = sorted(ends)
    return key_bytes(4 if len(a1) == 4 else 6, proto, a1, p1, a2, p2)


def _endpoint(text: str) -> tuple[bytes, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "0"
    host = host.strip("[]")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:  # int() rejects '²'.isdigit()
        raise QueryError(f"--flow: bad port in {text!r}")
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(family, host), int(port)
        except (OSError, ValueError):  # ValueError: an embedded NUL
            continue
    raise QueryError(f"--flow: bad address in {text!r}")


def store_files(directory: str) -> list[str]:
    """The capture files of a store directory, oldest first (by sequence number, then cell)."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise QueryError(f"--store {directory}: {exc.strerror}") from None
    found = []
    for name in names:
        m = FILE_RE.match(name)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), os.path.join(directory, name)))
    return [p for _, _, p in sorted(found)]


def _map(path: str) -> np.ndarray | None:
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            return None
        mm = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
    return np.frombuffer(mm, np.uint8)


def index_of(path: str) -> FileIndex | None:
    """A capture file's index: its .idx, or built now by walking the file (the open file, a lost index)."""
    idx = path[: -len(".pcap")] + ".idx"
    try:
        loaded = FileIndex.load(idx)
        if loaded.consistent(os.path.getsize(path)):
            return loaded
    except Exception:
        pass
    try:
        buf = _map(path)
    except (OSError, ValueError):
        return None
    if buf is None or int(buf[:4].view("<u4")[0]) != PCAP_MAGIC_NS:
        return None
    linktype = int(buf[20:24].view("<u4")[0])
    try:
        starts, _ = walk_records(buf, 24, buf.size, 16, 8, False, 1 << 24)
    except ValueError:
        return None  # not a file the store wrote whole
    builder = IndexBuilder(linktype)
    if starts.size:
        hdr = _headers(buf, starts)
        batch = FrameBatch(buf, starts + 16, hdr[:, 2].astype(np.int64), hdr[:, 3].astype(np.int64),
                           hdr[:, 0].astype(np.int64) * 1_000_000_000 + hdr[:, 1], linktype)  # fmt: skip
        db = decode_batch(batch, DecodeOptions())
        builder.add(KeyColumns.of(db), starts, int(buf.size) - 24)
    return builder.finish()


def _headers(buf: np.ndarray, offs: np.ndarray) -> np.ndarray:
    """The 4 u32 fields (sec, nsec, caplen, wirelen) of the records at `offs`."""
    rows = buf[offs.astype(np.int64)[:, None] + np.arange(16)]
    return np.ascontiguousarray(rows).view("<u4").reshape(-1, 4)


def resolve_uid(uid: str, indexes: list[FileIndex]) -> list[tuple[np.ndarray, int, int]]:
    """(padded key, first ns, last ns) of the connection(s) a uid names; [] if the store has none."""
    try:
        fid = np.uint64(flow_id_from_uid(uid))
    except ValueError as exc:
        raise QueryError(f"--uid: {exc}") from None
    found: dict[bytes, tuple[np.ndarray, int, int]] = {}
    for idx in indexes:
        for i in np.flatnonzero(idx.conn_fid == fid).tolist():
            k = idx.conn_key[i]
            found.setdefault(k.tobytes(), (k, int(idx.conn_first[i]), int(idx.conn_last[i])))
    if found:
        return list(found.values())
    # a live connection: its uid from its first packet in the store (oldest file first)
    for idx in indexes:
        if not idx.hash.size:
            continue
        hit = np.flatnonzero(flow_ids_padded(idx.key, idx.first_ns) == fid)
        if hit.size:
            i = int(hit[0])
            return [(idx.key[i], int(idx.first_ns[i]), NS_MAX)]
    return []


def query_dir(directory: str, q: Query, live: tuple[str, FileIndex] | None = None) -> FrameBatch | None:
    """The frames of the query's flow in one store directory, in capture-time order (None: no frames).

    `live`: (path, index so far) of the file the store is writing (the cell's own endpoint has it),
    used instead of walking that file when it has no index yet.
    """
    files = store_files(directory)
    loaded = [(p, _index_for(p, live)) for p in files]
    loaded = [(p, i) for p, i in loaded if i is not None]
    if q.uid is not None:
        spans = [
            (k, max(first, q.t_from), min(last, q.t_to))
            for k, first, last in resolve_uid(q.uid, [i for _, i in loaded])
        ]
    else:
        assert q.key is not None
        spans = [(pad_key(q.key), q.t_from, q.t_to)]
    parts: list[FrameBatch] = []
    for key, lo, hi in spans:
        if lo > hi:
            continue
        fh = int(hash_padded(key[None, :])[0])
        for path, idx in loaded:
            if idx.meta_value("last_ns") < lo or idx.meta_value("first_ns") > hi:
                continue
            pos = idx.lookup(fh, key)
            if not pos.size:
                continue
            ts = idx.rec_ts[pos]
            pos = pos[(ts >= lo) & (ts <= hi)]
            if not pos.size:
                continue
            try:
                parts.append(
                    _read_records(path, idx.rec_off[pos].astype(np.int64), idx.meta_value("linktype"))
                )
            except FileNotFoundError:
                continue  # removed by retention since its index was read: its frames are gone
    return merge(parts)


def _index_for(path: str, live: tuple[str, FileIndex] | None) -> FileIndex | None:
    if live is not None and live[0] == path and not os.path.exists(path[: -len(".pcap")] + ".idx"):
        return live[1]
    return index_of(path)


def _read_records(path: str, offs: np.ndarray, linktype: int) -> FrameBatch:
    buf = _map(path)
    if buf is None or int(offs.max()) + 16 > buf.size:
        raise FileNotFoundError(path)  # truncated or replaced since its index was read
    hdr = _headers(buf, offs)
    caplen = hdr[:, 2].astype(np.int64)
    data = gather_frames(buf, offs + 16, caplen)
    starts = np.zeros(caplen.size, np.int64)
    np.cumsum(caplen[:-1], out=starts[1:])
    ts = hdr[:, 0].astype(np.int64) * 1_000_000_000 + hdr[:, 1].astype(np.int64)
    return FrameBatch(data, starts, caplen, hdr[:, 3].astype(np.int64), ts, linktype)


def merge(parts: list[FrameBatch]) -> FrameBatch | None:
    """One batch of all parts' frames, stable-sorted by capture time (parts in their given order)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    linktypes = {p.linktype for p in parts}
    if len(linktypes) > 1:
        raise QueryError(
            f"the flow's frames have several link types {sorted(linktypes)}: one pcap cannot hold them"
        )
    bufs, offs, base = [], [], 0
    for p in parts:
        data = gather_frames(p.buf, p.offsets, p.caplens)
        starts = np.zeros(len(p), np.int64)
        np.cumsum(p.caplens[:-1], out=starts[1:])
        bufs.append(data)
        offs.append(starts + base)
        base += data.size
    ts = np.concatenate([p.ts_ns for p in parts])
    order = np.argsort(ts, kind="stable")
    return FrameBatch(
        np.concatenate(bufs),
        np.concatenate(offs)[order],
        np.concatenate([p.caplens for p in parts])[order],
        np.concatenate([p.wirelens for p in parts])[order],
        ts[order],
        parts[0].linktype,
    )
