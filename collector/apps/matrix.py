"""Traffic matrix: bytes / packets / flows between source and destination prefixes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from collector.apps.base import App, AppConfigError, register_kind
from collector.apps.columns import address_keys, key_text, octets, packets, sums_by_pair, text_key


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
        keys, (b, p, f) = sums_by_pair(
            address_keys(records, "src", self.v4, self.v6), address_keys(records, "dst", self.v4, self.v6),
            octets(records), packets(records), np.ones(len(records), np.uint64),
        )  # fmt: skip
        for k, kb, kp, kf in zip(keys, b, p, f, strict=True):
            t = self.cells.get(k)
            if t is None:
                self.cells[k] = [kb, kp, kf]
            else:
                t[0] += kb
                t[1] += kp
                t[2] += kf

    def _plen(self, key: int) -> int:
        return self.v4 if key >> 32 == 4 else self.v6

    def _text(self, k: tuple[int, int]) -> str:
        src, dst = k
        return f"{key_text(src)}/{self._plen(src)}>{key_text(dst)}/{self._plen(dst)}"

    def partial(self) -> dict[str, Any]:
        """{"cells": {"a/p>b/q": [bytes, packets, flows]}}."""
        return {"cells": {self._text(k): v for k, v in self.cells.items()}}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's matrix."""
        for text, (b, p, f) in partial.get("cells", {}).items():
            src, dst = text.split(">")
            key = (text_key(src.rsplit("/", 1)[0]), text_key(dst.rsplit("/", 1)[0]))
            t = self.cells.setdefault(key, [0, 0, 0])
            t[0] += b
            t[1] += p
            t[2] += f

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The n largest cells by bytes|packets|flows."""
        by = str(params.get("by", "bytes"))
        col = {"bytes": 0, "packets": 1, "flows": 2}.get(by)
        if col is None:
            raise ValueError(f"by must be bytes, packets or flows, not {by!r}")
        n = int(params.get("n", 10))
        rows = sorted(self.cells.items(), key=lambda kv: (-kv[1][col], self._text(kv[0])))
        rows = rows[: n if n > 0 else None]
        return {
            "app": self.name, "by": by, "cells": len(self.cells),
            "top": [{"src": self._text(k).split(">")[0], "dst": self._text(k).split(">")[1],
                     "bytes": v[0], "packets": v[1], "flows": v[2]} for k, v in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Cells held."""
        return len(self.cells)
