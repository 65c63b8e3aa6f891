"""Log lines for bad input that cannot flood the log: first one at once, then a summary per interval."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Warn about a reason at most once per `interval` seconds, reporting how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, reason: str, message: str, exc_info: BaseException | None = None) -> None:
        """Log `message` unless `reason` was logged within the interval (then count it)."""
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        if len(self._last) > 1000:
            self._last.clear()  # reasons are a small fixed set; this only guards against misuse
        n = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        self._log.warning("%s%s", message, f" ({n} similar suppressed)" if n else "", exc_info=exc_info)
