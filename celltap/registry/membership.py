"""Membership on top of any registry: register this process under a lease, and watch a kind's members.

A process registers under /celltap/<cluster>/<kind>/<id> with a JSON value and a lease kept alive.
If the registry goes away the process keeps its last snapshot of every watched kind and keeps
working; a supervisor thread retries with backoff, and when the lease turns out lost (expired while
we were cut off, or the registry was rebuilt) it registers again under a new lease.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celltap.registry.base import Lease, Registry, WatchEvent
from celltap.registry.errors import RegistryError
from celltap.registry.keys import kind_prefix, member_key
from celltap.registry.metrics import REGISTRY_ERRORS, REGISTRY_REREGISTRATIONS

log = logging.getLogger("celltap.registry")

MembersCallback = Callable[[dict[str, dict[str, Any]]], None]


class MemberSet:
    """The live members of one kind, {id: value}; the last snapshot survives registry outages."""

    def __init__(self, registry: Registry, cluster: str, kind: str, on_change: MembersCallback | None = None):
        self.kind = kind
        self.prefix = kind_prefix(cluster, kind)
        self._lock = threading.Lock()
        self._members: dict[str, dict[str, Any]] = {}
        self._callbacks: list[MembersCallback] = [on_change] if on_change is not None else []
        self._watch = registry.watch_prefix(self.prefix, self._on_event, initial=True)

    def _on_event(self, event: WatchEvent) -> None:
        member_id = event.key[len(self.prefix) :]
        with self._lock:
            if event.type == "put":
                try:
                    value = event.json()
                except ValueError:
                    REGISTRY_ERRORS.labels(op="member_value").inc()
                    log.warning("member %s has a value that is not JSON; ignoring it", event.key)
                    return
                if not isinstance(value, dict):
                    REGISTRY_ERRORS.labels(op="member_value").inc()
                    log.warning("member %s has a value that is not a JSON object; ignoring it", event.key)
                    return
                self._members[member_id] = value
            elif self._members.pop(member_id, None) is None:
                return
            snapshot = dict(self._members)
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(snapshot)
            except Exception:
                REGISTRY_ERRORS.labels(op="member_callback").inc()
                log.exception("membership callback for %s failed", self.kind)

    def members(self) -> dict[str, dict[str, Any]]:
        """A copy of the current members {id: value}."""
        with self._lock:
            return dict(self._members)

    def add_callback(self, callback: MembersCallback) -> None:
        """Also call `callback(members)` after each change."""
        with self._lock:
            self._callbacks.append(callback)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until the registry was read once; False on timeout (registry unreachable)."""
        return self._watch.wait_synced(timeout)

    def close(self) -> None:
        """Stop watching."""
        self._watch.cancel()


class Registration:
    """One key of ours, kept under a lease; re-registered by the Membership supervisor when lost."""

    def __init__(self, registry: Registry, key: str, kind: str, value: dict[str, Any], ttl: float) -> None:
        self.registry = registry
        self.key = key
        self.kind = kind
        self.value = value
        self.ttl = ttl
        self.lease: Lease | None = None
        self.registered = threading.Event()
        self.times_registered = 0
        self._lock = threading.Lock()
        self._on_lost: Callable[[], None] = lambda: None
        # Called before each re-registration (never the first): returns the value to register
        # instead, e.g. a node that comes back as a new incarnation with empty state.
        self.before_reregister: Callable[[], dict[str, Any]] | None = None

    def try_register(self) -> None:
        """Grant a lease, put the value, start keep-alive. Raises RegistryError on failure."""
        with self._lock:
            if self.times_registered and self.before_reregister is not None:
                self.value = {**self.before_reregister(), "id": self.value.get("id")}
            lease = self.registry.lease(self.ttl)
            try:
                self.registry.put(self.key, self.value, lease=lease)
            except RegistryError:
                lease.stop_keepalive()
                raise
            self.lease = lease
            self.times_registered += 1
            self.registered.set()
            lease.keep_alive(on_lost=self._lease_lost)

    def _lease_lost(self, lease: Lease) -> None:
        with self._lock:
            if lease is not self.lease:
                return
            self.registered.clear()
        self._on_lost()

    def update(self, value: dict[str, Any]) -> None:
        """Change our value; written now if registered, else at the next registration."""
        with self._lock:
            self.value = value
            lease = self.lease if self.registered.is_set() else None
        if lease is not None:
            self.registry.put(self.key, value, lease=lease)

    def withdraw(self) -> None:
        """Revoke the lease so the key disappears now rather than at expiry."""
        with self._lock:
            lease, self.lease = self.lease, None
            self.registered.clear()
        if lease is not None:
            try:
                lease.revoke()
            except RegistryError as exc:
                log.warning("could not revoke lease of %s (%s); it will expire", self.key, exc)


