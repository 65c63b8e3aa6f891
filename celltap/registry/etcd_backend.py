"""`etcd://` registry over etcd-sdk-python (`pyetcd`), kept entirely behind the Registry interface.

Endpoints are tried in order: a call that cannot reach the current endpoint drops its client and
moves to the next one, so a multi-member cluster survives the loss of any member. A watch reads its
prefix, then watches from the next revision; when its stream breaks it re-reads the prefix and
delivers only the difference, so neither a restart nor a compaction loses or repeats a change.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import pyetcd
from pyetcd import exceptions as etcd_exc
from pyetcd.events import PutEvent
from pyetcd.watch import WatchResponse

from celltap.registry.base import Lease, Registry, WatchCallback, WatchEvent, WatchHandle
from celltap.registry.errors import LeaseNotFound, RegistryError, RegistryUnavailable
from celltap.registry.health import ConnectionHealth
from celltap.registry.metrics import REGISTRY_WATCH_RESYNCS
from celltap.registry.snapshot_watch import Snapshot, SnapshotWatch
from celltap.registry.tls import TLSConfig
from celltap.registry.values import Value, encode_value

log = logging.getLogger("celltap.registry")

T = TypeVar("T")

_UNREACHABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
_UNREACHABLE_EXC = (
    etcd_exc.ConnectionFailedError,
    etcd_exc.ConnectionTimeoutError,
    etcd_exc.NoServerAvailableError,
    etcd_exc.InternalServerError,
    etcd_exc.WatchTimedOut,
)
# Fast reconnects: gRPC's default backoff grows to two minutes, far longer than a lease.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class EtcdLease(Lease):
    """An etcd lease; its keys are deleted by etcd when it expires."""

    def __init__(self, registry: EtcdRegistry, lease_id: int, ttl: float) -> None:
        super().__init__(lease_id, ttl)
        self._registry = registry

    def refresh(self) -> bool:
        """One keep-alive round trip; False when etcd reports the lease gone (TTL 0)."""
        responses = self._registry._call("keepalive", lambda c: list(c.refresh_lease(self.id)))
        if not responses:
            raise RegistryUnavailable("etcd keep-alive stream closed without an answer")
        return int(responses[0].TTL) > 0

    def _revoke(self) -> None:
        try:
            self._registry._call("revoke", lambda c: c.revoke_lease(self.id))
        except LeaseNotFound:
            pass


class EtcdWatch(SnapshotWatch):
    """A prefix watch that re-reads the prefix whenever its stream had to be re-created."""

    def __init__(self, registry: EtcdRegistry, prefix: str, callback: WatchCallback, initial: bool) -> None:
        super().__init__(prefix, callback, initial)
        self._registry = registry
        self._wake = threading.Event()
        self._needs_sync = True
        self._generation = 0
        self._floor_rev = 0
        self._current: tuple[Any, int] | None = None
        self._thread = threading.Thread(target=self._run, name=f"celltap-etcdwatch-{prefix}", daemon=True)
        self._thread.start()

    def mark_broken(self) -> None:
        """Ask for a re-read of the prefix and a new stream."""
        self._needs_sync = True
        self._wake.set()

    def _run(self) -> None:
        backoff = 0.1
        first = True
        while not self.cancelled:
            self._wake.wait()
            self._wake.clear()
            if self.cancelled:
                break
            if not self._needs_sync:
                continue
            self._needs_sync = False
            try:
                self._resync()
                if not first:
                    REGISTRY_WATCH_RESYNCS.labels(backend="etcd").inc()
                first = False
                backoff = 0.1
            except RegistryError as exc:
                log.debug("etcd watch %s resync failed: %s", self.prefix, exc)
                self._needs_sync = True
                self._cancelled.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                self._wake.set()

    def _resync(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._stop_stream()
        snapshot, revision = self._registry._read_prefix(self.prefix)
        with self._lock:
            self._floor_rev = revision
            self.apply_snapshot(snapshot)

        def on_response(response: Any) -> None:
            with self._lock:
                if generation != self._generation or self.cancelled:
                    return
                if not isinstance(response, WatchResponse):
                    self.mark_broken()  # stream ended (error or server closed it)
                    return
                for ev in response.events:
                    if ev.mod_revision <= self._floor_rev:
                        continue
                    key = ev.key.decode()
                    if isinstance(ev, PutEvent):
                        self.apply_event(WatchEvent("put", key, bytes(ev.value)), ev.mod_revision)
                    else:
                        self.apply_event(WatchEvent("delete", key, None), ev.mod_revision)

        self._current = self._registry._call(
            "watch",
            lambda c: (c, c.add_watch_prefix_callback(self.prefix, on_response, start_revision=revision + 1)),
        )

    def _stop_stream(self) -> None:
        current, self._current = self._current, None
        if current is not None:
            client, watch_id = current
            try:
                client.cancel_watch(watch_id)
            except Exception as exc:  # the stream is usually dead already; nothing left to cancel
                log.debug("cancel of etcd watch %s failed: %s", watch_id, exc)

    def cancel(self) -> None:
        """Stop the watch and its stream."""
        super().cancel()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._stop_stream()


class EtcdRegistry(Registry):
    """Registry on an etcd v3 cluster, optionally over TLS/mTLS and with user/password auth."""

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        *,
        tls: TLSConfig | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("etcd registry needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.tls = tls
        self.user = user
        self.password = password
        self.timeout = timeout
        scheme = "etcds" if tls is not None else "etcd"
        self.url = f"{scheme}://" + ",".join(f"{h}:{p}" for h, p in self.endpoints)
        self.health = ConnectionHealth(self.url)
        REGISTRY_WATCH_RESYNCS.labels(backend="etcd")  # at 0 from the start
        self._lock = threading.RLock()
        self._client: Any = None
        self._index = 0
        self._watches: list[EtcdWatch] = []
        self._owned_leases: list[EtcdLease] = []
        self._closed = False
        self.health.on_reconnect(self._resync_watches)

    # --- connection handling --------------------------------------------------------------------

    def _connect(self) -> Any:
        host, port = self.endpoints[self._index]
        options = list(_CHANNEL_OPTIONS)
        creds = None
        if self.tls is not None:
            creds = self.tls.channel_credentials()
            options += self.tls.channel_options()
        endpoint = pyetcd.Endpoint(
            host, port, secure=self.tls is not None, creds=creds, time_retry=0, opts=options
        )
        # The constructor authenticates right away when user/password are set.
        client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[endpoint], timeout=self.timeout, user=self.user, password=self.password
        )
        if self.tls is None:
            # gRPC refuses call credentials on a plaintext channel; the token also travels as
            # plain metadata, which etcd accepts, so drop the credentials object.
            client.call_credentials = None
        return client

    def _drop(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
                self._index = (self._index + 1) % len(self.endpoints)
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                log.debug("closing etcd client failed: %s", exc)

    def _call(self, op: str, fn: Callable[[Any], T]) -> T:
        """Run `fn(client)` on the first endpoint that answers; map errors to registry errors."""
        last: BaseException | None = None
        for _ in range(len(self.endpoints) + (1 if self.user else 0)):
            client = None
            try:
                with self._lock:
                    if self._closed:
                        raise RegistryError("registry is closed")
                    if self._client is None:
                        self._client = self._connect()
                    client = self._client
                result = fn(client)
            except _UNREACHABLE_EXC as exc:
                last = exc
                self._drop(client)
                continue
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code in _UNREACHABLE_CODES:
                    last = exc
                    self._drop(client)
                    continue
                if code == grpc.StatusCode.UNAUTHENTICATED and client is not None:
                    last = exc  # auth token expired or server restarted: log in again
                    self._drop(client)
                    continue
                if code == grpc.StatusCode.NOT_FOUND:
                    self.health.ok()
                    raise LeaseNotFound(exc.details() if hasattr(exc, "details") else str(exc)) from exc
                raise RegistryError(f"etcd {op} failed: {code}: {exc}") from exc
            self.health.ok()
            return result
        assert last is not None
        self.health.failed(op, last)
        raise RegistryUnavailable(f"etcd {op}: no endpoint of {self.url} answered ({last})") from last

    def _resync_watches(self) -> None:
        for watch in list(self._watches):
            watch.mark_broken()

    def _read_prefix(self, prefix: str) -> tuple[Snapshot, int]:
        response = self._call("get_prefix", lambda c: c.get_prefix_response(prefix))
        snapshot = {kv.key.decode(): (int(kv.mod_revision), bytes(kv.value)) for kv in response.kvs}
        return dict(sorted(snapshot.items())), int(response.header.revision)

    # --- Registry interface ---------------------------------------------------------------------

    def put(self, key: str, value: Value, lease: Lease | None = None) -> None:
        """Store a value, attached to `lease` if given."""
        raw = encode_value(value)
        lease_id = lease.id if lease is not None else None
        self._call("put", lambda c: c.put(key, raw, lease=lease_id))

    def get(self, key: str) -> bytes | None:
        """The value of `key`, or None."""
        value, _ = self._call("get", lambda c: c.get(key))
        return None if value is None else bytes(value)

    def lease_ttl(self, key: str) -> float | None:
        """Seconds left on the lease of `key` (etcd's LeaseTimeToLive), None without key or lease."""

        def ask(c: Any) -> float | None:
            value, meta = c.get(key)
            if value is None or meta is None or not meta.lease_id:
                return None
            ttl = c.get_lease_info(meta.lease_id).TTL
            return None if ttl < 0 else float(ttl)

        return self._call("lease_ttl", ask)

    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """All keys under `prefix`, sorted."""
        snapshot, _ = self._read_prefix(prefix)
        return {key: value for key, (_, value) in snapshot.items()}

    def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        return bool(self._call("delete", lambda c: c.delete(key)))

    def lease(self, ttl: float) -> EtcdLease:
        """Grant a lease; etcd counts whole seconds and may raise the TTL to its minimum."""
        granted = self._call("lease", lambda c: c.lease(max(1, math.ceil(ttl))))
        lease = EtcdLease(self, int(granted.id), float(granted.ttl))
        # Forget leases that ended so a long-lived process re-registering now and then does not grow.
        self._owned_leases = [old for old in self._owned_leases if not old.lost.is_set()]
        self._owned_leases.append(lease)
        return lease

    def watch_prefix(self, prefix: str, callback: WatchCallback, *, initial: bool = False) -> WatchHandle:
        """Watch `prefix`; the stream is re-created (with a re-read) after every outage."""
        watch = EtcdWatch(self, prefix, callback, initial)
        self._watches.append(watch)
        watch.mark_broken()
        return watch

    def close(self) -> None:
        """Cancel watches and keep-alives and close the gRPC channel."""
        if self._closed:
            return
        for watch in self._watches:
            watch.cancel()
        for lease in self._owned_leases:
            lease.stop_keepalive()
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()
