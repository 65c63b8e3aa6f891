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


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """Under `-n N --dist loadfile` (scripts/test.sh): each test module runs whole on one worker (its
    module fixtures are built once, its tests keep their order), and the test bed's modules
    (tests/realnet) share one worker, whose session fixture builds the bed once."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/realnet" if module.startswith("tests/realnet/") else module

    return ModuleScheduling(config, log)
