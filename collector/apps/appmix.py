"""Application mix: bytes, packets and flows per applicationName (the cell's classifying rule)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from collector.apps.base import App, register_kind
from collector.apps.columns import octets, packets, sums_by_key

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
        self.mix: dict[str, list[int]] = {}

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Add bytes, packets and flows per label."""
        keys, (b, p, f) = sums_by_key(
            app_names(records), octets(records), packets(records), np.ones(len(records), np.uint64)
        )
        for k, kb, kp, kf in zip(keys, b, p, f, strict=True):
            t = self.mix.setdefault(k, [0, 0, 0])
            t[0] += kb
            t[1] += kp
            t[2] += kf

    def partial(self) -> dict[str, Any]:
        """{"mix": {label: [bytes, packets, flows]}}."""
        return {"mix": self.mix}

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Add another node's mix."""
        for k, (b, p, f) in partial.get("mix", {}).items():
            t = self.mix.setdefault(k, [0, 0, 0])
            t[0] += b
            t[1] += p
            t[2] += f

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Labels by bytes|packets|flows with their share of the total."""
        by = str(params.get("by", "bytes"))
        col = {"bytes": 0, "packets": 1, "flows": 2}.get(by)
        if col is None:
            raise ValueError(f"by must be bytes, packets or flows, not {by!r}")
        total = sum(v[col] for v in self.mix.values()) or 1
        n = int(params.get("n", 10))
        rows = sorted(self.mix.items(), key=lambda kv: (-kv[1][col], kv[0]))[: n if n > 0 else None]
        return {
            "app": self.name, "by": by,
            "top": [{"key": k, "bytes": v[0], "packets": v[1], "flows": v[2], "share": v[col] / total}
                    for k, v in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Labels held."""
        return len(self.mix)
