"""Encoding of registry values: bytes on the wire, JSON for structured values."""

from __future__ import annotations

import json
from typing import Any

Value = bytes | bytearray | memoryview | str | dict | list


def encode_value(value: Value) -> bytes:
    """Turn a put() value into bytes: bytes as is, str as UTF-8, dict/list as compact JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    raise TypeError(f"registry values are bytes, str, dict or list, not {type(value).__name__}")


def decode_json(raw: bytes | None) -> Any:
    """Parse a JSON value read from the registry; None stays None."""
    if raw is None:
        return None
    return json.loads(raw)
