"""Watch machinery shared by backends: known state of a prefix, turned into put/delete callbacks.

A backend feeds it either whole snapshots (a poll, or a re-read after an outage) or single live
events; the diff against the last known state decides what to deliver, so an outage never loses a
change in the final state and never repeats one.
"""

from __future__ import annotations

import logging
import threading

from celltap.registry.base import WatchCallback, WatchEvent, WatchHandle
from celltap.registry.metrics import REGISTRY_ERRORS

log = logging.getLogger("celltap.registry")

# key -> (revision, value); the revision tells a re-put of the same value from no change at all.
Snapshot = dict[str, tuple[int, bytes]]


class SnapshotWatch(WatchHandle):
    """Delivers events for one prefix from snapshots and live events, one at a time, in order."""

    def __init__(self, prefix: str, callback: WatchCallback, initial: bool) -> None:
        self.prefix = prefix
        self._callback = callback
        self._initial = initial
        self._known: Snapshot = {}
        self._lock = threading.RLock()
        self._synced = threading.Event()
        self._cancelled = threading.Event()
        self._seen_snapshot = False

    @property
    def cancelled(self) -> bool:
        """True once cancel() ran."""
        return self._cancelled.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Block until the first snapshot was applied."""
        return self._synced.wait(timeout)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the known state with `snapshot`, delivering the difference as events."""
        with self._lock:
            if self.cancelled:
                return
            deliver = self._seen_snapshot or self._initial
            events: list[WatchEvent] = []
            if deliver:
                for key in sorted(self._known.keys() - snapshot.keys()):
                    events.append(WatchEvent("delete", key, None))
                for key in sorted(snapshot):
                    if self._known.get(key) != snapshot[key]:
                        events.append(WatchEvent("put", key, snapshot[key][1]))
            self._known = dict(snapshot)
            self._seen_snapshot = True
            for event in events:
                self._deliver(event)
        self._synced.set()

    def apply_event(self, event: WatchEvent, revision: int) -> None:
        """Apply one live event (already known to be newer than the last snapshot)."""
        with self._lock:
            if self.cancelled:
                return
            if event.type == "put":
                assert event.value is not None
                self._known[event.key] = (revision, event.value)
            elif self._known.pop(event.key, None) is None:
                return  # deleting what we never saw (e.g. expired before our snapshot): nothing changed
            self._deliver(event)

    def _deliver(self, event: WatchEvent) -> None:
        try:
            self._callback(event)
        except Exception:
            REGISTRY_ERRORS.labels(op="watch_callback").inc()
            log.exception(
                "registry watch callback for %s failed on %s %s", self.prefix, event.type, event.key
            )

    def cancel(self) -> None:
        """Stop delivering events."""
        with self._lock:
            self._cancelled.set()
        self._synced.set()
