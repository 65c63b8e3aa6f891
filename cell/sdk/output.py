"""JSON-lines output: one object per line, one write() per batch.

One write per batch matters when several balanced analyzer processes append to the same file
(O_APPEND makes each write land whole) and keeps the per-record cost to the JSON encoding.
"""

from __future__ import annotations

import json
import os

try:
    import orjson  # JSON encoding is a third of the HTTP analyzer's time with the stdlib encoder

    def encode_records(records: list[dict]) -> bytes:
        """Serialize records as JSON lines (empty for no records)."""
        if not records:
            return b""
        return b"\n".join(map(orjson.dumps, records)) + b"\n"

except ImportError:  # pragma: no cover - orjson is a declared dependency
    _encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False).encode

    def encode_records(records: list[dict]) -> bytes:
        """Serialize records as JSON lines (empty for no records)."""
        if not records:
            return b""
        return ("\n".join(map(_encode, records)) + "\n").encode("utf-8", "surrogateescape")


class JsonLinesWriter:
    """Write record batches to a file descriptor (stdout or a file opened for appending)."""

    def __init__(self, path: str | None = None) -> None:
        if path is None or path == "-":
            self.fd = 1
            self._owned = False
        else:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._owned = True

    def write(self, records: list[dict]) -> None:
        """Write one batch of records."""
        if not records:
            return
        data = memoryview(encode_records(records))
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def close(self) -> None:
        """Close the file if this writer opened it."""
        if self._owned:
            os.close(self.fd)
            self._owned = False
