"""Exact bytes / packets / records per key (source address, destination address or exporter).

Bytes and packets count both directions of biflow records; `orig_*` is what the flows' originators
(the records' sources) sent, `resp_*` what their responders sent back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from celltap.collector.apps.base import App, register_kind
from celltap.collector.apps.columns import (
    address_keys,
    directed_counters,
    directed_measure,
    directed_row,
    key_text,
    sums_by_key,
    text_key,
)

COLUMNS = {"orig_bytes": 0, "resp_bytes": 1, "orig_packets": 2, "resp_packets": 3, "records": 4}


@register_kind
class VolumeApp(App):
    """Exact per-key totals: the reference app for 'totals across nodes equal what was sent'."""

    kind = "volume"
    allowed_keys = ("src", "dst", "exporter")

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.totals: dict[Any, list[int]] = {}  # key -> [orig/resp bytes, orig/resp packets, records]

    def _keys(self, records: np.ndarray, exporter: str) -> np.ndarray:
        if self.key == "exporter":
            return np.full(len(records), exporter, dtype=object)
        return address_keys(records, self.key)

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Add the batch's bytes and packets each way and its record count per key."""
        keys, sums = sums_by_key(
            self._keys(records, exporter), *directed_counters(records), np.ones(len(records), np.uint64)
        )
        totals = self.totals
        for k, *vals in zip(keys, *sums, strict=True):
            t = totals.get(k)
            if t is None:
                totals[k] = vals
            else:
                for i, v in enumerate(vals):
                    t[i] += v

    def _text(self, k: Any) -> str:
        return k if self.key == "exporter" else key_text(k)

    def _key(self, text: str) -> Any:
        return text if self.key == "exporter" else text_key(text)

    def partial(self) -> dict[str, Any]:
        """{"totals": {key: [orig bytes, resp bytes, orig packets, resp packets, records]}}."""
        return {"totals": {self._text(k): v for k, v in self.totals.items()}}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's totals."""
        for text, vals in partial.get("totals", {}).items():
            t = self.totals.setdefault(self._key(text), [0] * len(COLUMNS))
            for i, v in enumerate(vals):
                t[i] += v

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Top n keys by bytes|packets (both directions), orig_*/resp_* or records, plus grand totals."""
        by = str(params.get("by", "bytes"))
        measure = directed_measure(by, COLUMNS)
        n = int(params.get("n", 10))
        rows = sorted(self.totals.items(), key=lambda kv: (-measure(kv[1]), self._text(kv[0])))
        if n > 0:
            rows = rows[:n]
        sums = [sum(v[i] for v in self.totals.values()) for i in range(len(COLUMNS))]
        return {
            "app": self.name, "by": by, "exact": True, "keys": len(self.totals),
            "total": directed_row(sums),
            "top": [{"key": self._text(k), **directed_row(v)} for k, v in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Keys held."""
        return len(self.totals)
