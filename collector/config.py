"""Collector configuration (YAML) with a small schema check: a bad key is one clear error line."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celltap.config import ConfigError, read_yaml
from celltap.config_schema import check as check_ranges

__all__ = [
    "CollectorConfig",
    "ConfigError",
    "ListenAddress",
    "config_from_dict",
    "load_config",
    "parse_listen",
]


@dataclass(frozen=True)
class ListenAddress:
    """udp://ADDR:PORT or tcp://ADDR:PORT."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


def parse_listen(text: str, key: str = "listen") -> ListenAddress:
    """Parse a listen URL; raises ConfigError naming `key`."""
    u = urlsplit(str(text))
    if u.scheme not in ("udp", "tcp"):
        raise ConfigError(f"{key}: {text!r} must start with udp:// or tcp://")
    try:
        port = u.port
    except ValueError as exc:
        raise ConfigError(f"{key}: {text!r}: {exc}") from None
    if port is None or not u.hostname:
        raise ConfigError(f"{key}: {text!r} needs ADDR:PORT")
    return ListenAddress(u.scheme, u.hostname, port)


@dataclass
class CollectorConfig:
    """What `celltap collector --config F` reads."""

    # This host only unless configured: remote routers need `listen: udp://0.0.0.0:4739` (docs/security.md)
    listen: list[ListenAddress] = field(default_factory=lambda: [ListenAddress("udp", "127.0.0.1", 4739)])
    workers: int = 2
    receive_buffer: int = 32 * 1024 * 1024
    allow: list[str] = field(default_factory=list)
    template_expiry: float = 1800.0
    max_templates_per_domain: int = 1024
    max_domains: int = 16384
    # Real-memory bounds of each UDP worker's state (templates + domains): with the default 2 workers
    # about 2 x 256 MiB at most, which leaves room in a 4 GiB pod for buffers and batches.
    max_state_bytes: int = 256 << 20
    max_exporter_bytes: int = 32 << 20  # one exporter address's share of a worker's state
    max_domains_per_exporter: int = 1024
    domain_expiry: float = 3600.0  # domains silent this long are forgotten (templates and sequence)
    state_dir: str | None = None  # sequence numbers and templates kept across restarts (see docs)
    registry: str | None = None
    cluster: str = "default"
    metrics_port: int = 9464
    metrics_addr: str = "127.0.0.1"
    collector_id: str | None = None
    batch_datagrams: int = 256
    drain_seconds: float = 2.0  # on SIGTERM, decode what already reached the sockets for this long
    route_to_nodes: bool = True  # with a registry: route records over the ring to the analysis nodes
    routing: dict[str, Any] = field(default_factory=dict)  # ClusterRouter settings (RouterConfig)
    tls: dict[str, Any] = field(default_factory=dict)  # TLSConfig for gRPC to the nodes and for etcd
    # etcd's own TLS when it differs from gRPC's: None follows `tls`; {} (or null): plain etcd://
    registry_tls: dict[str, Any] | None = None


