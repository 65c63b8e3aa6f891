"""SYN-flood detection: share of half-open TCP flows (SYN without ACK) per destination address."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from celltap.collector.apps.base import App, register_kind
from celltap.collector.apps.columns import address_keys, key_text, sums_by_key, text_key

SYN, ACK = 0x02, 0x10


@register_kind
class SynFloodApp(App):
    """Destinations with at least `min_half_open` half-open flows making `ratio` of their TCP flows."""

    kind = "syn_flood"
    default_key = "dst"
    allowed_keys = ("dst",)

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.ratio = float(self.options.get("ratio", 0.5))
        self.min_half_open = int(self.options.get("min_half_open", 100))
        self.dests: dict[int, list[int]] = {}  # dst -> [tcp flows, half-open flows]

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Count TCP flows and half-open flows per destination."""
        names = records.dtype.names or ()
        if "tcpControlBits" not in names or "protocolIdentifier" not in names:
            return
        tcp = records[records["protocolIdentifier"] == 6]
        if len(tcp) == 0:
            return
        flags = tcp["tcpControlBits"].astype(np.uint16)
        half = ((flags & SYN) != 0) & ((flags & ACK) == 0)
        keys, (flows, halfs) = sums_by_key(
            address_keys(tcp, "dst"), np.ones(len(tcp), np.uint64), half.astype(np.uint64)
        )
        for k, f, h in zip(keys, flows, halfs, strict=True):
            t = self.dests.setdefault(k, [0, 0])
            t[0] += f
            t[1] += h

    def partial(self) -> dict[str, Any]:
        """{"dests": {dst: [tcp flows, half-open]}}."""
        return {"dests": {key_text(k): v for k, v in self.dests.items()}}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's counts."""
        for text, (f, h) in partial.get("dests", {}).items():
            t = self.dests.setdefault(text_key(text), [0, 0])
            t[0] += f
            t[1] += h

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Flagged destinations and the top n by half-open flows."""
        ratio = float(params.get("ratio", self.ratio))
        least = int(params.get("min_half_open", self.min_half_open))
        n = int(params.get("n", 10))
        rows = [
            {"key": key_text(k), "tcp_flows": f, "half_open": h, "ratio": h / f if f else 0.0}
            for k, (f, h) in self.dests.items()
        ]
        rows.sort(key=lambda r: (-r["half_open"], r["key"]))
        flagged = [r for r in rows if r["half_open"] >= least and r["ratio"] >= ratio]
        return {
            "app": self.name,
            "ratio": ratio,
            "min_half_open": least,
            "flooded": flagged,
            "top": rows[: n if n > 0 else None],
        }

    def size(self) -> int:
        """Destinations held."""
        return len(self.dests)
