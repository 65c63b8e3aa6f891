"""A one-line progress bar on stderr (redrawn in place on a terminal, a few plain lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Shows done/total with a bar, a rate and a free-form note."""

    def __init__(self, total: int, label: str, unit: str = "frames", stream: TextIO | None = None) -> None:
        self.total = max(1, total)
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_pct = -1

    def update(self, done: int, note: str = "", force: bool = False) -> None:
        """Redraw if enough time passed (or `force`)."""
        now = time.monotonic()
        pct = int(100 * min(done, self.total) / self.total)
        if self.tty:
            if not force and now - self._last_draw < 0.1:
                return
        elif not force and pct // 25 == self._last_pct // 25:
            return  # a log file gets a line per quarter, not a redraw per chunk
        self._last_draw, self._last_pct = now, pct
        width = 30
        filled = width * pct // 100
        rate = done / max(now - self.start, 1e-6)
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {pct:3d}% "
            f"{done}/{self.total} {self.unit} {rate:,.0f}/s {note}"
        )
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, done: int, note: str = "") -> None:
        """Draw the final state and end the line."""
        self.update(done, note, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
