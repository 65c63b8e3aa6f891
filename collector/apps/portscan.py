"""Port-scan detection: distinct destination ports per source address in tumbling time windows."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from collector.apps.base import App, register_kind
from collector.apps.columns import address_keys, key_text, text_key


def record_time_ms(records: np.ndarray) -> np.ndarray:
    """Flow start in ms (flowStartMilliseconds, else flowStartSeconds, else now)."""
    names = records.dtype.names or ()
    if "flowStartMilliseconds" in names:
        return records["flowStartMilliseconds"].astype(np.int64)
    if "flowStartSeconds" in names:
        return records["flowStartSeconds"].astype(np.int64) * 1000
    return np.full(len(records), int(time.time() * 1000), dtype=np.int64)


@register_kind
class PortScanApp(App):
    """Sources that touched at least `threshold` distinct destination ports within one window."""

    kind = "port_scan"
    allowed_keys = ("src",)

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.window_ms = int(float(self.options.get("window", 60)) * 1000)
        self.threshold = int(self.options.get("threshold", 100))
        self.keep = int(self.options.get("keep_windows", 5))
        self.ports: dict[int, dict[int, set[int]]] = {}  # window start -> src -> ports

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Add the (window, source, destination port) triples of TCP and UDP records."""
        names = records.dtype.names or ()
        if "destinationTransportPort" not in names:
            return
        if "protocolIdentifier" in names:
            records = records[np.isin(records["protocolIdentifier"], (6, 17))]
        if len(records) == 0:
            return
        window = (record_time_ms(records) // self.window_ms) * self.window_ms
        srcs, codes = np.unique(address_keys(records, "src"), return_inverse=True)
        codes = codes.reshape(-1).astype(np.int64)
        ports = records["destinationTransportPort"].astype(np.int64)
        order = np.lexsort((ports, codes, window))
        w, c, p = window[order], codes[order], ports[order]
        group = np.r_[True, (w[1:] != w[:-1]) | (c[1:] != c[:-1])]
        starts = np.flatnonzero(group)
        bounds = np.r_[starts, len(order)]
        src_list = srcs.tolist()
        for i, s in enumerate(starts.tolist()):
            target = self.ports.setdefault(int(w[s]), {}).setdefault(src_list[c[s]], set())
            target.update(p[s : bounds[i + 1]].tolist())
        self._expire()

    def _expire(self) -> None:
        for w in sorted(self.ports)[: -self.keep or None] if len(self.ports) > self.keep else []:
            del self.ports[w]

    def partial(self) -> dict[str, Any]:
        """{"windows": {start_ms: {src: [ports]}}}."""
        return {
            "windows": {
                str(w): {key_text(s): sorted(p) for s, p in by_src.items()}
                for w, by_src in self.ports.items()
            }
        }

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Union another node's port sets."""
        for w, by_src in partial.get("windows", {}).items():
            target = self.ports.setdefault(int(w), {})
            for s, ports in by_src.items():
                target.setdefault(text_key(s), set()).update(ports)
        self._expire()

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Sources at or above the threshold (or the top n by distinct ports), per window."""
        threshold = int(params.get("threshold", self.threshold))
        n = int(params.get("n", 10))
        rows = [
            {"window_start_ms": w, "key": key_text(s), "distinct_ports": len(p)}
            for w, by_src in self.ports.items()
            for s, p in by_src.items()
        ]
        rows.sort(key=lambda r: (-r["distinct_ports"], r["window_start_ms"], r["key"]))
        return {
            "app": self.name, "threshold": threshold, "window_s": self.window_ms / 1000,
            "scanners": [r for r in rows if r["distinct_ports"] >= threshold],
            "top": rows[: n if n > 0 else None],
        }  # fmt: skip

    def size(self) -> int:
        """(window, source) entries held."""
        return sum(len(v) for v in self.ports.values())
