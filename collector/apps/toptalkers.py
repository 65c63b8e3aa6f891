"""Top talkers by bytes and by packets: weighted space-saving summaries, mergeable.

A summary holds at most `capacity` keys with (count, error).  Update and merge are the same
operation (a batch is an exact summary): counts add, a key missing from a *full* summary is
assumed to have that summary's minimum count (added to both count and error), and the result keeps
the `capacity` largest.  While the distinct keys seen stay within capacity nothing is ever full,
so counts are exact and errors zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from collector.apps.base import App, register_kind
from collector.apps.columns import address_keys, key_text, octets, packets, sums_by_key, text_key

Summary = dict[Any, list[int]]  # key -> [count, error]


def merge_summaries(
    a: Summary, a_full: bool, b: Summary, b_full: bool, capacity: int
) -> tuple[Summary, bool]:
    """Merge two space-saving summaries; returns (summary, full)."""
    min_a = min((v[0] for v in a.values()), default=0) if a_full else 0
    min_b = min((v[0] for v in b.values()), default=0) if b_full else 0
    out: Summary = {}
    for k, (c, e) in a.items():
        other = b.get(k)
        if other is None:
            out[k] = [c + min_b, e + min_b]
        else:
            out[k] = [c + other[0], e + other[1]]
    for k, (c, e) in b.items():
        if k not in a:
            out[k] = [c + min_a, e + min_a]
    full = a_full or b_full
    if len(out) > capacity:
        keep = sorted(out.items(), key=lambda kv: -kv[1][0])[:capacity]
        out = dict(keep)
        full = True
    return out, full


@register_kind
class TopTalkersApp(App):
    """Space-saving top-k of source (or destination) addresses by bytes and by packets."""

    kind = "top_talkers"
    allowed_keys = ("src", "dst")

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.capacity = int(self.options.get("capacity", 10000))
        self.summaries: dict[str, Summary] = {"bytes": {}, "packets": {}}
        self.full: dict[str, bool] = {"bytes": False, "packets": False}

    def _add(self, measure: str, batch: Summary, batch_full: bool) -> None:
        current = self.summaries[measure]
        if not self.full[measure] and not batch_full and len(current) + len(batch) <= self.capacity:
            for k, (c, e) in batch.items():  # the common exact case: a plain add
                v = current.get(k)
                if v is None:
                    current[k] = [c, e]
                else:
                    v[0] += c
                    v[1] += e
            return
        self.summaries[measure], self.full[measure] = merge_summaries(
            current, self.full[measure], batch, batch_full, self.capacity
        )

    def update(self, records: np.ndarray, exporter: str) -> None:
        """Add one batch's per-key bytes and packets."""
        keys, (b, p) = sums_by_key(address_keys(records, self.key), octets(records), packets(records))
        by_bytes, by_packets = self.summaries["bytes"], self.summaries["packets"]
        if (
            not self.full["bytes"] and not self.full["packets"]
            and len(by_bytes) + len(keys) <= self.capacity and len(by_packets) + len(keys) <= self.capacity
        ):  # fmt: skip
            for k, kb, kp in zip(keys, b, p, strict=True):  # the exact case: one pass, plain adds
                v = by_bytes.get(k)
                if v is None:
                    by_bytes[k] = [kb, 0]
                else:
                    v[0] += kb
                w = by_packets.get(k)
                if w is None:
                    by_packets[k] = [kp, 0]
                else:
                    w[0] += kp
            return
        self._add("bytes", {k: [v, 0] for k, v in zip(keys, b, strict=True)}, False)
        self._add("packets", {k: [v, 0] for k, v in zip(keys, p, strict=True)}, False)

    def partial(self) -> dict[str, Any]:
        """Both summaries with their full flags."""
        return {
            m: {"full": self.full[m], "items": [[key_text(k), c, e] for k, (c, e) in s.items()]}
            for m, s in self.summaries.items()
        }

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Merge another node's summaries."""
        for m in ("bytes", "packets"):
            part = partial.get(m) or {}
            other = {text_key(t): [int(c), int(e)] for t, c, e in part.get("items", [])}
            self._add(m, other, bool(part.get("full")))

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The n largest by bytes or packets; `exact` says whether counts are exact."""
        by = str(params.get("by", "bytes"))
        if by not in self.summaries:
            raise ValueError(f"by must be bytes or packets, not {by!r}")
        n = int(params.get("n", 10))
        s = self.summaries[by]
        rows = sorted(s.items(), key=lambda kv: (-kv[1][0], key_text(kv[0])))[: n if n > 0 else None]
        return {
            "app": self.name, "by": by, "exact": not self.full[by], "capacity": self.capacity,
            "top": [{"key": key_text(k), by: c, "error": e} for k, (c, e) in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Entries in both summaries."""
        return sum(len(s) for s in self.summaries.values())
