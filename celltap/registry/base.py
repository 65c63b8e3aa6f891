"""The registry interface every backend implements, with leases kept alive by a background thread."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from celltap.registry.errors import RegistryUnavailable
from celltap.registry.health import ConnectionHealth
from celltap.registry.metrics import REGISTRY_ERRORS
from celltap.registry.values import Value, decode_json

log = logging.getLogger("celltap.registry")


@dataclass(frozen=True)
class WatchEvent:
    """One change under a watched prefix; `value` is None for deletes (including lease expiry)."""

    type: Literal["put", "delete"]
    key: str
    value: bytes | None = None

    def json(self) -> Any:
        """The value parsed as JSON (None for deletes)."""
        return decode_json(self.value)


WatchCallback = Callable[[WatchEvent], None]


class WatchHandle(ABC):
    """A running prefix watch; it survives registry outages and re-reads the prefix when it returns."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop delivering events."""

    @abstractmethod
    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until the watch has read the prefix once; False on timeout."""


class Lease(ABC):
    """A time-to-live grant; keys put with it vanish when it expires or is revoked."""

    def __init__(self, lease_id: int, ttl: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    @abstractmethod
    def refresh(self) -> bool:
        """Extend the lease by its TTL; False if it already expired. Raises RegistryUnavailable."""

    @abstractmethod
    def _revoke(self) -> None:
        """Backend-specific revoke."""

    def revoke(self) -> None:
        """Stop keep-alive and revoke, deleting the lease's keys now."""
        self.stop_keepalive()
        self._revoke()
        self.lost.set()

    def keep_alive(
        self, on_lost: Callable[[Lease], None] | None = None, interval: float | None = None
    ) -> None:
        """Refresh every ttl/3 in a daemon thread; call `on_lost` once if the lease turns out expired."""
        if self._thread is not None:
            return
        period = interval if interval is not None else max(self.ttl / 3.0, 0.05)

        def run() -> None:
            delay = period
            while not self._stop.wait(delay):
                try:
                    alive = self.refresh()
                except RegistryUnavailable:
                    # The server may come back with our lease intact (etcd keeps leases across
                    # restarts), so keep trying faster than the TTL rather than giving up.
                    delay = min(period, 0.25)
                    continue
                except Exception:
                    REGISTRY_ERRORS.labels(op="keepalive").inc()
                    log.exception("lease %x keep-alive failed", self.id)
                    delay = min(period, 0.25)
                    continue
                if not alive:
                    self.lost.set()
                    log.warning("lease %x expired; its keys are gone", self.id)
                    if on_lost is not None:
                        try:
                            on_lost(self)
                        except Exception:
                            log.exception("lease-lost callback failed")
                    return
                delay = period

        self._thread = threading.Thread(target=run, name=f"celltap-lease-{self.id:x}", daemon=True)
        self._thread.start()

    def stop_keepalive(self) -> None:
        """Stop the keep-alive thread without revoking (the lease then expires on its own)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class Registry(ABC):
    """Key/value store with leases and prefix watches; keys are '/'-separated strings."""

    url: str
    health: ConnectionHealth

    @abstractmethod
    def put(self, key: str, value: Value, lease: Lease | None = None) -> None:
        """Store `value` (bytes, or dict/list as JSON) under `key`, attached to `lease` if given."""

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value of `key`, or None."""

    @abstractmethod
    def get_prefix(self, prefix: str) -> dict[str, bytes]:
        """All live keys starting with `prefix`, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""

    @abstractmethod
    def lease_ttl(self, key: str) -> float | None:
        """Seconds left on the lease `key` is attached to; None for a missing key or one without."""

    @abstractmethod
    def lease(self, ttl: float) -> Lease:
        """Grant a lease of `ttl` seconds (backends may round up to their minimum)."""

    @abstractmethod
    def watch_prefix(self, prefix: str, callback: WatchCallback, *, initial: bool = False) -> WatchHandle:
        """Call `callback` for each put/delete under `prefix` from now on (and for existing keys if
        `initial`). Never raises for an unreachable registry: the watch retries in the background."""

    @abstractmethod
    def close(self) -> None:
        """Cancel watches and keep-alives and release connections."""

    def get_json(self, key: str) -> Any:
        """The value of `key` parsed as JSON, or None."""
        return decode_json(self.get(key))

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
