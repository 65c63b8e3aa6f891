"""Top talkers by bytes and by packets: weighted space-saving summaries, mergeable.

A summary holds at most `capacity` keys with (count, error).  Update and merge are the same
operation (a batch is an exact summary): counts add, a key missing from a *full* summary is
assumed to have that summary's minimum count (added to both count and error), and the result keeps
the `capacity` largest.  While the distinct keys seen stay within capacity nothing is ever full,
so counts are exact and errors zero.

Measures: `bytes` and `packets` count both directions of biflow records (what a host's flows
carried); `orig_bytes`/`orig_packets` only what the keyed host's flows' originators sent (with key
src: what the host sent as initiator), `resp_bytes`/`resp_packets` what came back. Each measure is
its own summary, so each is exact while its keys fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from celltap.collector.apps.base import App, register_kind
from celltap.collector.apps.columns import address_keys, directed_counters, key_text, sums_by_key, text_key

MEASURES = ("bytes", "packets", "orig_bytes", "resp_bytes", "orig_packets", "resp_packets")

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
        self.summaries: dict[str, Summary] = {m: {} for m in MEASURES}
        self.full: dict[str, bool] = dict.fromkeys(MEASURES, False)

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
        """Add one batch's per-key bytes and packets, both directions and each."""
        fb, rb, fp, rp = directed_counters(records)
        keys, (ob, rb_, op, rp_) = sums_by_key(address_keys(records, self.key), fb, rb, fp, rp)
        columns = {
            "bytes": [a + b for a, b in zip(ob, rb_, strict=True)],
            "packets": [a + b for a, b in zip(op, rp_, strict=True)],
            "orig_bytes": ob, "resp_bytes": rb_, "orig_packets": op, "resp_packets": rp_,
        }  # fmt: skip
        for m, values in columns.items():
            summary = self.summaries[m]
            if not self.full[m] and len(summary) + len(keys) <= self.capacity:
                for k, c in zip(keys, values, strict=True):  # the exact case: plain adds
                    v = summary.get(k)
                    if v is None:
                        summary[k] = [c, 0]
                    else:
                        v[0] += c
            else:
                self._add(m, {k: [c, 0] for k, c in zip(keys, values, strict=True)}, False)

    def partial(self) -> dict[str, Any]:
        """Both summaries with their full flags."""
        return {
            m: {"full": self.full[m], "items": [[key_text(k), c, e] for k, (c, e) in s.items()]}
            for m, s in self.summaries.items()
        }

    def absorb(self, partial: Mapping[str, Any]) -> None:
        """Merge another node's summaries."""
        for m in MEASURES:
            part = partial.get(m) or {}
            other = {text_key(t): [int(c), int(e)] for t, c, e in part.get("items", [])}
            self._add(m, other, bool(part.get("full")))

    def answer(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The n largest by bytes or packets; `exact` says whether counts are exact."""
        by = str(params.get("by", "bytes"))
        if by not in self.summaries:
            raise ValueError(f"by must be one of {', '.join(MEASURES)}, not {by!r}")
        n = int(params.get("n", 10))
        s = self.summaries[by]
        rows = sorted(s.items(), key=lambda kv: (-kv[1][0], key_text(kv[0])))[: n if n > 0 else None]
        return {
            "app": self.name, "by": by, "exact": not self.full[by], "capacity": self.capacity,
            "top": [{"key": key_text(k), by: c, "error": e} for k, (c, e) in rows],
        }  # fmt: skip

    def size(self) -> int:
        """Entries in all summaries."""
        return sum(len(s) for s in self.summaries.values())
