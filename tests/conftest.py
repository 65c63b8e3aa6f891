"""Shared pytest fixtures: tool discovery and skip reasons that say why."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """Return the path of an external tool, or skip the test saying which tool is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed; scripts/setup.sh --system installs it")
    return path


def require_root() -> None:
    """Skip unless running as root (network namespaces and raw sockets need it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces / raw sockets")
