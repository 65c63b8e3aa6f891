"""A collector's routing journal: every message it routes, kept on disk until all its owners have it.

A record batch fans out to several analysis nodes: one message per owner of its partition keys,
plus replicas.  A collector that dies after sending some of those messages and before the others
would leave one app's view ahead of another's.  So the router appends each message to the journal
before it sends it, and a collector that starts over the same journal re-delivers what it finds
there under the message's original identity (collector run, origin, sequence): nodes that applied
it already acknowledge a duplicate, the others apply it.  Either every owner applies a batch, or
the miss is repaired by re-delivery.

On disk: segment files `NNNNNNNN.journal`, each a sequence of records `<u32 length><u8 kind>` +
payload: kind 1 a `JournalEntry` protobuf (proto/celltap.proto), kind 2 a checkpoint (JSON, the
caller's state as of everything journaled before it; the latest one is also written at the start
of every new segment so it survives the deletion of older ones).  Writes go to the page cache in
one `os.write` per record: a killed process loses nothing written; a crashed machine loses what
was not written back unless `fsync` is set.  A segment is deleted once it is no longer the one
being written and every message in it has been acknowledged by all its owners (reference counts
kept by the router).  A torn record at the end of a segment (a crash mid-write) ends that segment's
replay and is counted.

No sockets here; the router (collector/cluster.py) decides what to journal, retain and release.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from pathlib import Path
from typing import Any

from celltap.proto import celltap_pb2 as pb

log = logging.getLogger("celltap.collector.journal")

HEADER = struct.Struct("<IB")
ENTRY, CHECKPOINT = 1, 2
MAX_RECORD = 1 << 30  # a length beyond this is a torn or foreign file, not a record
SUFFIX = ".journal"


class Journal:
    """Append-only segments of routed messages with per-segment reference counts."""

    def __init__(self, directory: str | Path, segment_bytes: int = 4 << 20, fsync: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.torn = 0  # records cut short at a segment's end, found at recovery
        self._lock = threading.Lock()
        self._checkpoint: bytes | None = None
        existing = self._segments()
        self.current = (existing[-1] + 1) if existing else 1
        self._fd = -1

    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.glob(f"*{SUFFIX}"):
            try:
                out.append(int(p.name[: -len(SUFFIX)]))
            except ValueError:
                continue
        return sorted(out)

    def _path(self, segment: int) -> Path:
        return self.dir / f"{segment:08d}{SUFFIX}"

    # ---- recovery ------------------------------------------------------------------------

    def recover(self) -> tuple[list[tuple[int, pb.JournalEntry]], Any]:
        """(segment, entry) for every entry left by an earlier run, and the latest checkpoint (or None).

        Each returned entry holds one reference on its segment until the router releases it.
        """
        entries: list[tuple[int, pb.JournalEntry]] = []
        checkpoint = None
        for seg in self._segments():
            if seg >= self.current:
                continue
            data = self._path(seg).read_bytes()
            self.sizes[seg] = len(data)
            self.refs.setdefault(seg, 0)
            for kind, payload in self._records(data, seg):
                if kind == CHECKPOINT:
                    checkpoint = payload
                elif kind == ENTRY:
                    entry = pb.JournalEntry()
                    try:
                        entry.ParseFromString(payload)
                    except Exception:  # protobuf's DecodeError and friends: a damaged entry
                        self.torn += 1
                        continue
                    entries.append((seg, entry))
                    self.refs[seg] += 1
        if checkpoint is not None:
            self._checkpoint = checkpoint
            checkpoint = json.loads(checkpoint)
        return entries, checkpoint

    def _records(self, data: bytes, seg: int):
        off = 0
        while off < len(data):
            if off + HEADER.size > len(data):
                self._torn(seg, off)
                return
            length, kind = HEADER.unpack_from(data, off)
            end = off + HEADER.size + length
            if length > MAX_RECORD or end > len(data):
                self._torn(seg, off)
                return
            yield kind, data[off + HEADER.size : end]
            off = end

    def _torn(self, seg: int, off: int) -> None:
        self.torn += 1
        log.warning("journal segment %s ends in a torn record at byte %d; the rest is ignored",
                    self._path(seg), off)  # fmt: skip

    # ---- writing -------------------------------------------------------------------------

    def _write(self, kind: int, payload: bytes) -> int:
        if self._fd < 0 or self.sizes.get(self.current, 0) >= self.segment_bytes:
            self._roll()
        record = HEADER.pack(len(payload), kind) + payload
        os.write(self._fd, record)
        if self.fsync:
            os.fsync(self._fd)
        self.sizes[self.current] += len(record)
        return self.current

    def _roll(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self.current += 1
        self._fd = os.open(self._path(self.current), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.sizes[self.current] = 0
        self.refs.setdefault(self.current, 0)
        if self._checkpoint is not None:
            self._write(CHECKPOINT, self._checkpoint)

    def append(self, entry: pb.JournalEntry) -> int:
        """Write one routed message; returns its segment (the caller `retain`s it while it depends on it)."""
        payload = entry.SerializeToString()
        with self._lock:
            return self._write(ENTRY, payload)

    def checkpoint(self, state: Any) -> None:
        """Record the caller's state as of everything appended so far (JSON-serialisable)."""
        payload = json.dumps(state, separators=(",", ":")).encode()
        with self._lock:
            self._checkpoint = payload
            self._write(CHECKPOINT, payload)

    def retain(self, segment: int) -> None:
        """One more message depends on `segment`."""
        with self._lock:
            self.refs[segment] = self.refs.get(segment, 0) + 1

    def release(self, segment: int) -> None:
        """One message of `segment` is acknowledged by all its owners (deletion waits for `collect`)."""
        with self._lock:
            self.refs[segment] -= 1

    def collect(self) -> int:
        """Delete every finished segment (no references, not the one being written); returns how many."""
        with self._lock:
            done = [s for s, n in self.refs.items() if n <= 0 and s != self.current]
            for seg in done:
                try:
                    self._path(seg).unlink()
                except FileNotFoundError:
                    pass
                del self.refs[seg]
                self.sizes.pop(seg, None)
            return len(done)

    def size(self) -> int:
        """Bytes in segments still on disk."""
        with self._lock:
            return sum(self.sizes.values())

    def discard(self) -> None:
        """Delete every segment (the router saw everything acknowledged)."""
        with self._lock:
            for seg in self._segments():
                self._path(seg).unlink(missing_ok=True)
            self.refs.clear()
            self.sizes.clear()

    def close(self) -> None:
        """Close the segment being written (kept on disk: what it holds may still be unacknowledged)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
