"""Application mix: bytes, packets and flows per applicationName (the cell's classifying rule).

Bytes and packets are both directions of biflow records; orig_*/resp_* keep them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from celltap.collector.apps.base import App, register_kind
from celltap.collector.apps.columns import directed_counters, directed_measure, directed_row, sums_by_key

COLUMNS = {"orig_bytes": 0, "resp_bytes": 1, "orig_packets": 2, "resp_packets": 3, "flows": 4}

UNLABELLED = "(none)"


def app_names(records: np.ndarray) -> np.ndarray:
    """applicationName per record as str objects ('(none)' when absent or empty)."""
    if "applicationName" not in (records.dtype.names or ()):
        return np.full(len(records), UNLABELLED, dtype=object)
    col = records["applicationName"]
    uniq, inv = np.unique(col, return_inverse=True)
    text = []
    for u in uniq.tolist():
        raw = u if isinstance(u, bytes | bytearray) else str(u).encode()
        s = bytes(raw).rstrip(b"\x00").decode("utf-8", "replace")
        text.append(s or UNLABELLED)
    return np.asarray(text, dtype=object)[inv.reshape(-1)]


@register_kind
class AppMixApp(App):
    """Traffic per application label; any partition key works (totals merge by addition)."""

    kind = "app_mix"
    default_key = "flow"

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.mix: dict[str, list[int]] = {}  # label -> [orig/resp bytes, orig/resp packets, flows]

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Add bytes and packets each way and flows per label."""
        keys, sums = sums_by_key(
            app_names(records), *directed_counters(records), np.ones(len(records), np.uint64)
        )
        for k, *vals in zip(keys, *sums, strict=True):
            t = self.mix.setdefault(k, [0] * len(COLUMNS))
            for i, v in enumerate(vals):
                t[i] += v

    def partial(self) -> dict[str, Any]:
        """{"mix": {label: [orig bytes, resp bytes, orig packets, resp packets, flows]}}."""
        return {"mix": self.mix}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's mix."""
        for k, vals in partial.get("mix", {}).items():
            t = self.mix.setdefault(k, [0] * len(COLUMNS))
            for i, v in enumerate(vals):
                t[i] += v

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Labels by bytes|packets (both directions), orig_*/resp_* or flows, with their share."""
        by = str(params.get("by", "bytes"))
        measure = directed_measure(by, COLUMNS)
        total = sum(measure(v) for v in self.mix.values()) or 1
        n = int(params.get("n", 10))
        rows = sorted(self.mix.items(), key=lambda kv: (-measure(kv[1]), kv[0]))[: n if n > 0 else None]
        return {
            "app": self.name, "by": by,
            "top": [{"key": k, **directed_row(v[:4]), "flows": v[4], "share": measure(v) / total}
                    for k, v in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Labels held."""
        return len(self.mix)
