"""Scan detection per source address in tumbling time windows: vertical (many ports of any hosts)
and horizontal (one port on many hosts, a sweep).

Vertical: distinct destination ports per source; a source at or above `threshold` is a scanner.
Horizontal: distinct destination hosts per (source, destination port); at or above `hosts_threshold`
it is a sweep. Records are partitioned by source, so each source's sets live on one node and
merging is a set union: both answers are exact.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from celltap.collector.apps.base import App, register_kind
from celltap.collector.apps.columns import address_keys, key_text, text_key


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
        self.hosts_threshold = int(self.options.get("hosts_threshold", self.threshold))
        self.ports: dict[int, dict[int, set[int]]] = {}  # window start -> src -> ports
        self.hosts: dict[int, dict[tuple[int, int], set[int]]] = {}  # window -> (src, port) -> dsts

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
        self._sweeps(records, window, codes, src_list, ports)
        self._expire()

    def _sweeps(
        self, records: np.ndarray, window: np.ndarray, codes: np.ndarray, src_list: list, ports: np.ndarray
    ) -> None:
        """Add the (window, source, port, destination host) quadruples."""
        dsts, dcodes = np.unique(address_keys(records, "dst"), return_inverse=True)
        dcodes = dcodes.reshape(-1).astype(np.int64)
        order = np.lexsort((dcodes, ports, codes, window))
        w, c, p, d = window[order], codes[order], ports[order], dcodes[order]
        group = np.r_[True, (w[1:] != w[:-1]) | (c[1:] != c[:-1]) | (p[1:] != p[:-1])]
        starts = np.flatnonzero(group)
        bounds = np.r_[starts, len(order)]
        dst_list = dsts.tolist()
        for i, s in enumerate(starts.tolist()):
            key = (src_list[c[s]], int(p[s]))
            target = self.hosts.setdefault(int(w[s]), {}).setdefault(key, set())
            target.update(dst_list[x] for x in d[s : bounds[i + 1]].tolist())

    def _expire(self) -> None:
        for table in (self.ports, self.hosts):
            for w in sorted(table)[: -self.keep or None] if len(table) > self.keep else []:
                del table[w]

    def partial(self) -> dict[str, Any]:
        """{"windows": {start_ms: {src: [ports]}}, "sweeps": {start_ms: {"src|port": [dst]}}}."""
        return {
            "windows": {
                str(w): {key_text(s): sorted(p) for s, p in by_src.items()}
                for w, by_src in self.ports.items()
            },
            "sweeps": {
                str(w): {f"{key_text(s)}|{port}": sorted(map(key_text, d)) for (s, port), d in by_key.items()}
                for w, by_key in self.hosts.items()
            },
        }

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Union another node's port sets."""
        for w, by_src in partial.get("windows", {}).items():
            target = self.ports.setdefault(int(w), {})
            for s, ports in by_src.items():
                target.setdefault(text_key(s), set()).update(ports)
        for w, by_key in partial.get("sweeps", {}).items():
            target2 = self.hosts.setdefault(int(w), {})
            for k, dsts in by_key.items():
                s, _, port = k.rpartition("|")
                target2.setdefault((text_key(s), int(port)), set()).update(map(text_key, dsts))
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
        hosts_threshold = int(params.get("hosts_threshold", self.hosts_threshold))
        sweeps = [
            {"window_start_ms": w, "key": key_text(s), "port": port, "distinct_hosts": len(d)}
            for w, by_key in self.hosts.items()
            for (s, port), d in by_key.items()
            if len(d) >= hosts_threshold
        ]
        sweeps.sort(key=lambda r: (-r["distinct_hosts"], r["window_start_ms"], r["key"], r["port"]))
        return {
            "app": self.name, "threshold": threshold, "hosts_threshold": hosts_threshold,
            "window_s": self.window_ms / 1000,
            "scanners": [r for r in rows if r["distinct_ports"] >= threshold],
            "sweeps": sweeps,
            "top": rows[: n if n > 0 else None],
        }  # fmt: skip

    def size(self) -> int:
        """(window, source) and (window, source, port) entries held."""
        return sum(len(v) for v in self.ports.values()) + sum(len(v) for v in self.hosts.values())
