"""Fixtures: the Go renderer built once, and the chart rendered once per values set."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.chart import VALUE_SETS, build_renderer, documents, go_render


@pytest.fixture(scope="session")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled helm/tools/render binary."""
    return build_renderer(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="session")
def rendered(renderer: Path) -> dict[str, list[dict[str, Any]]]:
    """Values-set name -> the rendered manifests (parsed)."""
    return {name: documents(go_render(renderer, files)) for name, files in VALUE_SETS.items()}


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
