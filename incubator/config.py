"""Incubator configuration: YAML checked against a strict schema (an unknown key is one clear error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from celltap.incubator.dicap import DEFAULT_BUCKETS_LOG2, MAX_BUCKETS_LOG2
from celltap.incubator.separator import NONIP_POLICIES, PARTITIONS

MODES = ("mirror", "inline", "dicap")


class ConfigError(ValueError):
    """A configuration problem, phrased as one line naming the key."""


# key -> (type or nested schema, default).  Lists of cells are checked item by item.
CELL_SCHEMA: dict[str, tuple[Any, Any]] = {"id": (str, None), "output": (str, None), "weight": (int, 1)}
SCHEMA: dict[str, tuple[Any, Any]] = {
    "mode": (str, "mirror"),
    "capture": (str, None),  # afpacket:IF | netmap:IF | pcap:FILE (mirror, dicap; side A of inline)
    "peer": (str, None),  # inline: the other side of the bridge, afpacket:IF
    "fanout_group": (int, None),  # afpacket: PACKET_FANOUT group id shared by incubator processes
    "cells": (list, None),  # static cells: [{id, output, weight}]
    "registry": (
        {"url": (str, None), "cluster": (str, "default"), "id": (str, None), "output_key": (str, "input")},
        None,
    ),
    "non_ip": (str, "cell0"),
    "hash_seed": (int, 0),
    "decapsulate": (bool, True),  # GRE / ERSPAN / VXLAN / IP-in-IP frames go by their inner flow
    "partition": (str, None),  # xxh64 (default; dicap mode: eBPF filter) | dicap (cBPF filter)
    "metrics_port": (int, None),
    "metrics_addr": (str, "127.0.0.1"),  # 0.0.0.0 / :: to be scraped from other hosts
    "fragments": (
        {"timeout_s": (float, 30.0), "max_bytes": (int, 16 << 20), "max_datagrams": (int, 65536)},
        {},
    ),
    "flows": (
        {"idle_timeout_s": (float, 60.0), "close_linger_s": (float, 2.0), "max_flows": (int, 1 << 20)},
        {},
    ),
    "batch": ({"frames": (int, 4096), "timeout_ms": (int, 10), "ring_mb": (int, 64)}, {}),
    # The DiCAP partition's parameters (partition: dicap, and mode: dicap's kernel filter); `cell`
    # and `output` only in dicap mode (which cell this process is, where its share goes).
    "dicap": (
        {
            "cell": (str, None),
            "output": (str, None),
            "buckets_log2": (int, DEFAULT_BUCKETS_LOG2),
            "ports": (bool, True),
        },
        {},
    ),
}


def _check(data: Any, schema: dict[str, tuple[Any, Any]], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"config {where or 'file'}: expected a mapping, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in schema:
            raise ConfigError(f"config key {path!r} is unknown (known here: {', '.join(sorted(schema))})")
        typ, _default = schema[key]
        if isinstance(typ, dict):
            out[key] = _check(value, typ, path)
        elif typ is float and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
        elif not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise ConfigError(f"config key {path!r} must be {typ.__name__}, got {value!r}")
        else:
            out[key] = value
    for key, (typ, default) in schema.items():
        if key not in out:
            sub = f"{where}.{key}" if where else key
            out[key] = _check({}, typ, sub) if isinstance(typ, dict) and default is not None else default
    return out


@dataclass
class Config:
    """The checked configuration, with every default filled in."""

    raw: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]


def parse_config(data: Any) -> Config:
    """Check a parsed YAML document; raises ConfigError naming the first bad key."""
    if data is None:
        data = {}
    cfg = _check(data, SCHEMA, "")
    if cfg["mode"] not in MODES:
        raise ConfigError(f"config key 'mode' must be one of {', '.join(MODES)}, got {cfg['mode']!r}")
    if cfg["non_ip"] not in NONIP_POLICIES:
        raise ConfigError(
            f"config key 'non_ip' must be one of {', '.join(NONIP_POLICIES)}, got {cfg['non_ip']!r}"
        )
    _check_partition(cfg)
    if cfg["capture"] is None:
        raise ConfigError("config key 'capture' is required (afpacket:IF, netmap:IF or pcap:FILE)")
    if cfg["mode"] == "inline" and cfg["peer"] is None:
        raise ConfigError("config key 'peer' is required in inline mode (the other side of the bridge)")
    cells = cfg["cells"]
    if cells is not None:
        checked = []
        for i, cell in enumerate(cells):
            c = _check(cell, CELL_SCHEMA, f"cells[{i}]")
            for req in ("id", "output"):
                if c[req] is None:
                    raise ConfigError(f"config key 'cells[{i}].{req}' is required")
            checked.append(c)
        cfg["cells"] = checked
    if cfg["mode"] == "dicap":
        if cfg["dicap"]["cell"] is None:
            raise ConfigError(
                "config key 'dicap.cell' is required in dicap mode (which cell this process is)"
            )
    elif cells is None and cfg["registry"] is None:
        raise ConfigError("config needs 'cells' or 'registry' (where the cells are)")
    if cfg["registry"] is not None and cfg["registry"]["url"] is None:
        raise ConfigError("config key 'registry.url' is required (file:///path or etcd://host:port)")
    return Config(cfg)


def _check_partition(cfg: dict[str, Any]) -> None:
    part = cfg["partition"]
    if part is not None and part not in PARTITIONS:
        raise ConfigError(f"config key 'partition' must be one of {', '.join(PARTITIONS)}, got {part!r}")
    if part is None:
        # dicap mode too: its eBPF socket filter computes the incubator's own partition
        cfg["partition"] = "xxh64"
    b = cfg["dicap"]["buckets_log2"]
    if not 1 <= b <= MAX_BUCKETS_LOG2:
        raise ConfigError(
            f"config key 'dicap.buckets_log2' must be 1..{MAX_BUCKETS_LOG2} "
            f"(a longer cBPF filter would pass the kernel's 4096 instructions), got {b}"
        )


def load_config(path: str) -> Config:
    """Read and check a YAML config file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
    return parse_config(data)
