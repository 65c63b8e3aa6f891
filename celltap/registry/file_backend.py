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
from typing import Any
from urllib.parse import quote

from celltap.registry.base import Lease, Registry, WatchCallback, WatchEvent, WatchHandle
from celltap.registry.errors import LeaseNotFound, RegistryUnavailable
from celltap.registry.health import ConnectionHealth
from celltap.registry.metrics import REGISTRY_WATCH_RESYNCS
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
        last_rev = -1
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
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-{secrets.token_hex(6)}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    def _read_json(self, path: str) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        try:
            obj = json.loads(data)
        except ValueError:
            log.warning("registry file %s is not JSON; ignoring it", path)
            return None
        return obj if isinstance(obj, dict) else None

    def _read_rev(self) -> int:
        try:
            with open(os.path.join(self.root, "rev"), "rb") as fh:
                return int(fh.read() or b"0")
        except FileNotFoundError:
            if not os.path.isdir(self._kv):
                raise
            return 0

    def _bump_rev(self) -> int:
        rev = self._read_rev() + 1
        self._write_atomic(os.path.join(self.root, "rev"), str(rev).encode())
        return rev

    def _lease_path(self, lease_id: int) -> str:
        return os.path.join(self._leases, f"{lease_id:016x}.json")

    def _lease_expiries(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for name in os.listdir(self._leases):
            if name.startswith("."):
                continue
            obj = self._read_json(os.path.join(self._leases, name))
            if obj is not None:
                out[int(obj["id"])] = float(obj["expires"])
        return out

    def _entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for name in os.listdir(self._kv):
            if name.startswith("."):
                continue
            path = os.path.join(self._kv, name)
            obj = self._read_json(path)
            if obj is not None:
                yield path, obj

    @staticmethod
    def _value_of(entry: dict[str, Any]) -> bytes:
        if "text" in entry:
            return str(entry["text"]).encode()
        return base64.b64decode(entry.get("b64", ""))

    def _scan(self, prefix: str) -> tuple[Snapshot, float]:
        """Live keys under `prefix` as {key: (rev, value)}, and the earliest expiry among their leases."""
        now = time.time()
        expiries = self._lease_expiries()
        snapshot: Snapshot = {}
        expired: set[int] = set()
        next_expiry = float("inf")
        for _, entry in self._entries():
            key = entry["key"]
            if not key.startswith(prefix):
                continue
            lease = entry.get("lease")
            if lease is not None:
                expires = expiries.get(int(lease), 0.0)
                if expires <= now:
                    expired.add(int(lease))
                    continue
                next_expiry = min(next_expiry, expires)
            snapshot[key] = (int(entry.get("rev", 0)), self._value_of(entry))
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
                if (obj := self._read_json(self._lease_path(lid))) is None or float(obj["expires"]) <= now
            }
            if dead:
                self._drop_leases(dead)

    def _drop_leases(self, dead: set[int]) -> None:
        removed = False
        for path, entry in self._entries():
            if entry.get("lease") is not None and int(entry["lease"]) in dead:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
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
                obj = self._read_json(self._lease_path(lease.id))
                if obj is None or float(obj["expires"]) <= time.time():
                    raise LeaseNotFound(f"lease {lease.id:x} expired or revoked")
            entry["rev"] = self._bump_rev()
            self._write_atomic(os.path.join(self._kv, key_file_name(key)), json.dumps(entry).encode())

    def get(self, key: str) -> bytes | None:
        """The live value of `key`, or None."""
        with self._guard("get"):
            entry = self._read_json(os.path.join(self._kv, key_file_name(key)))
            if entry is None or entry.get("key") != key:
                return None
            lease = entry.get("lease")
            if lease is not None:
                obj = self._read_json(self._lease_path(int(lease)))
                if obj is None or float(obj["expires"]) <= time.time():
                    self._reap({int(lease)})
                    return None
            return self._value_of(entry)

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
        self._owned_leases.append(lease)
        return lease

    def _write_lease(self, lease: FileLease) -> None:
        body = {"id": lease.id, "ttl": lease.ttl, "expires": time.time() + lease.ttl, "pid": os.getpid()}
        self._write_atomic(self._lease_path(lease.id), json.dumps(body).encode())

    def _refresh_lease(self, lease: FileLease) -> bool:
        with self._guard("keepalive"), self._locked():
            obj = self._read_json(self._lease_path(lease.id))
            if obj is None:
                return False
            if float(obj["expires"]) <= time.time():
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