def _int(key: str, v: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{key}: must be an integer {rng}, got {v!r}")
    return v


def _num(key: str, v: Any, lo: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < lo:
        raise ConfigError(f"{key}: must be a number >= {lo}, got {v!r}")
    return float(v)


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: must be a non-empty string, got {v!r}")
    return v


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: must be true or false, got {v!r}")
    return v


def _mapping(key: str, v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{key}: must be a mapping, got {v!r}")
    return dict(v)


def _listen(key: str, v: Any) -> list[ListenAddress]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{key}: must be a URL or a non-empty list of udp:// / tcp:// URLs")
    return [parse_listen(x, f"{key}[{i}]") for i, x in enumerate(items)]


def _allow(key: str, v: Any) -> list[str]:
    if not isinstance(v, list):
        raise ConfigError(f"{key}: must be a list of addresses or networks")
    for i, x in enumerate(v):
        try:
            ipaddress.ip_network(str(x), strict=False)
        except ValueError:
            raise ConfigError(f"{key}[{i}]: {x!r} is not an address or network") from None
    return [str(x) for x in v]


def _registry(key: str, v: Any) -> str | None:
    if v is None:
        return None
    from celltap.registry.errors import RegistryConfigError
    from celltap.registry.url import check_url

    try:
        check_url(_str(key, v))
    except RegistryConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return v


def _range(lo: float, hi: float, kind: str = "integer") -> dict[str, Any]:
    return {"type": kind, "minimum": lo, "maximum": hi}


# Ranges of the numbers, checked first (celltap.config_schema; the tests walk it with values just
# outside each range). The `routing:` section's keys are RouterConfig's (collector/cluster.py).
RANGES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "workers": _range(1, 64),
        "receive_buffer": _range(4096, 2**31 - 1),
        "template_expiry": _range(1, 10**7, "number"),
        "max_templates_per_domain": _range(1, 1 << 20),
        "max_domains": _range(1, 1 << 24),
        "metrics_port": _range(0, 65535),
        "batch_datagrams": _range(1, 65536),
        "drain_seconds": _range(0, 3600, "number"),
        "max_state_bytes": _range(1 << 20, 1 << 40),
        "max_exporter_bytes": _range(64 << 10, 1 << 40),
        "max_domains_per_exporter": _range(1, 1 << 24),
        "domain_expiry": _range(1, 10**7, "number"),
        "routing": {
            "type": ["object", "null"],
            "properties": {
                "batch_records": _range(1, 1 << 24),
                "flush_interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                "max_pending_records": _range(1, 1 << 36),
                "max_pending_bytes": _range(1 << 20, 1 << 44),
                "window": _range(1, 1024),
                "seed": _range(0, 2**64 - 1),
                "replication": {"type": "boolean"},
                "close_timeout": _range(0, 3600, "number"),
            },
        },
    },
}

_SCHEMA = {
    "listen": _listen,
    "workers": lambda k, v: _int(k, v, 1, 64),
    "receive_buffer": lambda k, v: _int(k, v, 4096),
    "allow": _allow,
    "template_expiry": lambda k, v: _num(k, v, 1),
    "max_templates_per_domain": lambda k, v: _int(k, v, 1),
    "max_domains": lambda k, v: _int(k, v, 1),
    "max_state_bytes": lambda k, v: _int(k, v, 1 << 20),
    "max_exporter_bytes": lambda k, v: _int(k, v, 64 << 10),
    "max_domains_per_exporter": lambda k, v: _int(k, v, 1),
    "domain_expiry": lambda k, v: _num(k, v, 1),
    "state_dir": lambda k, v: None if v is None else _str(k, v),
    "registry": _registry,
    "cluster": _str,
    "metrics_port": lambda k, v: _int(k, v, 0, 65535),
    "metrics_addr": _str,
    "collector_id": lambda k, v: None if v is None else _str(k, v),
    "batch_datagrams": lambda k, v: _int(k, v, 1, 65536),
    "drain_seconds": lambda k, v: _num(k, v, 0),
    "route_to_nodes": _bool,
    "routing": lambda k, v: _mapping(k, v),
    "tls": lambda k, v: _mapping(k, v),
    "registry_tls": lambda k, v: _mapping(k, v),
}


def config_from_dict(data: Any, source: str = "config") -> CollectorConfig:
    """Validate a parsed YAML mapping into a CollectorConfig (ConfigError on the first bad key)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    check_ranges(data, RANGES, source)
    cfg = CollectorConfig()
    for key, value in data.items():
        check = _SCHEMA.get(key)
        if check is None:
            raise ConfigError(f"{source}: unknown key {key!r} (known: {', '.join(sorted(_SCHEMA))})")
        setattr(cfg, key, check(key, value))
    if cfg.max_exporter_bytes > cfg.max_state_bytes:
        raise ConfigError(
            f"max_exporter_bytes: {cfg.max_exporter_bytes} is more than max_state_bytes {cfg.max_state_bytes}"
        )
    return cfg


def load_config(path: str | Path) -> CollectorConfig:
    """Read and validate a collector YAML file."""
    return config_from_dict(read_yaml(path), str(path))
