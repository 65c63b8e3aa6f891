"""The packet store's writer: the cell hands it decoded batches, a thread writes them to rotating files.

Theory of operation. `submit()` runs on the cell's thread: it packs the batch's pcap records
(nanosecond pcap: 16-byte header + captured bytes, one numpy pass, the timestamps the batch carries)
into one buffer and appends it to a queue bounded in bytes. When the queue is full the batch is
dropped from the store only and counted (`queue_full`): the cell never waits for the disk (offline
runs set `block`, and then wait, as they wait for their readers). The writer thread takes each
buffer, rotates the open file when it would pass `file_bytes`, has been open `file_seconds`, or the
link type changes, makes room under `max_bytes` by removing the oldest closed files (counted,
reason `size`), writes the buffer with one write call, and hands the batch's decoded columns and
record offsets to the file's index builder (cell/store/index.py). A failed write (ENOSPC and any
other OSError) truncates the file back to its last whole record, so the file stays readable, and
counts the batch's frames as dropped (`disk_full`, `write_error`); on a full disk the oldest closed
file is removed too (reason `disk_full`) so that newer traffic can be kept. Closing a file writes
its index; files closed more than `max_age` seconds ago are removed (reason `age`). The flows the
cell ends are passed in too (`note_ended`), so each index lists the connections (uid, key, time
span) that ended while its file was open: retrieval by uid uses the cell's own flow identity.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import re
import threading
import time
from dataclasses import dataclass

import numpy as np
from celltap.cell.flow_identity import flow_ids, flow_key_bytes
from celltap.cell.flow_table import Flow
from celltap.cell.store.config import StoreConfig
from celltap.cell.store.index import KEY_WIDTH, IndexBuilder, KeyColumns
from celltap.cell.store.records import pack_records

from celltap.decode import DecodedBatch
from celltap.pcap.reader import PCAP_MAGIC_NS

log = logging.getLogger("celltap.cell.store")

SNAPLEN = 262144
FILE_RE = re.compile(r"^cell(\d+)-(\d{8})\.pcap$")
DROP_REASONS = ("queue_full", "disk_full", "write_error")


def pcap_header(linktype: int) -> bytes:
    """The 24-byte global header of a nanosecond pcap file."""
    return (
        PCAP_MAGIC_NS.to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (4).to_bytes(2, "little")
        + bytes(8)
        + SNAPLEN.to_bytes(4, "little")
        + linktype.to_bytes(4, "little")
    )


@dataclass
class ClosedFile:
    """A finished capture file (and its index) on disk."""

    path: str
    size: int  # capture + index bytes
    closed: float  # wall time it was closed


class _OpenFile:
    def __init__(self, path: str, fd: int, linktype: int) -> None:
        self.path = path
        self.fd = fd
        self.linktype = linktype
        self.size = 0
        self.opened = time.monotonic()
        self.index = IndexBuilder(linktype)


class PacketStore:
    """Rotating capture files + flow indexes for one cell, bounded by size and age."""

    def __init__(self, cfg: StoreConfig, cell_id: int = 0) -> None:
        self.cfg = cfg
        self.cell_id = cell_id
        self.dir = cfg.dir
        os.makedirs(self.dir, exist_ok=True)
        self.block = False  # offline runs wait for room instead of dropping
        self.closed: list[ClosedFile] = []
        self.seq = 0
        self._scan_existing()
        self.queue: collections.deque = collections.deque()
        self.queued_bytes = 0
        self.cond = threading.Condition()
        self.current: _OpenFile | None = None
        self.pending_conns: list[tuple[np.ndarray, ...]] = []
        # counters (read by the metrics collector at scrape time)
        self.written_bytes = 0
        self.written_frames = 0
        self.files_created = 0
        self.index_bytes_written = 0
        self.index_errors = 0
        self.removed_files: dict[str, int] = {}
        self.removed_bytes: dict[str, int] = {}
        self.dropped_frames: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.dropped_bytes: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._stopping = False
        self._open_error: OSError = OSError("not opened")
        self._batch_frames = self._batch_bytes = 0
        self.thread = threading.Thread(target=self._run, name="celltap-store", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ the cell's side
    def submit(self, db: DecodedBatch) -> None:
        """Queue one decoded batch for writing (never waits unless `block`; a full queue drops it)."""
        n = len(db)
        if n == 0:
            return
        size = int(np.minimum(db.batch.caplens, SNAPLEN).sum()) + 16 * n  # the records' bytes
        cost = size + KeyColumns.BYTES_PER_FRAME * n
        with self.cond:
            if self.queued_bytes + cost > self.cfg.queue_bytes and self.queued_bytes:
                if not self.block:
                    # dropped before any copy: an overloaded store costs the cell one sum per batch
                    self._count_drop("queue_full", n, size)
                    return
                while self.queued_bytes + cost > self.cfg.queue_bytes and self.queued_bytes:
                    self.cond.wait(0.5)
        # only this thread queues batches, and the writer only empties the queue: the room stays
        recs, _ = pack_records(db.batch, SNAPLEN)
        cols = KeyColumns.of(db)  # the batch's frame buffer is not kept: `recs` holds the frames
        with self.cond:
            self.queue.append(("batch", cols, recs, cost))
            self.queued_bytes += cost
            self.cond.notify_all()

    def note_ended(self, flows: list[Flow]) -> None:
        """Record the uid, key and time span of connections the cell ended (frames' flows only)."""
        flows = [f for f in flows if f.hop == 0]
        if not flows:
            return
        out = []
        for version in (4, 6):
            sel = [f for f in flows if f.l3 == version]
            if not sel:
                continue
            keys = np.zeros((len(sel), KEY_WIDTH), np.uint8)
            raw = np.frombuffer(b"".join(flow_key_bytes(f) for f in sel), np.uint8).reshape(len(sel), -1)
            keys[:, : raw.shape[1]] = raw
            first = np.fromiter((f.start_ns for f in sel), np.int64, len(sel))
            last = np.fromiter((max(f.last_ns, f.end_ns) for f in sel), np.int64, len(sel))
            out.append((flow_ids(sel), keys, first, last))
        with self.cond:
            self.queue.append(("conns", out, None, 0))
            self.cond.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, close the open file with its index, stop the thread."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        self.thread.join(timeout)
        dropped = {k: v for k, v in self.dropped_frames.items() if v}
        (log.warning if dropped else log.info)(
            "packet store: %d frames written, %d dropped (%s), %d files created, %d files removed (%s)",
            self.written_frames,
            sum(dropped.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "none",
            self.files_created,
            sum(self.removed_files.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(self.removed_files.items())) or "none",
        )

    def open_index(self) -> tuple[str, object] | None:
        """(path, index so far) of the file being written, for queries meanwhile; None when none is open."""
        cur = self.current
        if cur is None:
            return None
        return cur.path, cur.index.snapshot()

    # ------------------------------------------------------------------ counters
    def _count_drop(self, reason: str, frames: int, nbytes: int) -> None:
        self.dropped_frames[reason] = self.dropped_frames.get(reason, 0) + frames
        self.dropped_bytes[reason] = self.dropped_bytes.get(reason, 0) + nbytes

    def disk_bytes(self) -> int:
        """Bytes of capture files and indexes on disk (closed files and the open one)."""
        cur = self.current
        return sum(f.size for f in self.closed) + (cur.size if cur else 0)

    def files(self) -> int:
        """Capture files on disk, the open one included."""
        return len(self.closed) + (1 if self.current else 0)

    def index_bytes(self) -> int:
        """Bytes of the index files on disk."""
        total = 0
        for f in list(self.closed):
            try:
                total += os.path.getsize(f.path[: -len(".pcap")] + ".idx")
            except OSError:
                pass
        return total

    # ------------------------------------------------------------------ the writer thread
    def _scan_existing(self) -> None:
        """Files of an earlier run count towards retention; numbering continues after them."""
        found = []
        for name in os.listdir(self.dir):
            m = FILE_RE.match(name)
            if m and int(m.group(1)) == self.cell_id:
                path = os.path.join(self.dir, name)
                idx = path[:-5] + ".idx"
                size = os.path.getsize(path) + (os.path.getsize(idx) if os.path.exists(idx) else 0)
                found.append((int(m.group(2)), ClosedFile(path, size, os.path.getmtime(path))))
        found.sort(key=lambda x: x[0])
        self.closed = [f for _, f in found]
        self.seq = found[-1][0] + 1 if found else 0

    def _run(self) -> None:
        while True:
            with self.cond:
                if not self.queue and not self._stopping:
                    self.cond.wait(1.0)
                item = self.queue.popleft() if self.queue else None
                if item is None and self._stopping:
                    break
            try:
                if item is not None:
                    self._handle(item)
                self._tick()
            except Exception:
                log.exception("packet store: unexpected error (the store goes on)")
                if item is not None and item[0] == "batch":  # what it did not write is counted
                    n, nbytes = len(item[1]) - self._batch_frames, int(item[2].size) - self._batch_bytes
                    self._count_drop("write_error", n, nbytes)
        try:
            self._close_current()
        except Exception:
            log.exception("packet store: closing the last file failed")

    def _handle(self, item: tuple) -> None:
        kind, payload, recs, cost = item
        if kind == "conns":
            for arrays in payload:
                if self.current is not None:
                    self.current.index.add_conns(*arrays)
                else:
                    self.pending_conns.append(arrays)
            return
        try:
            self._write(payload, recs)
        finally:
            with self.cond:
                self.queued_bytes -= cost
                self.cond.notify_all()

    def _tick(self) -> None:
        cur = self.current
        if cur is not None and cur.size > 24 and time.monotonic() - cur.opened >= self.cfg.file_seconds:
            self._close_current()
        if self.cfg.max_age > 0:
            limit = time.time() - self.cfg.max_age
            while self.closed and self.closed[0].closed < limit:
                self._remove_oldest("age")

    def _write(self, db: KeyColumns, recs: np.ndarray) -> None:
        """Write a batch's records, split at record boundaries where a file fills up."""
        n = len(db)
        self._batch_frames = self._batch_bytes = 0  # written or counted so far (for the error path)
        rec_len = np.minimum(db.caplens, SNAPLEN) + 16
        ends = np.cumsum(rec_len)  # end of each record inside `recs`
        lo = 0
        while lo < n:
            cur = self._file_for(db.linktype)
            if cur is None:
                self._write_failed(self._open_error, n - lo, int(ends[-1]) - _start(ends, lo), None)
                return
            done = _start(ends, lo)
            room = self.cfg.file_bytes - cur.size
            hi = int(np.searchsorted(ends, done + room, side="right"))
            if hi <= lo:
                if cur.size > 24:
                    self._close_current()
                    continue
                hi = lo + 1  # one record bigger than a file: alone in its file
            size = int(ends[hi - 1]) - done
            self._make_room(size, cur)
            base = cur.size
            try:
                _write_all(cur.fd, memoryview(recs[done : done + size]))
            except OSError as exc:
                self._write_failed(exc, hi - lo, size, cur, base)
                self._batch_frames += hi - lo
                self._batch_bytes += size
                lo = hi
                continue
            cur.size += size
            rec_off = base + (ends[lo:hi] - rec_len[lo:hi]) - done
            cur.index.add(db, rec_off, size, lo, hi)
            self.written_bytes += size
            self.written_frames += hi - lo
            self._batch_frames += hi - lo
            self._batch_bytes += size
            lo = hi

    def _file_for(self, linktype: int) -> _OpenFile | None:
        """The open file for frames of this link type (rotating on age or link type); None if none opens."""
        cur = self.current
        if cur is not None and (
            cur.linktype != linktype or time.monotonic() - cur.opened >= self.cfg.file_seconds
        ):
            self._close_current()
            cur = None
        if cur is None:
            self._make_room(24, None)
            try:
                cur = self._open(linktype)
            except OSError as exc:
                self._open_error = exc
                return None
        return cur

    def _make_room(self, need: int, cur: _OpenFile | None) -> None:
        """Remove the oldest closed files until `need` more bytes (and the open index) fit max_bytes."""
        reserve = cur.index.estimate_bytes() if cur is not None else 8192
        while self.closed and self.disk_bytes() + need + reserve > self.cfg.max_bytes:
            self._remove_oldest("size")

    def _write_failed(self, exc: OSError, n: int, size: int, cur: _OpenFile | None, base: int = 0) -> None:
        reason = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "write_error"
        self._count_drop(reason, n, size)
        if cur is not None:
            try:
                os.ftruncate(cur.fd, base)  # drop a partial record: the file stays readable
                os.lseek(cur.fd, base, os.SEEK_SET)
            except OSError:
                pass
        if reason == "disk_full" and self.closed:
            self._remove_oldest("disk_full")  # keep the newest traffic, as far as the disk allows
        if self.dropped_frames[reason] == n:  # the first time only: the counter tells the rest
            log.warning("packet store: %s (%s): frames are dropped from the store and counted", reason, exc)

    def _open(self, linktype: int) -> _OpenFile:
        path = os.path.join(self.dir, f"cell{self.cell_id}-{self.seq:08d}.pcap")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            _write_all(fd, memoryview(pcap_header(linktype)))
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        self.seq += 1
        cur = _OpenFile(path, fd, linktype)
        cur.size = 24
        for arrays in self.pending_conns:
            cur.index.add_conns(*arrays)
        self.pending_conns = []
        self.current = cur
        self.files_created += 1
        return cur

    def _close_current(self) -> None:
        cur = self.current
        if cur is None:
            return
        self.current = None
        os.close(cur.fd)
        size = cur.size
        idx_path = cur.path[:-5] + ".idx"
        try:
            index = cur.index.finish()
            data = index.to_bytes()
            # Room for the index as it really is (the running reserve is an estimate): the bound holds
            # while it is written, not only once the next file opens.
            while self.closed and self.disk_bytes() + cur.size + len(data) > self.cfg.max_bytes:
                self._remove_oldest("size")
            written = index.save(idx_path, data)
            size += written
            self.index_bytes_written += written
        except OSError as exc:
            self.index_errors += 1
            log.warning(
                "packet store: index of %s not written (%s): retrieval will rescan the file", cur.path, exc
            )
            try:
                os.unlink(idx_path + ".tmp")
            except OSError:
                pass
        self.closed.append(ClosedFile(cur.path, size, time.time()))
        while self.closed and self.disk_bytes() > self.cfg.max_bytes:
            self._remove_oldest("size")

    def _remove_oldest(self, reason: str) -> None:
        f = self.closed.pop(0)
        for path in (f.path, f.path[:-5] + ".idx"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("packet store: cannot remove %s: %s", path, exc)
        self.removed_files[reason] = self.removed_files.get(reason, 0) + 1
        self.removed_bytes[reason] = self.removed_bytes.get(reason, 0) + f.size


def _start(ends: np.ndarray, i: int) -> int:
    """Offset of record i inside a batch's packed records."""
    return int(ends[i - 1]) if i else 0


def _write_all(fd: int, data: memoryview) -> None:
    """os.write until everything is written (a regular file may take less than asked)."""
    while len(data):
        done = os.write(fd, data)
        data = data[done:]
