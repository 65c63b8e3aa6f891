"""Exact bytes / packets / records per key (source address, destination address or exporter)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from collector.apps.base import App, register_kind
from collector.apps.columns import address_keys, key_text, octets, packets, sums_by_key, text_key


@register_kind
class VolumeApp(App):
    """Exact per-key totals: the reference app for 'totals across nodes equal what was sent'."""

    kind = "volume"
    allowed_keys = ("src", "dst", "exporter")

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.totals: dict[Any, list[int]] = {}  # key -> [bytes, packets, records]

    def _keys(self, records: np.ndarray, exporter: str) -> np.ndarray:
        if self.key == "exporter":
            return np.full(len(records), exporter, dtype=object)
        return address_keys(records, self.key)

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Add the batch's bytes, packets and record count per key."""
        keys, (b, p, r) = sums_by_key(
            self._keys(records, exporter), octets(records), packets(records), np.ones(len(records), np.uint64)
        )
        totals = self.totals
        for k, kb, kp, kr in zip(keys, b, p, r, strict=True):
            t = totals.get(k)
            if t is None:
                totals[k] = [kb, kp, kr]
            else:
                t[0] += kb
                t[1] += kp
                t[2] += kr

    def _text(self, k: Any) -> str:
        return k if self.key == "exporter" else key_text(k)

    def _key(self, text: str) -> Any:
        return text if self.key == "exporter" else text_key(text)

    def partial(self) -> dict[str, Any]:
        """{"totals": {key: [bytes, packets, records]}}."""
        return {"totals": {self._text(k): v for k, v in self.totals.items()}}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's totals."""
        for text, (b, p, r) in partial.get("totals", {}).items():
            t = self.totals.setdefault(self._key(text), [0, 0, 0])
            t[0] += b
            t[1] += p
            t[2] += r

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Top n keys by bytes|packets|records (n=0: all keys), plus grand totals."""
        by = str(params.get("by", "bytes"))
        col = {"bytes": 0, "packets": 1, "records": 2}.get(by)
        if col is None:
            raise ValueError(f"by must be bytes, packets or records, not {by!r}")
        n = int(params.get("n", 10))
        rows = sorted(self.totals.items(), key=lambda kv: (-kv[1][col], self._text(kv[0])))
        if n > 0:
            rows = rows[:n]
        sums = [sum(v[i] for v in self.totals.values()) for i in range(3)]
        return {
            "app": self.name, "by": by, "exact": True, "keys": len(self.totals),
            "total": {"bytes": sums[0], "packets": sums[1], "records": sums[2]},
            "top": [{"key": self._text(k), "bytes": v[0], "packets": v[1], "records": v[2]} for k, v in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Keys held."""
        return len(self.totals)