class Membership:
    """Registers this process's members and watches kinds of one cluster, surviving registry outages."""

    def __init__(
        self,
        registry: Registry,
        cluster: str,
        *,
        ttl: float = 10.0,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
    ) -> None:
        self.registry = registry
        self.cluster = cluster
        self.ttl = ttl
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._registrations: list[Registration] = []
        self._sets: dict[str, MemberSet] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name=f"celltap-membership-{cluster}", daemon=True
        )
        self._thread.start()

    def register(self, kind: str, member_id: str, value: dict[str, Any]) -> Registration:
        """Register (kind, id) with `value` (its "id" field set to `member_id`); retried in the
        background if the registry is unreachable now, so this never raises for an outage."""
        body = {**value, "id": member_id}
        reg = Registration(self.registry, member_key(self.cluster, kind, member_id), kind, body, self.ttl)
        reg._on_lost = self._wake.set
        with self._lock:
            self._registrations.append(reg)
        try:
            reg.try_register()
        except RegistryError as exc:
            log.warning("registering %s failed (%s); retrying in the background", reg.key, exc)
            self._wake.set()
        return reg

    def watch(self, kind: str, on_change: MembersCallback | None = None) -> MemberSet:
        """The live member set of `kind` (one watch per kind; `on_change(members)` after each change)."""
        with self._lock:
            existing = self._sets.get(kind)
            if existing is None:
                existing = self._sets[kind] = MemberSet(self.registry, self.cluster, kind, on_change)
                return existing
        if on_change is not None:
            existing.add_callback(on_change)
        return existing

    def members(self, kind: str) -> dict[str, dict[str, Any]]:
        """Current members of `kind` (starts watching it on first use)."""
        member_set = self.watch(kind)
        member_set.wait_synced(timeout=self.retry_max)
        return member_set.members()

    @property
    def registered(self) -> bool:
        """True when every registration currently holds a live lease."""
        with self._lock:
            regs = list(self._registrations)
        return all(reg.registered.is_set() for reg in regs)

    def _supervise(self) -> None:
        delay = self.retry_initial
        failing = False
        while not self._stop.is_set():
            self._wake.wait(timeout=delay if failing else None)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                pending = [reg for reg in self._registrations if not reg.registered.is_set()]
            failing = False
            for reg in pending:
                try:
                    reg.try_register()
                except RegistryError as exc:
                    REGISTRY_ERRORS.labels(op="register").inc()
                    if reg.times_registered and not failing:
                        log.debug("re-registering %s failed: %s", reg.key, exc)
                    failing = True
                    continue
                if reg.times_registered > 1:
                    REGISTRY_REREGISTRATIONS.labels(kind=reg.kind).inc()
                    log.warning("re-registered %s under a new lease", reg.key)
                else:
                    log.info("registered %s", reg.key)
            delay = min(delay * 2, self.retry_max) if failing else self.retry_initial

    def close(self, withdraw: bool = True) -> None:
        """Stop watching and supervising; by default revoke our leases so we vanish at once."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            regs, self._registrations = self._registrations, []
            sets, self._sets = list(self._sets.values()), {}
        for reg in regs:
            if withdraw:
                reg.withdraw()
            elif reg.lease is not None:
                reg.lease.stop_keepalive()
        for member_set in sets:
            member_set.close()
