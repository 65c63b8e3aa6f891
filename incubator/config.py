"""Incubator configuration: YAML checked against a strict schema (an unknown key is one clear error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from celltap.incubator.dicap import DEFAULT_BUCKETS_LOG2, MAX_BUCKETS_LOG2
from celltap.incubator.outputs import OutputSpecError, check_output
from celltap.incubator.separator import NONIP_POLICIES, PARTITIONS

from celltap.config import yaml_problem
from celltap.config_schema import check
from celltap.user_errors import UserError

MODES = ("mirror", "inline", "dicap")
U64 = 2**64 - 1


class ConfigError(UserError, ValueError):
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


def _range(lo: float, hi: float, kind: str = "integer") -> dict[str, Any]:
    return {"type": kind, "minimum": lo, "maximum": hi}


# Ranges of the values (types and unknown keys are SCHEMA's job, below): a JSON Schema document that
# celltap.config_schema checks before anything is built; the tests walk it with out-of-range values.
RANGES: dict[str, Any] = {
    "type": "object",
    "properties": {
        "fanout_group": _range(0, 0xFFFF),
        "hash_seed": _range(0, U64),
        "metrics_port": _range(0, 65535),
        "cells": {"type": "array", "items": {"type": "object", "properties": {"weight": _range(1, 1000)}}},
        "fragments": {
            "type": "object",
            "properties": {
                "timeout_s": _range(0.001, 3600, "number"),
                "max_bytes": _range(65536, 2**40),
                "max_datagrams": _range(1, 2**32),
            },
        },
        "flows": {
            "type": "object",
            "properties": {
                "idle_timeout_s": _range(0.001, 86400, "number"),
                "close_linger_s": _range(0, 3600, "number"),
                "max_flows": _range(1, 2**32),
            },
        },
        "batch": {
            "type": "object",
            "properties": {
                "frames": _range(1, 1 << 20),
                "timeout_ms": _range(0, 60_000),
                "ring_mb": _range(1, 65536),
            },
        },
        "dicap": {"type": "object", "properties": {"buckets_log2": _range(1, MAX_BUCKETS_LOG2)}},
    },
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
    check(data, RANGES, "config", ConfigError)
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
            try:
                check_output(c["output"])
            except OutputSpecError as exc:
                raise ConfigError(f"config: cells[{i}].output: {exc}") from None
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
        raise ConfigError(f"config file {path}: {yaml_problem(exc)}") from None
    return parse_config(data)
