"""Replay the inputs kept in tests/fuzz/crashers/<harness>/ through the collector's harnesses: each once
raised out of its harness.  Files named crafted_* were built by hand from the issue's findings (or a
quick random search) in the harness's input format; the others are what atheris found."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

CRASHERS = Path(__file__).resolve().parents[1] / "fuzz" / "crashers"
HARNESSES = ("ipfix", "netflow_v9", "netflow_v5", "grpc_batch")
CASES = [(h, p) for h in HARNESSES for p in sorted((CRASHERS / h).glob("*")) if p.is_file()]


@pytest.mark.parametrize(("harness", "path"), CASES, ids=[f"{h}/{p.name}" for h, p in CASES])
def test_crasher_replays_cleanly(harness: str, path: Path) -> None:
    mod = importlib.import_module(f"fuzz.harness_{harness}")
    mod.test_one_input(path.read_bytes())


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_seeds_run_cleanly(harness: str) -> None:
    mod = importlib.import_module(f"fuzz.harness_{harness}")
    seeds = mod.seeds()
    assert seeds
    for s in seeds:
        mod.test_one_input(s)
