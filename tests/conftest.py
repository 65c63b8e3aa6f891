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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for pytest-xdist's `--dist loadgroup` (scripts/test.sh): a module runs whole on
    one worker, so its module fixtures are built once and its tests keep their order; the test bed's
    modules (tests/realnet) share one worker, whose session fixture builds the bed once."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group = "realnet" if module.startswith("tests/realnet/") else module
        item.add_marker(pytest.mark.xdist_group(group))

