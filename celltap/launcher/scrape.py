"""Read a Prometheus /metrics page into plain sums (for progress, flow control and the summary)."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Samples:
    """Samples of one scrape: (name, sorted label items) -> value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def total(self, name: str, **match: str) -> float:
        """Sum of the samples of `name` whose labels include `match`."""
        want = set(match.items())
        return sum(v for (n, labels), v in self.values.items() if n == name and want <= set(labels))

    def by(self, name: str, *keys: str) -> dict[tuple[str, ...], float]:
        """Sums of `name` grouped by the label values of `keys`."""
        out: dict[tuple[str, ...], float] = {}
        for (n, labels), v in self.values.items():
            if n == name:
                d = dict(labels)
                k = tuple(d.get(key, "") for key in keys)
                out[k] = out.get(k, 0.0) + v
        return out

    def names(self) -> set[str]:
        """Every sample name present."""
        return {n for n, _ in self.values}


def parse(text: str) -> Samples:
    """Parse the text exposition format."""
    s = Samples()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            s.values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return s


def scrape(url: str, timeout: float = 5.0, context: ssl.SSLContext | None = None) -> Samples:
    """GET and parse a /metrics page (https:// verified with `context`); OSError if it cannot be fetched."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return parse(resp.read().decode("utf-8", "replace"))
    except urllib.error.URLError as exc:
        raise OSError(f"{url}: {exc.reason}") from exc
