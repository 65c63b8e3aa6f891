"""RecordBatches as JSON lines with IANA names: the inspect view of an exporter's output."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import IO

import numpy as np

from celltap.ipfix.records import RecordBatch
from celltap.ipfix.template import FieldSpec


def _converter(f: FieldSpec) -> Callable[[object], object]:
    dt = f.ie.data_type
    if dt == "ipv4Address" and not f.variable and f.length == 4:
        return lambda v: str(ipaddress.IPv4Address(int(v)))  # type: ignore[call-overload]
    if dt == "ipv6Address" and f.length == 16:
        return lambda v: str(ipaddress.IPv6Address(bytes(v)))  # type: ignore[call-overload]
    if dt == "macAddress" and f.length == 6:
        return lambda v: bytes(v).hex(":")  # type: ignore[call-overload]
    if dt == "string":
        return lambda v: v if isinstance(v, str) else bytes(v).rstrip(b"\0").decode("utf-8", "replace")
    if dt == "boolean":
        return lambda v: int(v) == 1  # type: ignore[call-overload]
    if dt.startswith(("float",)):
        return float  # type: ignore[return-value]
    if dt in ("dateTimeMicroseconds", "dateTimeNanoseconds") and f.length == 8:
        # NTP timestamp (RFC 7011 section 6.1.9): print as seconds with a fraction, like tshark.
        return lambda v: (int(v) >> 32) - 2208988800 + (int(v) & 0xFFFFFFFF) / 2**32  # type: ignore
    return _raw


def _raw(v: object) -> object:
    """An integer column as int; anything else (bytes, an element sent at a length its type does not
    have) as hex."""
    if isinstance(v, bytes | np.void):
        return bytes(v).hex()
    if isinstance(v, str):
        return v
    return int(v)  # type: ignore[call-overload]


def _safe(conv: Callable[[object], object]) -> Callable[[object], object]:
    """A converter that cannot fail on what an exporter sent: a value it cannot read prints as hex."""

    def run(v: object) -> object:
        try:
            return conv(v)
        except (ValueError, TypeError, OverflowError, UnicodeError):
            return bytes(v).hex() if isinstance(v, bytes | np.void) else repr(v)

    return run


def batch_to_dicts(batch: RecordBatch) -> Iterable[dict]:
    """One dict per record: exporter, domain, template, then each field by IANA name."""
    convs = [(f.name, _safe(_converter(f))) for f in batch.fields]
    head = {
        "exporter": batch.exporter,
        "observationDomainId": batch.domain,
        "templateId": batch.template_id,
        "version": batch.version,
    }
    for rec in batch.records:
        d = dict(head)
        for name, conv in convs:
            d[name] = conv(rec[name])
        yield d


class JsonLinesSink:
    """A batch hook that prints every record as one JSON line."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.records = 0

    def __call__(self, batches: list[RecordBatch]) -> None:
        """Write the batches' records and flush (so a pipe reader sees them at once)."""
        lines = []
        for b in batches:
            for d in batch_to_dicts(b):
                lines.append(json.dumps(d, separators=(",", ":")))
            self.records += len(b)
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
