"""Embedded default configurations: the demo's cluster YAML and the cells' SF-TAP rules."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def default_file(name: str) -> Path:
    """Path of an embedded default file (e.g. 'demo-cluster.yaml', 'sftap.yaml')."""
    path = HERE / name
    if not path.is_file():
        raise FileNotFoundError(f"no embedded default named {name!r} in {HERE}")
    return path
