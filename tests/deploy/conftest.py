"""Fixtures: the chart rendered once per values set by `helm template`."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy.chart import VALUE_SETS, documents, helm_template


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Values-set name -> the manifests `helm template` renders (parsed)."""
    return {name: documents(helm_template(files)) for name, files in VALUE_SETS.items()}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test, stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
