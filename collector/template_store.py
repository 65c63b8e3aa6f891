"""Where templates live beyond one process: an interface, an in-memory store and a key-value adapter.

A collector that starts (or restarts) looks templates up here the first time it sees data for a
template it has not been sent yet, so it decodes at once instead of waiting for the next refresh.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

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
