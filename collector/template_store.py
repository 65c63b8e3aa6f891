"""Where templates live beyond one process: an interface, an in-memory store, a key-value adapter
(the cluster registry), a per-worker snapshot file, and the write-behind queue in front of the last two.

A collector that starts (or restarts) looks templates up here the first time it sees data for a
template it has not been sent yet, so it decodes at once instead of waiting for the next refresh.
Writes never block decoding: they go through WriteBehindStore, which coalesces them per key and
hands them to the backend from a thread, in batches.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import Protocol

from celltap.collector.stats import STORE_DROP_REASONS

log = logging.getLogger(__name__)


class TemplateStore(Protocol):
    """Templates keyed by (exporter, observation domain, template id); values are template set bytes."""

    def put(self, exporter: str, domain: int, template_id: int, data: bytes) -> None:
        """Store (or replace) a template."""

    def delete(self, exporter: str, domain: int, template_id: int) -> None:
        """Forget a template (withdrawn or expired)."""

    def get(self, exporter: str, domain: int, template_id: int) -> bytes | None:
        """A stored template, or None."""


class InMemoryTemplateStore:
    """A dict behind a lock: shared by the threads of one process."""

    def __init__(self) -> None:
        self._d: dict[tuple[str, int, int], bytes] = {}
        self._lock = threading.Lock()

    def put(self, exporter: str, domain: int, template_id: int, data: bytes) -> None:
        """Store (or replace) a template."""
        with self._lock:
            self._d[(exporter, domain, template_id)] = bytes(data)

    def delete(self, exporter: str, domain: int, template_id: int) -> None:
        """Forget a template."""
        with self._lock:
            self._d.pop((exporter, domain, template_id), None)

    def get(self, exporter: str, domain: int, template_id: int) -> bytes | None:
        """A stored template, or None."""
        with self._lock:
            return self._d.get((exporter, domain, template_id))

    def __len__(self) -> int:
        return len(self._d)


class KeyValue(Protocol):
    """The part of the registry client the adapter needs."""

    def put(self, key: str, value: bytes) -> None: ...

    def get_prefix(self, prefix: str) -> dict[str, bytes]: ...


def _safe(exporter: str) -> str:
    # Registry key parts may not contain '/'; IPv6 exporters have ':' which is fine.
    return exporter.replace("/", "_")


class KVTemplateStore:
    """Adapter to any object with put(key, bytes) / get_prefix(prefix) (the registry client).

    Keys: /celltap/<cluster>/templates/<exporter>/<odid>/<template-id>.  Reads go through a local
    copy refreshed by one get_prefix per exporter and domain, so a miss costs one registry call.
    A registry that is down never stops decoding: errors are logged and the local copy is kept.
    """

    def __init__(self, kv: KeyValue, cluster: str = "default") -> None:
        self._kv = kv
        self._prefix = f"/celltap/{cluster}/templates/"
        self._local = InMemoryTemplateStore()

    def key(self, exporter: str, domain: int, template_id: int) -> str:
        """The registry key of one template."""
        return f"{self._prefix}{_safe(exporter)}/{domain}/{template_id}"

    def put(self, exporter: str, domain: int, template_id: int, data: bytes) -> None:
        """Store locally and in the registry."""
        self._local.put(exporter, domain, template_id, data)
        try:
            self._kv.put(self.key(exporter, domain, template_id), bytes(data))
        except Exception as exc:  # the registry is optional for decoding: keep going
            log.warning("template store: put %s failed: %s", self.key(exporter, domain, template_id), exc)

    def delete(self, exporter: str, domain: int, template_id: int) -> None:
        """Forget locally and in the registry (if the client can delete)."""
        self._local.delete(exporter, domain, template_id)
        remove = getattr(self._kv, "delete", None)
        if remove is None:
            return
        try:
            remove(self.key(exporter, domain, template_id))
        except Exception as exc:
            log.warning("template store: delete failed: %s", exc)

    def get(self, exporter: str, domain: int, template_id: int) -> bytes | None:
        """Local copy first, then one prefix read of that exporter and domain from the registry."""
        hit = self._local.get(exporter, domain, template_id)
        if hit is not None:
            return hit
        prefix = f"{self._prefix}{_safe(exporter)}/{domain}/"
        try:
            found = self._kv.get_prefix(prefix)
        except Exception as exc:
            log.warning("template store: get_prefix %s failed: %s", prefix, exc)
            return None
        for key, value in found.items():
            tail = key[len(prefix) :]
            if tail.isdigit():
                self._local.put(exporter, domain, int(tail), bytes(value))
        return self._local.get(exporter, domain, template_id)


class WriteBehindStore:
    """Puts and deletes reach the backend from a background thread, coalesced and batched.

    Decoding never waits for a registry or a disk: `put`/`delete` record the latest operation per key
    (a refresh of the same template is one write, however often it arrives) and return.  At most
    `max_pending` keys wait; beyond that the oldest waiting operation is dropped and counted in
    `dropped` (the template is still decoded from memory; only its sharing is lost).  `close` writes
    what is left for at most `close_timeout` seconds, so a stop is prompt whatever the backend does.
    """

    def __init__(
        self,
        backend: TemplateStore,
        interval: float = 0.5,
        max_pending: int = 4096,
        close_timeout: float = 2.0,
    ) -> None:
        self.backend = backend
        self.interval = interval
        self.max_pending = max_pending
        self.close_timeout = close_timeout
        self._pending: dict[tuple[str, int, int], bytes | None] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.written = 0
        self.dropped = 0  # queue_full + stop_timeout
        self.drops: dict[str, int] = dict.fromkeys(STORE_DROP_REASONS, 0)
        self._inflight = 0  # writes of the batch the thread is handing to the backend, not yet done
        self._thread = threading.Thread(target=self._run, name="template-store", daemon=True)
        self._thread.start()

    def _queue(self, key: tuple[str, int, int], data: bytes | None) -> None:
        with self._lock:
            self._pending.pop(key, None)
            self._pending[key] = data
            if len(self._pending) > self.max_pending:
                del self._pending[next(iter(self._pending))]
                self.dropped += 1
                self.drops["queue_full"] += 1

    def put(self, exporter: str, domain: int, template_id: int, data: bytes) -> None:
        """Queue a write."""
        self._queue((exporter, domain, template_id), bytes(data))

    def delete(self, exporter: str, domain: int, template_id: int) -> None:
        """Queue a delete."""
        self._queue((exporter, domain, template_id), None)

    def get(self, exporter: str, domain: int, template_id: int) -> bytes | None:
        """A queued write wins over the backend (a queued delete answers None)."""
        key = (exporter, domain, template_id)
        with self._lock:
            if key in self._pending:
                return self._pending[key]
        return self.backend.get(exporter, domain, template_id)

    def flush(self, deadline: float | None = None) -> int:
        """Write what is queued (until `deadline`, a time.monotonic() value); returns how many written."""
        import time

        with self._lock:
            batch, self._pending = self._pending, {}
        n = 0
        items = list(batch.items())
        for i, ((exporter, domain, tid), data) in enumerate(items):
            self._inflight = len(items) - i
            if deadline is not None and time.monotonic() > deadline:
                self.dropped += len(items) - i
                self.drops["stop_timeout"] += len(items) - i
                break
            try:
                if data is None:
                    self.backend.delete(exporter, domain, tid)
                else:
                    self.backend.put(exporter, domain, tid, data)
                n += 1
            except Exception as exc:  # the backend is for sharing; decoding goes on without it
                log.warning("template store: write failed: %s", exc)
        self._inflight = 0
        self.written += n
        sync = getattr(self.backend, "flush", None)
        if callable(sync):
            sync()
        return n

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            if self._closed:
                break
            self.flush()

    def close(self) -> None:
        """Write what is left (bounded in time) and stop the writer thread."""
        import time

        self._closed = True
        self._wake.set()
        self._thread.join(self.close_timeout)
        if self._thread.is_alive():  # stuck in the backend: what it still holds will not be written
            with self._lock:
                stuck = self._inflight + len(self._pending)
                self._pending.clear()
            self.dropped += stuck
            self.drops["stop_timeout"] += stuck
            log.warning("template store: backend did not answer; %d template writes given up", stuck)
            return
        self.flush(time.monotonic() + self.close_timeout)
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


_REC = struct.Struct("!HIHI")  # exporter length, domain, template id, data length


class SnapshotTemplateStore:
    """Templates of one worker kept in memory and written as one snapshot file per worker.

    `flush` (called by WriteBehindStore after each batch of writes) rewrites `templates-<worker>.bin`
    atomically when something changed: one file per worker, never one per template.  On start the
    worker reads every worker's snapshot; a template found in another worker's snapshot becomes this
    worker's own when it is used (SO_REUSEPORT may move an exporter between workers).  A miss re-reads
    the other snapshots, at most once per `reload_interval`.
    """

    def __init__(self, directory: str | Path, worker: int, reload_interval: float = 1.0) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"templates-{worker}.bin"
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._own: dict[tuple[str, int, int], bytes] = read_snapshot(self.path)
        self._foreign: dict[tuple[str, int, int], bytes] = {}
        self._dirty = False
        self._next_reload = 0.0
        self._reload()

    def _reload(self) -> None:
        import time

        self._next_reload = time.monotonic() + self.reload_interval
        foreign: dict[tuple[str, int, int], bytes] = {}
        for path in sorted(self.dir.glob("templates-*.bin")):
            if path != self.path:
                foreign.update(read_snapshot(path))
        with self._lock:
            self._foreign = foreign

    def put(self, exporter: str, domain: int, template_id: int, data: bytes) -> None:
        """Store (or replace) a template."""
        with self._lock:
            self._own[(exporter, domain, template_id)] = bytes(data)
            self._dirty = True

    def delete(self, exporter: str, domain: int, template_id: int) -> None:
        """Forget a template."""
        key = (exporter, domain, template_id)
        with self._lock:
            if self._own.pop(key, None) is not None:
                self._dirty = True
            self._foreign.pop(key, None)

    def get(self, exporter: str, domain: int, template_id: int) -> bytes | None:
        """Own snapshot, then the other workers' (re-read at most once per reload interval)."""
        import time

        key = (exporter, domain, template_id)
        with self._lock:
            hit = self._own.get(key)
            if hit is not None:
                return hit
        if key not in self._foreign and time.monotonic() >= self._next_reload:
            self._reload()
        with self._lock:
            hit = self._foreign.get(key)
            if hit is not None:
                self._own[key] = hit  # this worker serves that exporter now
                self._dirty = True
            return hit

    def flush(self) -> None:
        """Rewrite this worker's snapshot if it changed (atomically: a reader sees old or new)."""
        with self._lock:
            if not self._dirty:
                return
            items = list(self._own.items())
            self._dirty = False
        out = bytearray()
        for (exporter, domain, tid), data in items:
            e = exporter.encode()
            out += _REC.pack(len(e), domain, tid, len(data)) + e + data
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_bytes(out)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("template snapshot %s not written: %s", self.path, exc)

    def __len__(self) -> int:
        return len(self._own)


def read_snapshot(path: Path) -> dict[tuple[str, int, int], bytes]:
    """The templates of one snapshot file (a damaged tail is ignored)."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    out = {}
    pos = 0
    while len(data) - pos >= _REC.size:
        elen, domain, tid, dlen = _REC.unpack_from(data, pos)
        pos += _REC.size
        if pos + elen + dlen > len(data):
            break
        try:
            exporter = data[pos : pos + elen].decode()
        except UnicodeDecodeError:
            break
        out[(exporter, domain, tid)] = data[pos + elen : pos + elen + dlen]
        pos += elen + dlen
    return out
