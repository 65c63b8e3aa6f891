"""Traffic matrix: bytes / packets / flows between source and destination prefixes.

A cell is (originators' prefix, responders' prefix); bytes and packets count both directions of
biflow records, orig_*/resp_* each direction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from celltap.collector.apps.base import App, AppConfigError, register_kind
from celltap.collector.apps.columns import (
    address_keys,
    directed_counters,
    directed_measure,
    directed_row,
    key_text,
    sums_by_pair,
    text_key,
)

COLUMNS = {"orig_bytes": 0, "resp_bytes": 1, "orig_packets": 2, "resp_packets": 3, "flows": 4}


@register_kind
class TrafficMatrixApp(App):
    """Per (source prefix, destination prefix) totals; prefix lengths `v4` (24) and `v6` (48)."""

    kind = "traffic_matrix"

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.v4 = int(self.options.get("v4", 24))
        self.v6 = int(self.options.get("v6", 48))
        if not (0 <= self.v4 <= 32 and 0 <= self.v6 <= 128):
            raise AppConfigError(f"apps.{name}: v4 must be 0..32 and v6 0..128")
        self.cells: dict[tuple[int, int], list[int]] = {}

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Add the batch per prefix pair."""
        keys, sums = sums_by_pair(
            address_keys(records, "src", self.v4, self.v6), address_keys(records, "dst", self.v4, self.v6),
            *directed_counters(records), np.ones(len(records), np.uint64),
        )  # fmt: skip
        for k, *vals in zip(keys, *sums, strict=True):
            t = self.cells.get(k)
            if t is None:
                self.cells[k] = vals
            else:
                for i, v in enumerate(vals):
                    t[i] += v

    def _plen(self, key: int) -> int:
        return self.v4 if key >> 32 == 4 else self.v6

    def _text(self, k: tuple[int, int]) -> str:
        src, dst = k
        return f"{key_text(src)}/{self._plen(src)}>{key_text(dst)}/{self._plen(dst)}"

    def partial(self) -> dict[str, Any]:
        """{"cells": {"a/p>b/q": [orig bytes, resp bytes, orig packets, resp packets, flows]}}."""
        return {"cells": {self._text(k): v for k, v in self.cells.items()}}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's matrix."""
        for text, vals in partial.get("cells", {}).items():
            src, dst = text.split(">")
            key = (text_key(src.rsplit("/", 1)[0]), text_key(dst.rsplit("/", 1)[0]))
            t = self.cells.setdefault(key, [0] * len(COLUMNS))
            for i, v in enumerate(vals):
                t[i] += v

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The n largest cells by bytes|packets (both directions), orig_*/resp_* or flows."""
        by = str(params.get("by", "bytes"))
        measure = directed_measure(by, COLUMNS)
        n = int(params.get("n", 10))
        rows = sorted(self.cells.items(), key=lambda kv: (-measure(kv[1]), self._text(kv[0])))
        rows = rows[: n if n > 0 else None]
        return {
            "app": self.name, "by": by, "cells": len(self.cells),
            "top": [{"src": self._text(k).split(">")[0], "dst": self._text(k).split(">")[1],
                     **directed_row(v[:4]), "flows": v[4]} for k, v in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Cells held."""
        return len(self.cells)
