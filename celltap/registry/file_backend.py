"""`file:///path` registry: a directory of JSON files shared by the processes of one host.

Layout under the root::

    .lock                 flock(2) target; every mutation holds it, readers never do
    rev                   global revision counter, bumped by every mutation
    kv/<quoted key>.json  {"key", "rev", "lease", "text" | "b64"}
    leases/<id>.json      {"id", "ttl", "expires"}   (expires: wall-clock seconds)

Files are replaced by write-to-temp + rename, so a reader sees the old or the new file, never half
of one. A key whose lease is missing or past `expires` is invisible; whoever notices first removes
the lease and its keys (under the lock, after checking again). Watches poll.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from celltap.registry.base import Lease, Registry, WatchCallback, WatchEvent, WatchHandle
from celltap.registry.errors import LeaseNotFound, RegistryUnavailable
from celltap.registry.health import ConnectionHealth
from celltap.registry.metrics import REGISTRY_ERRORS, REGISTRY_WATCH_RESYNCS
from celltap.registry.snapshot_watch import Snapshot, SnapshotWatch
from celltap.registry.values import Value, encode_value

log = logging.getLogger("celltap.registry")

MAX_NAME = 200  # stay well below NAME_MAX (255) once ".json" and temp prefixes are added


def key_file_name(key: str) -> str:
    """A safe, unique file name for `key` (percent-quoted, or a hash when too long)."""
    name = quote(key, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > MAX_NAME:
        name = "h-" + hashlib.sha256(key.encode()).hexdigest()
    return name + ".json"


@dataclass(frozen=True)
class _Entry:
    """One kv file, validated."""

    path: str
    key: str
    lease: int | None
    rev: int
    value: bytes

    @classmethod
    def parse(cls, path: str, obj: dict[str, Any]) -> _Entry:
        if not isinstance(obj["key"], str):
            raise ValueError("key is not a string")
        lease = obj.get("lease")
        if "text" in obj:
            value = str(obj["text"]).encode()
        else:
            value = base64.b64decode(obj.get("b64", ""), validate=True)
        return cls(path, obj["key"], None if lease is None else int(lease), int(obj.get("rev", 0)), value)


class FileLease(Lease):
    """A lease stored as leases/<id>.json with a wall-clock expiry."""

    def __init__(self, registry: FileRegistry, lease_id: int, ttl: float) -> None:
        super().__init__(lease_id, ttl)
        self._registry = registry

    def refresh(self) -> bool:
        """Push the expiry to now + ttl; False if it already expired."""
        return self._registry._refresh_lease(self)

    def _revoke(self) -> None:
        self._registry._revoke_lease(self.id)


class FileWatch(SnapshotWatch):
    """Polls the directory; skips the full scan while nothing changed and no lease can have expired."""

    def __init__(self, registry: FileRegistry, prefix: str, callback: WatchCallback, initial: bool) -> None:
        super().__init__(prefix, callback, initial)
        self._registry = registry
        self._thread = threading.Thread(target=self._run, name=f"celltap-filewatch-{prefix}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The revision is read before the scan, and writers publish a revision only after its files
        # are written: a scan after reading revision R sees every change up to R, so skipping scans
        # while the revision stays R never hides a change.
        last_rev: str | None = None
        next_expiry = 0.0
        failing = False
        while not self.cancelled:
            try:
                rev = self._registry._read_rev()
                if rev != last_rev or time.time() >= next_expiry:
                    snapshot, next_expiry = self._registry._scan(self.prefix)
                    last_rev = rev
                    if failing:
                        REGISTRY_WATCH_RESYNCS.labels(backend="file").inc()
                    self.apply_snapshot(snapshot)
                self._registry.health.ok()
                failing = False
            except OSError as exc:
                self._registry.health.failed("watch", exc)
                failing = True
            self._cancelled.wait(self._registry.poll_interval)

    def cancel(self) -> None:
        """Stop polling."""
        super().cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class FileRegistry(Registry):
    """Registry in a local directory; safe for several processes on one host."""

    def __init__(self, root: str, poll_interval: float = 0.2) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        self.poll_interval = poll_interval
        self.health = ConnectionHealth(self.url)
        REGISTRY_WATCH_RESYNCS.labels(backend="file")  # at 0 from the start
        self._kv = os.path.join(self.root, "kv")
        self._leases = os.path.join(self.root, "leases")
        self._watches: list[FileWatch] = []
        self._owned_leases: list[FileLease] = []
        self._closed = False
        try:
            os.makedirs(self._kv, exist_ok=True)
            os.makedirs(self._leases, exist_ok=True)
        except OSError as exc:
            raise RegistryUnavailable(f"cannot create registry directory {self.root}: {exc}") from exc

    # --- primitives -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # Someone may have emptied the directory (a wiped registry): start it afresh, but never
            # re-create the root itself, whose absence means an unmounted or lost volume.
            for sub in (self._kv, self._leases):
                if not os.path.isdir(sub):
                    os.mkdir(sub)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{secrets.token_hex(6)}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def _read_json(self, path: str, required: tuple[str, ...]) -> dict[str, Any] | None:
        """A JSON object with the `required` fields, or None (missing, or bad: logged and counted)."""
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        try:
            obj = json.loads(data)
            if not isinstance(obj, dict) or any(name not in obj for name in required):
                raise ValueError(f"needs fields {required}")
        except ValueError as exc:
            REGISTRY_ERRORS.labels(op="bad_file").inc()
            log.warning("registry file %s is malformed (%s); ignoring it", path, exc)
            return None
        return obj

    def _lease_expiry(self, path: str) -> float | None:
        """Expiry (wall clock) of the lease file at `path`, None if absent or unreadable."""
        obj = self._read_json(path, ("id", "expires"))
        try:
            return None if obj is None else float(obj["expires"])
        except (TypeError, ValueError):
            REGISTRY_ERRORS.labels(op="bad_file").inc()
            return None

    def _read_rev(self) -> str:
        """The revision token "<epoch> <n>"; the epoch changes when the directory is wiped."""
        try:
            with open(os.path.join(self.root, "rev"), encoding="ascii") as fh:
                return fh.read().strip()
        except FileNotFoundError:
            if not os.path.isdir(self.root):
                raise
            return ""

    def _next_rev(self) -> tuple[int, str]:
        """The next revision and its token, not yet published (under the lock)."""
        epoch, _, number = self._read_rev().partition(" ")
        rev = int(number or 0) + 1
        return rev, f"{epoch or secrets.token_hex(4)} {rev}"

    def _publish_rev(self, token: str) -> None:
        """Make a mutation visible to watches: only after its files are written (see FileWatch)."""
        self._write_atomic(os.path.join(self.root, "rev"), token.encode())

    def _bump_rev(self) -> int:
        """Publish the next revision (after a mutation that needs no revision in its files)."""
        rev, token = self._next_rev()
        self._publish_rev(token)
        return rev

    def _listdir(self, path: str) -> list[str]:
        try:
            return [name for name in os.listdir(path) if not name.startswith(".")]
        except FileNotFoundError:
            if not os.path.isdir(self.root):
                raise
            return []  # root present but emptied: an empty registry, not an outage

    def _lease_path(self, lease_id: int) -> str:
        return os.path.join(self._leases, f"{lease_id:016x}.json")

    def _lease_expiries(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for name in self._listdir(self._leases):
            expires = self._lease_expiry(os.path.join(self._leases, name))
            if expires is not None:
                try:
                    out[int(name.removesuffix(".json"), 16)] = expires
                except ValueError:
                    REGISTRY_ERRORS.labels(op="bad_file").inc()
        return out

    def _entries(self) -> Iterator[_Entry]:
        for name in self._listdir(self._kv):
            path = os.path.join(self._kv, name)
            obj = self._read_json(path, ("key",))
            if obj is None:
                continue
            try:
                yield _Entry.parse(path, obj)
            except (TypeError, ValueError) as exc:
                REGISTRY_ERRORS.labels(op="bad_file").inc()
                log.warning("registry file %s is malformed (%s); ignoring it", path, exc)

    def _scan(self, prefix: str) -> tuple[Snapshot, float]:
        """Live keys under `prefix` as {key: (rev, value)}, and the earliest expiry among their leases."""
        now = time.time()
        expiries = self._lease_expiries()
        snapshot: Snapshot = {}
        expired: set[int] = set()
        next_expiry = float("inf")
        for entry in self._entries():
            if not entry.key.startswith(prefix):
                continue
            if entry.lease is not None:
                expires = expiries.get(entry.lease, 0.0)
                if expires <= now:
                    expired.add(entry.lease)
                    continue
                next_expiry = min(next_expiry, expires)
            snapshot[entry.key] = (entry.rev, entry.value)
        if expired:
            self._reap(expired)
        return dict(sorted(snapshot.items())), next_expiry

    def _reap(self, lease_ids: set[int]) -> None:
        """Remove expired leases and their keys, re-checking under the lock (a refresh may have won)."""
        with self._locked():
            now = time.time()
            dead = {
                lid
                for lid in lease_ids
                if (expires := self._lease_expiry(self._lease_path(lid))) is None or expires <= now
            }
            if dead:
                self._drop_leases(dead)

    def _drop_leases(self, dead: set[int]) -> None:
        removed = False
        for entry in self._entries():
            if entry.lease in dead:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed = True
        for lid in dead:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lease_path(lid))
        if removed:
            self._bump_rev()

    @contextlib.contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        """Turn OS errors into RegistryUnavailable and keep the health gauge current."""
        try:
            yield
        except OSError as exc:
            self.health.failed(op, exc)
            raise RegistryUnavailable(f"file registry {self.root}: {exc}") from exc
        else:
            self.health.ok()

    # --- Registry interface ---------------------------------------------------------------------

    def put(self, key: str, value: Value, lease: Lease | None = None) -> None:
        """Store a value atomically, attached to `lease` if given."""
        raw = encode_value(value)
        entry: dict[str, Any] = {"key": key, "lease": lease.id if lease is not None else None}
        try:
            entry["text"] = raw.decode()
        except UnicodeDecodeError:
            entry["b64"] = base64.b64encode(raw).decode()
        with self._guard("put"), self._locked():
            if lease is not None:
                expires = self._lease_expiry(self._lease_path(lease.id))
                if expires is None or expires <= time.time():
                    raise LeaseNotFound(f"lease {lease.id:x} expired or revoked")
            entry["rev"], token = self._next_rev()
            self._write_atomic(os.path.join(self._kv, key_file_name(key)), json.dumps(entry).encode())
            self._publish_rev(token)  # after the file: a watch that reads this revision sees the key

    def _live_entry(self, key: str) -> tuple[_Entry, float | None] | None:
        """The stored entry of `key` and its lease expiry (None: no lease), if it is live."""
        path = os.path.join(self._kv, key_file_name(key))
        obj = self._read_json(path, ("key",))
        if obj is None:
            return None
        try:
            entry = _Entry.parse(path, obj)
        except (TypeError, ValueError):
            REGISTRY_ERRORS.labels(op="bad_file").inc()
            return None
        if entry.key != key:
            return None
        if entry.lease is None:
            return entry, None
        expires = self._lease_expiry(self._lease_path(entry.lease))
        if expires is None or expires <= time.time():
            self._reap({entry.lease})
            return None
        return entry, expires

    def get(self, key: str) -> bytes | None:
        """The live value of `key`, or None."""
        with self._guard("get"):
            live = self._live_entry(key)
            return None if live is None else live[0].value

    def lease_ttl(self, key: str) -> float | None:
        """Seconds left on the lease file of `key`, None without key or lease (or once expired)."""
        with self._guard("lease_ttl"):
            live = self._live_entry(key)
            return None if live is None or live[1] is None else live[1] - time.time()

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """All live keys under `prefix`."""
        with self._guard("get_prefix"):
            snapshot, _ = self._scan(prefix)
        return {key: value for key, (_, value) in snapshot.items()}

    def delete(self, key: str) -> bool:
        """Delete `key`; True if a file was removed."""
        with self._guard("delete"), self._locked():
            try:
                os.unlink(os.path.join(self._kv, key_file_name(key)))
            except FileNotFoundError:
                return False
            self._bump_rev()
            return True

    def lease(self, ttl: float) -> FileLease:
        """Grant a lease that expires `ttl` seconds from now unless refreshed."""
        lease = FileLease(self, secrets.randbits(63) or 1, float(ttl))
        with self._guard("lease"), self._locked():
            self._write_lease(lease)
        # Forget leases that ended so a long-lived process re-registering now and then does not grow.
        self._owned_leases = [old for old in self._owned_leases if not old.lost.is_set()]
        self._owned_leases.append(lease)
        return lease

    def _write_lease(self, lease: FileLease) -> None:
        body = {"id": lease.id, "ttl": lease.ttl, "expires": time.time() + lease.ttl, "pid": os.getpid()}
        self._write_atomic(self._lease_path(lease.id), json.dumps(body).encode())

    def _refresh_lease(self, lease: FileLease) -> bool:
        with self._guard("keepalive"), self._locked():
            expires = self._lease_expiry(self._lease_path(lease.id))
            if expires is None:
                return False
            if expires <= time.time():
                self._drop_leases({lease.id})
                return False
            self._write_lease(lease)
            return True

    def _revoke_lease(self, lease_id: int) -> None:
        with self._guard("revoke"), self._locked():
            self._drop_leases({lease_id})

    def watch_prefix(self, prefix: str, callback: WatchCallback, *, initial: bool = False) -> WatchHandle:
        """Poll `prefix` every poll_interval seconds and deliver the differences."""
        watch = FileWatch(self, prefix, callback, initial)
        self._watches.append(watch)
        return watch

    def close(self) -> None:
        """Stop watches and keep-alive threads (leases are left to expire)."""
        if self._closed:
            return
        self._closed = True
        for watch in self._watches:
            watch.cancel()
        for lease in self._owned_leases:
            lease.stop_keepalive()


__all__ = ["FileLease", "FileRegistry", "WatchEvent", "key_file_name"]
