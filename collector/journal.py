"""A collector's routing journal: every message it routes, kept on disk until all its owners have it.

A record batch fans out to several analysis nodes: one message per owner of its partition keys,
plus replicas.  A collector that dies after sending some of those messages and before the others
would leave one app's view ahead of another's.  So the router appends each message to the journal
before it sends it, and a collector that starts over the same journal re-delivers what it finds
there under the message's original identity (collector run, origin, sequence): nodes that applied
it already acknowledge a duplicate, the others apply it.  Either every owner applies a batch, or
the miss is repaired by re-delivery.

The messages of one routed batch are written together, as one *group* record, with the exporters'
sequence numbers that the batch brings up to date: a process killed at any instant leaves either
the whole group (every owner's message, and sequence state that covers exactly them) or none of it
(a torn record is ignored, and the exporters' saved sequence numbers still point before the batch,
so its records fall inside the gap that the restarted collector counts as lost).  Writing the
messages one by one would let a kill leave some owners' messages journaled and the others not.

On disk: segment files `NNNNNNNN.journal`, each a sequence of records `<u32 length><u8 kind>` +
payload: kind 1 a `JournalEntry` protobuf (proto/celltap.proto); kind 2 a checkpoint, the merged
sequence state (JSON `{"exporter|domain": [next_seq, unit, seen]}`) as of everything journaled
before it, written at the start of every new segment so that it survives the deletion of older
ones; kind 3 a group, `<u32 n>` then n times `<u32 length>` + a `JournalEntry`, then the JSON of the
sequence entries it updates (possibly empty).  Writes go to the page cache in one `os.write` per
record: a killed process loses nothing written; a crashed machine loses what was not written back
unless `fsync` is set.  A segment is deleted once it is no longer the one
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

from celltap.proto import celltap_pb2 as pb

log = logging.getLogger("celltap.collector.journal")

HEADER = struct.Struct("<IB")
COUNT = struct.Struct("<I")
ENTRY, CHECKPOINT, GROUP = 1, 2, 3
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
        self.sequences: dict[str, list] = {}  # merged sequence state ("exporter|domain" -> entry)
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

    def recover(self) -> tuple[list[tuple[int, pb.JournalEntry]], dict[str, list]]:
        """(segment, entry) for every entry left by an earlier run, and the sequence state it recorded.

        Each returned entry holds one reference on its segment until the router releases it.
        """
        entries: list[tuple[int, pb.JournalEntry]] = []
        for seg in self._segments():
            if seg >= self.current:
                continue
            data = self._path(seg).read_bytes()
            self.sizes[seg] = len(data)
            self.refs.setdefault(seg, 0)
            for kind, payload in self._records(data, seg):
                try:
                    found, delta = self._decode(kind, payload)
                except Exception:  # protobuf's DecodeError, bad JSON, short group: a damaged record
                    self.torn += 1
                    continue
                if kind == CHECKPOINT:
                    self.sequences = delta
                else:
                    self.sequences.update(delta)
                for entry in found:
                    entries.append((seg, entry))
                    self.refs[seg] += 1
        if self.sequences:
            self._checkpoint = self._state_bytes()
        return entries, dict(self.sequences)

    @staticmethod
    def _decode(kind: int, payload: bytes) -> tuple[list[pb.JournalEntry], dict[str, list]]:
        """The entries and sequence entries of one record (ValueError and friends when damaged)."""
        if kind == CHECKPOINT:
            state = json.loads(payload)
            if not isinstance(state, dict):
                raise ValueError("checkpoint is not an object")
            return [], state
        if kind == ENTRY:
            entry = pb.JournalEntry()
            entry.ParseFromString(payload)
            return [entry], {}
        if kind != GROUP:
            return [], {}  # a kind this version does not know: skipped
        (n,) = COUNT.unpack_from(payload, 0)
        off = COUNT.size
        found = []
        for _ in range(n):
            (length,) = COUNT.unpack_from(payload, off)
            off += COUNT.size
            if off + length > len(payload):
                raise ValueError("group entry runs past the record")
            entry = pb.JournalEntry()
            entry.ParseFromString(payload[off : off + length])
            found.append(entry)
            off += length
        delta = json.loads(payload[off:]) if off < len(payload) else {}
        if not isinstance(delta, dict):
            raise ValueError("group sequence state is not an object")
        return found, delta

    def _state_bytes(self) -> bytes:
        return json.dumps(self.sequences, separators=(",", ":")).encode()

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
        self._roll_if_due()
        record = HEADER.pack(len(payload), kind) + payload
        os.write(self._fd, record)
        if self.fsync:
            os.fsync(self._fd)
        self.sizes[self.current] += len(record)
        return self.current

    def _roll_if_due(self) -> None:
        if self._fd < 0 or self.sizes.get(self.current, 0) >= self.segment_bytes:
            self._roll()

    def _roll(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self.current += 1
        self._fd = os.open(self._path(self.current), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.sizes[self.current] = 0
        self.refs.setdefault(self.current, 0)
        if self.sequences:
            if self._checkpoint is None:
                self._checkpoint = self._state_bytes()
            self._write(CHECKPOINT, self._checkpoint)

    def append(self, entry: pb.JournalEntry) -> int:
        """Write one routed message; returns its segment (the caller `retain`s it while it depends on it)."""
        payload = entry.SerializeToString()
        with self._lock:
            return self._write(ENTRY, payload)

    def append_group(self, entries: list[pb.JournalEntry], sequences: dict[str, list] | None = None) -> int:
        """Write the messages of one routed batch and the sequence entries it brings up to date, as one
        record (all of it survives a kill, or none); returns its segment."""
        parts = [COUNT.pack(len(entries))]
        for entry in entries:
            raw = entry.SerializeToString()
            parts += [COUNT.pack(len(raw)), raw]
        if sequences:
            parts.append(json.dumps(sequences, separators=(",", ":")).encode())
        payload = b"".join(parts)
        with self._lock:
            # A new segment starts with the state as of before this group, never with the group's own
            # entries: those must come back only with the group's messages.
            self._roll_if_due()
            if sequences:
                self.sequences.update(sequences)
                self._checkpoint = None  # rebuilt at the next roll, which writes it first
            return self._write(GROUP, payload)

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
