"""The log directory of `celltap analyze`: one JSON-lines file per kind, rotated by size or age.

Records reach a LogSet in batches (one write per log per batch, as the analyzers' JSON-lines output).
A log file exists once it has a record. Rotation (live runs) renames `conn.log` to
`conn.<first>_<last>.log`, the UTC times of the file's opening and closing, as Zeek's log archive
names do, and starts a new file; a stopped run closes every file complete (nothing is buffered past
a batch). One log can go to standard output instead (`--json LOG`).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from celltap.cell.sdk.output import encode_records


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(t))


class _LogFile:
    __slots__ = ("fd", "opened", "path", "size")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.opened = time.time()
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


class LogSet:
    """Writers for every log kind under one directory (or stdout for `stdout_log`)."""

    def __init__(
        self,
        directory: Path | None,
        stdout_log: str | None = None,
        rotate_bytes: int = 0,
        rotate_seconds: float = 0.0,
    ) -> None:
        self.directory = directory
        self.stdout_log = stdout_log
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.files: dict[str, _LogFile] = {}
        self.counts: Counter[str] = Counter()
        self.rotated: list[Path] = []

    def write(self, log: str, records: list[dict]) -> None:
        """Append one batch of records to the log named `log` (e.g. "conn", "http")."""
        if not records:
            return
        self.counts[log] += len(records)
        if log == self.stdout_log:
            view = memoryview(encode_records(records))
            while view:
                view = view[os.write(1, view) :]
            return
        if self.directory is None:
            return  # only one log was asked for, on stdout
        if not self.rotate_bytes:
            self._file(log).write(encode_records(records))
            return
        # rotating by size: a file ends at the first record that takes it to the limit
        lines = encode_records(records).splitlines(keepends=True)
        start = 0
        while start < len(lines):
            f = self._file(log)
            room = self.rotate_bytes - f.size
            end = start
            while end < len(lines) and room > 0:
                room -= len(lines[end])
                end += 1
            f.write(b"".join(lines[start:end]))
            start = end
            if f.size >= self.rotate_bytes:
                self._rotate(log)

    def _file(self, log: str) -> _LogFile:
        f = self.files.get(log)
        if f is None:
            assert self.directory is not None
            f = self.files[log] = _LogFile(self.directory / f"{log}.log")
        return f

    def tick(self, now: float | None = None) -> None:
        """Rotate the logs older than the rotation interval (live runs call this now and then)."""
        if not self.rotate_seconds:
            return
        now = time.time() if now is None else now
        for log, f in list(self.files.items()):
            if now - f.opened >= self.rotate_seconds:
                self._rotate(log)

    def _rotate(self, log: str) -> None:
        f = self.files.pop(log)
        f.close()
        assert self.directory is not None
        dest = self.directory / f"{log}.{_stamp(f.opened)}_{_stamp(time.time())}.log"
        n = 1
        while dest.exists():  # two rotations within one second
            dest = self.directory / f"{log}.{_stamp(f.opened)}_{_stamp(time.time())}-{n}.log"
            n += 1
        os.rename(f.path, dest)
        self.rotated.append(dest)

    def close(self) -> None:
        """Close every open log file (complete: every batch was written whole)."""
        for f in self.files.values():
            f.close()
        self.files.clear()
