"""The cluster YAML of `celltap demo` and `celltap up`: what to start on this host, checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from celltap.collector.config import RANGES as COLLECTOR_RANGES
from celltap.config import yaml_problem
from celltap.config_schema import check
from celltap.defaults import default_file

ANALYZERS = ("http", "dns", "tls", "smtp", "sip")
TOP_KEYS = {
    "cluster",
    "registry",
    "lease_ttl",
    "hash_seed",
    "capture",
    "replay",
    "cells",
    "collector",
    "nodes",
    "run_dir",
}


class SpecError(ValueError):
    """A bad cluster YAML; the message names the key."""


def _range(lo: float, hi: float, kind: str = "integer") -> dict[str, Any]:
    return {"type": kind, "minimum": lo, "maximum": hi}


# Ranges of the numbers, checked first (celltap.config_schema; the tests walk it with values just
# outside each range). The collector's `routing:` section is the collector config's (RANGES there).
RANGES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "lease_ttl": _range(1, 86400, "number"),
        "hash_seed": _range(0, 2**64 - 1),
        "replay": {
            "type": ["object", "null"],
            "properties": {"loops": _range(0, 10**6), "pps": _range(0, 10**8)},
        },
        "cells": {
            "type": ["object", "null"],
            "properties": {
                "count": _range(1, 64),
                "reader_buffer": {"type": ["integer", "null"], "minimum": 4096, "maximum": 1 << 40},
            },
        },
        "collector": {
            "type": ["object", "null"],
            "properties": {"count": _range(0, 16), "routing": COLLECTOR_RANGES["properties"]["routing"]},
        },
        "nodes": {"type": ["object", "null"], "properties": {"count": _range(0, 64)}},
    },
}


@dataclass(frozen=True)
class AnalyzerSpec:
    """One analyzer process per cell reading one interface."""

    analyzer: str
    socket: str  # tcp/http, udp/dns, ...

    @property
    def label(self) -> str:
        """A name usable in file names: http-tcp-http."""
        return f"{self.analyzer}-{self.socket.replace('/', '-')}"


@dataclass
class ClusterSpec:
    """A local cluster: registry, capture, and how many of each component."""

    cluster: str = "demo"
    registry: str = "file://{run}/registry"
    lease_ttl: float = 5.0
    hash_seed: int = 0
    capture: str = "feed"
    replay_loops: int = 1
    replay_pps: float = 0.0
    cells: int = 3
    sftap: Path = field(default_factory=lambda: default_file("sftap.yaml"))
    reader_buffer: int | None = None
    analyzers: list[AnalyzerSpec] = field(default_factory=list)
    store: dict[str, int] | None = None  # packet store per cell (file_bytes, max_bytes, max_age); None: off
    collectors: int = 1
    routing: dict[str, Any] = field(default_factory=dict)
    nodes: int = 2
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    run_dir: str | None = None

    def registry_url(self, run_dir: Path) -> str:
        """The registry URL with `{run}` replaced."""
        return self.registry.replace("{run}", str(run_dir))

    @property
    def fed(self) -> bool:
        """True when the launcher feeds the incubator through a FIFO (demo traffic or pcap:FILE)."""
        return self.capture == "feed" or self.capture.startswith("pcap:")


def _section(data: dict[str, Any], key: str, known: set[str]) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, dict):
        raise SpecError(f"{key}: expected a mapping")
    unknown = set(value) - known
    if unknown:
        raise SpecError(f"{key}.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(known))})")
    return value


def _int(where: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise SpecError(f"{where}: expected an integer >= {lo}, got {value!r}")
    return value


def spec_from_dict(data: Any, base: Path | None = None) -> ClusterSpec:
    """Check a parsed cluster YAML; relative file names resolve against `base`, then the embedded defaults."""
    if not isinstance(data, dict):
        raise SpecError("cluster config: the top level must be a mapping")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise SpecError(f"{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    check(data, RANGES, "", SpecError)
    s = ClusterSpec()
    s.cluster = str(data.get("cluster", s.cluster))
    s.registry = str(data.get("registry", s.registry))
    if not s.registry.startswith(("file://", "etcd://", "etcds://")):
        raise SpecError(f"registry: expected file:///DIR or etcd://HOST:PORT, got {s.registry!r}")
    from celltap.registry.errors import RegistryConfigError
    from celltap.registry.url import check_url

    try:
        check_url(s.registry.replace("{run}", "/run"))
    except RegistryConfigError as exc:
        raise SpecError(f"registry: {exc}") from None
    try:
        s.lease_ttl = float(data.get("lease_ttl", s.lease_ttl))
    except (TypeError, ValueError):
        raise SpecError(f"lease_ttl: expected seconds, got {data.get('lease_ttl')!r}") from None
    s.hash_seed = _int("hash_seed", data.get("hash_seed", 0), 0)
    s.capture = str(data.get("capture", s.capture))
    if not (s.capture == "feed" or s.capture.startswith(("pcap:", "afpacket:"))):
        raise SpecError(f"capture: expected pcap:FILE or afpacket:IFACE, got {s.capture!r}")
    if s.capture.startswith("pcap:"):
        path = Path(s.capture[5:])
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise SpecError(f"capture: {path} is not a file")
        s.capture = f"pcap:{path}"
    replay = _section(data, "replay", {"loops", "pps"})
    s.replay_loops = _int("replay.loops", replay.get("loops", 1), 0)
    s.replay_pps = float(_int("replay.pps", replay.get("pps", 0), 0))
    cells = _section(data, "cells", {"count", "sftap", "reader_buffer", "analyzers", "store"})
    s.cells = _int("cells.count", cells.get("count", s.cells), 1)
    if "sftap" in cells:
        name = Path(str(cells["sftap"]))
        candidates = [name] if name.is_absolute() else [p / name for p in ([base] if base else [])]
        candidates.append(default_file("sftap.yaml").parent / name)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SpecError(f"cells.sftap: {name} not found")
        s.sftap = found
    if cells.get("reader_buffer") is not None:
        s.reader_buffer = _int("cells.reader_buffer", cells["reader_buffer"], 4096)
    if "store" in cells:
        store = cells["store"] if cells["store"] is not None else {}
        if not isinstance(store, dict) or set(store) - {"file_bytes", "max_bytes", "max_age"}:
            raise SpecError(f"cells.store: expected a map of file_bytes, max_bytes, max_age, got {store!r}")
        s.store = {k: _int(f"cells.store.{k}", v, 0) for k, v in store.items()}
    for i, a in enumerate(cells.get("analyzers") or []):
        if not isinstance(a, dict) or set(a) != {"analyzer", "socket"}:
            raise SpecError(f"cells.analyzers[{i}]: expected {{analyzer: NAME, socket: PROTO/IF}}, got {a!r}")
        if a["analyzer"] not in ANALYZERS:
            raise SpecError(
                f"cells.analyzers[{i}].analyzer: one of {', '.join(ANALYZERS)}, got {a['analyzer']!r}"
            )
        sock = str(a["socket"])
        if sock.count("/") != 1 or sock.split("/")[0] not in ("tcp", "udp", "icmp"):
            raise SpecError(f"cells.analyzers[{i}].socket: expected tcp/IF or udp/IF, got {sock!r}")
        s.analyzers.append(AnalyzerSpec(a["analyzer"], sock))
    col = _section(data, "collector", {"count", "routing"})
    s.collectors = _int("collector.count", col.get("count", 1), 0)
    s.routing = dict(col.get("routing") or {})
    nodes = _section(data, "nodes", {"count", "apps"})
    s.nodes = _int("nodes.count", nodes.get("count", s.nodes), 0)
    apps = nodes.get("apps") or {}
    if not isinstance(apps, dict):
        raise SpecError("nodes.apps: expected a mapping of app name to {kind, key}")
    s.apps = {str(k): dict(v or {}) for k, v in apps.items()}
    from celltap.collector.apps.base import AppConfigError, make_app

    for name, app in s.apps.items():  # checked here, not first by a node the launcher started
        try:
            make_app(name, app)
        except AppConfigError as exc:
            raise SpecError(f"nodes.{exc}") from None
    if s.collectors and not s.nodes:
        raise SpecError("nodes.count: a collector needs at least one analysis node")
    s.run_dir = None if data.get("run_dir") is None else str(data["run_dir"])
    return s


def load_spec(path: str | Path) -> ClusterSpec:
    """Read and check a cluster YAML file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise SpecError(f"{p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: {yaml_problem(exc)}") from None
    return spec_from_dict(data, p.resolve().parent)
