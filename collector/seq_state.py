"""Sequence numbers that outlive the collector process, so records lost while it was down are counted.

Theory of operation.  IPFIX and NetFlow carry a per-domain sequence number; a collector that restarts
with no memory of it cannot tell what the exporter sent while it was down (the first message after a
restart just sets the baseline).  Each UDP worker therefore keeps the next expected sequence number of
every (exporter, observation domain) it serves in a small file of fixed-size slots, mapped into memory
(MAP_SHARED): saving a domain is a 40-byte store into the page cache, no system call, and what was
stored survives the process being killed (not a crash of the machine).  The worker saves after the
records of a batch were handed to its sink, so a record is either delivered or, after a restart,
inside a counted gap.

A worker writes only its own file (`seq-<worker>.bin`); on start it reads every worker's file and keeps
the newest entry per key (SO_REUSEPORT may send an exporter to another worker after a restart), drops
entries older than the domain expiry, and writes what it took into a fresh file of its own.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import struct
import threading
from pathlib import Path

log = logging.getLogger("celltap.collector")

MAGIC = b"CTSEQ001"
HEADER = struct.Struct("!8sII")  # magic, slots, slot size
SLOT = struct.Struct("!BBBxIIxxxxd16s")  # valid, unit, address length, domain, next seq, time, address
UNITS = ("records", "packets")

Entry = tuple[int, str, float]  # next sequence number, unit, time last seen


def _pack_addr(exporter: str) -> bytes | None:
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            return socket.inet_pton(fam, exporter)
        except OSError:
            continue
    return None


def _unpack_addr(raw: bytes, n: int) -> str | None:
    if n == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if n == 16:
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return None


def read_file(path: Path) -> dict[tuple[str, int], Entry]:
    """The valid entries of one state file (an unreadable or foreign file yields nothing)."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if len(data) < HEADER.size:
        return {}
    magic, slots, size = HEADER.unpack_from(data, 0)
    if magic != MAGIC or size != SLOT.size or len(data) < HEADER.size + slots * size:
        return {}
    out: dict[tuple[str, int], Entry] = {}
    for i in range(slots):
        valid, unit, alen, domain, nxt, seen, raw = SLOT.unpack_from(data, HEADER.size + i * size)
        exporter = _unpack_addr(raw, alen) if valid == 1 and unit < len(UNITS) else None
        if exporter is not None:
            out[(exporter, domain)] = (nxt, UNITS[unit], seen)
    return out


class SequenceState:
    """One worker's saved sequence numbers (see the module docstring)."""

    def __init__(self, directory: str | Path, worker: int, capacity: int = 16384, max_age: float = 3600.0):
        self.dir = Path(directory)
        self.worker = worker
        self.capacity = max(1, capacity)
        self.max_age = max_age
        self.path = self.dir / f"seq-{worker}.bin"
        self._slots: dict[tuple[str, int], int] = {}
        self._free: list[int] = []
        self._times: list[float] = []
        self._mm: mmap.mmap | None = None
        self._loaded: dict[tuple[str, int], Entry] = {}
        self._lock = threading.Lock()  # the cluster router's thread may save too (route_with_sequence)

    def load(self, now: float | None = None) -> dict[tuple[str, int], Entry]:
        """Read every worker's file, keep the newest entry per key, and start this worker's own file."""
        import time

        now = time.time() if now is None else now
        merged: dict[tuple[str, int], Entry] = {}
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.dir.glob("seq-*.bin")):
            for key, entry in read_file(path).items():
                old = merged.get(key)
                if now - entry[2] <= self.max_age and (old is None or entry[2] > old[2]):
                    merged[key] = entry
        newest = sorted(merged.items(), key=lambda kv: kv[1][2], reverse=True)[: self.capacity]
        self._open(newest)
        self._loaded = dict(newest)
        return dict(self._loaded)

    def loaded(self) -> dict[tuple[str, int], Entry]:
        """What load() found (empty before it)."""
        return dict(self._loaded)

    def _open(self, entries: list[tuple[tuple[str, int], Entry]]) -> None:
        size = HEADER.size + self.capacity * SLOT.size
        buf = bytearray(size)
        HEADER.pack_into(buf, 0, MAGIC, self.capacity, SLOT.size)
        self._times = [0.0] * self.capacity
        for i, ((exporter, domain), (nxt, unit, seen)) in enumerate(entries):
            raw = _pack_addr(exporter)
            if raw is None:
                continue
            SLOT.pack_into(
                buf, HEADER.size + i * SLOT.size, 1, UNITS.index(unit), len(raw), domain, nxt, seen, raw
            )
            self._slots[(exporter, domain)] = i
            self._times[i] = seen
        self._free = list(range(self.capacity - 1, len(entries) - 1, -1))
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf)
        os.replace(tmp, self.path)
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def save(self, items: list[tuple[str, int, int, str, float]]) -> None:
        """Store (exporter, domain, next sequence number, unit, time) entries in their slots."""
        with self._lock:
            self._save(items)

    def _save(self, items: list[tuple[str, int, int, str, float]]) -> None:
        mm = self._mm
        if mm is None:
            return
        for exporter, domain, nxt, unit, seen in items:
            key = (exporter, domain)
            i = self._slots.get(key)
            if i is None:
                raw = _pack_addr(exporter)
                if raw is None:
                    continue
                i = self._allocate()
                self._slots[key] = i
                SLOT.pack_into(
                    mm, HEADER.size + i * SLOT.size, 1, UNITS.index(unit), len(raw), domain, nxt, seen, raw
                )
            else:
                # Only the moving parts: the next sequence number and the time (the key stays put).
                off = HEADER.size + i * SLOT.size
                struct.pack_into("!B", mm, off + 1, UNITS.index(unit))
                struct.pack_into("!I", mm, off + 8, nxt)
                struct.pack_into("!d", mm, off + 16, seen)
            self._times[i] = seen

    def _allocate(self) -> int:
        if self._free:
            return self._free.pop()
        # Full: reuse the slot of the entry seen longest ago (its domain is the likeliest to be idle).
        i = min(range(self.capacity), key=self._times.__getitem__)
        for key, slot in self._slots.items():
            if slot == i:
                del self._slots[key]
                break
        return i

    def forget(self, exporter: str, domain: int) -> None:
        """Drop a domain's entry (it expired)."""
        with self._lock:
            i = self._slots.pop((exporter, domain), None)
            if i is None or self._mm is None:
                return
            self._mm[HEADER.size + i * SLOT.size] = 0
            self._times[i] = 0.0
            self._free.append(i)

    def close(self) -> None:
        """Flush and unmap the file."""
        with self._lock:
            if self._mm is not None:
                try:
                    self._mm.flush()
                finally:
                    self._mm.close()
                    self._mm = None


__all__ = ["SequenceState", "read_file"]
