"""Connection health of one registry client: the connected gauge, error counter and log-once policy."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from celltap.registry.metrics import REGISTRY_CONNECTED, REGISTRY_ERRORS

log = logging.getLogger("celltap.registry")


class ConnectionHealth:
    """Tracks whether the registry answers; logs each outage once, not once per failed call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._connected = True
        self._listeners: list[Callable[[], None]] = []
        REGISTRY_CONNECTED.set(1)

    @property
    def connected(self) -> bool:
        """True unless the last operation failed to reach the registry."""
        return self._connected

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from the thread that noticed) each time the registry answers again."""
        with self._lock:
            self._listeners.append(listener)

    def ok(self) -> None:
        """Record a successful round trip."""
        if self._connected:
            return
        with self._lock:
            if self._connected:
                return
            self._connected = True
            listeners = list(self._listeners)
        REGISTRY_CONNECTED.set(1)
        log.warning("registry %s reachable again", self.name)
        for listener in listeners:
            listener()

    def failed(self, op: str, exc: BaseException) -> None:
        """Record a failed round trip of operation `op` (counted every time, logged once per outage)."""
        REGISTRY_ERRORS.labels(op=op).inc()
        with self._lock:
            was = self._connected
            self._connected = False
        REGISTRY_CONNECTED.set(0)
        if was:
            log.warning(
                "registry %s unreachable (%s: %s); keeping last state, retrying", self.name, op, _brief(exc)
            )


def _brief(exc: BaseException) -> str:
    """One line for an error; gRPC errors otherwise print a multi-line debug dump."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        try:
            return f"{code()}: {details()}"
        except Exception:  # an RpcError that is not a call: fall back to its text
            pass
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
