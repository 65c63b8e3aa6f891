"""`celltap node --config F`: the analysis node's YAML configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celltap.collector.apps.base import App, AppConfigError, make_app

from celltap.config import ConfigError, read_yaml
from celltap.config_schema import check
from celltap.registry.errors import RegistryConfigError
from celltap.registry.tls import TLSConfig
from celltap.registry.url import check_url

DEFAULT_APPS: dict[str, dict[str, Any]] = {
    "volume": {"kind": "volume", "key": "src"},
    "top_talkers": {"kind": "top_talkers", "key": "src"},
    "app_mix": {"kind": "app_mix", "key": "flow"},
    "traffic_matrix": {"kind": "traffic_matrix", "key": "src"},
    "port_scan": {"kind": "port_scan", "key": "src"},
    "syn_flood": {"kind": "syn_flood", "key": "dst"},
    "users": {"kind": "user_accounting", "key": "src"},
}


class NodeConfigError(ValueError):
    """A bad node config; the message names the key."""


# Ranges of the numbers (celltap.config_schema; the tests walk it with values just outside each).
RANGES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "weight": {"type": "integer", "minimum": 1, "maximum": 1000},
        "lease_ttl": {"type": "number", "minimum": 1, "maximum": 86400},  # etcd leases count whole seconds
        "grpc_workers": {"type": "integer", "minimum": 1, "maximum": 4096},
    },
}


@dataclass
class NodeConfig:
    """What an analysis node reads; see docs/cluster.md."""

    id: str
    listen: str = "127.0.0.1:50051"
    advertise: str | None = None
    http: str | None = "127.0.0.1:8090"
    registry: str = "file:///tmp/celltap-registry"
    cluster: str = "default"
    weight: int = 1
    lease_ttl: float = 10.0
    grpc_workers: int = 64  # each collector stream holds one for its lifetime
    apps: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_APPS))
    tls: TLSConfig | None = None
    # etcd's own TLS when it differs from gRPC's (`registry_tls: {}`: plain etcd://); unset: `tls`
    registry_tls: TLSConfig | None = None
    registry_tls_set: bool = field(default=False, repr=False)

    @property
    def etcd_tls(self) -> TLSConfig | None:
        """The TLS the registry client uses."""
        return self.registry_tls if self.registry_tls_set else self.tls

    @property
    def grpc_address(self) -> str:
        """The address other processes dial."""
        return self.advertise or self.listen

    def build_apps(self) -> list[App]:
        """One instance of every configured app."""
        return [make_app(name, spec) for name, spec in self.apps.items()]


def _hostport(key: str, v: Any) -> str:
    text = str(v)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise NodeConfigError(f"{key}: expected HOST:PORT, got {text!r}")
    return text


def config_from_dict(data: Any, source: str = "node config") -> NodeConfig:
    """Validate a parsed YAML mapping (NodeConfigError naming the first bad key)."""
    if not isinstance(data, dict):
        raise NodeConfigError(f"{source}: the top level must be a mapping")
    if not data.get("id"):
        raise NodeConfigError(f"{source}: id: required (this node's unique name)")
    known = {f for f in NodeConfig.__dataclass_fields__} - {"registry_tls_set"}
    unknown = set(data) - known
    if unknown:
        raise NodeConfigError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})"
        )
    check(data, RANGES, source, NodeConfigError)
    cfg = NodeConfig(id=str(data["id"]))
    if "/" in cfg.id:
        raise NodeConfigError(f"{source}: id: must not contain '/'")
    for key in ("listen", "advertise", "http"):
        if key in data:
            setattr(cfg, key, None if data[key] is None else _hostport(key, data[key]))
    for key in ("registry", "cluster"):
        if key in data:
            setattr(cfg, key, str(data[key]))
    try:
        check_url(cfg.registry)
    except RegistryConfigError as exc:
        raise NodeConfigError(f"{source}: registry: {exc}") from None
    try:
        if "weight" in data:
            cfg.weight = int(data["weight"])
        if "lease_ttl" in data:
            cfg.lease_ttl = float(data["lease_ttl"])
        if "grpc_workers" in data:
            cfg.grpc_workers = int(data["grpc_workers"])
    except (TypeError, ValueError) as exc:
        raise NodeConfigError(f"{source}: weight/lease_ttl/grpc_workers: {exc}") from None
    if cfg.weight < 1:
        raise NodeConfigError(f"{source}: weight: must be >= 1")
    if "apps" in data:
        apps = data["apps"]
        if not isinstance(apps, dict) or not apps:
            raise NodeConfigError(f"{source}: apps: a non-empty mapping of name -> {{kind: ..., key: ...}}")
        cfg.apps = {str(k): dict(v or {}) for k, v in apps.items()}
    try:
        cfg.tls = TLSConfig.from_mapping(data.get("tls"))
        if "registry_tls" in data:
            cfg.registry_tls = TLSConfig.from_mapping(data["registry_tls"] or None)
            cfg.registry_tls_set = True
        cfg.build_apps()  # validates every app section now, not at the first batch
    except (AppConfigError, RegistryConfigError) as exc:
        raise NodeConfigError(f"{source}: {exc}") from None
    return cfg


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node YAML file."""
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise NodeConfigError(str(exc)) from None
    return config_from_dict(data, str(path))
