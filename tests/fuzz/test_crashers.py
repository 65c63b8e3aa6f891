"""Every crasher the fuzzers ever found (tests/fuzz/crashers/NAME/*) replays through its harness cleanly.

A crasher is kept when `fuzz/run.py NAME` finds it; the fix makes it pass; this keeps it fixed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fuzz.run import harness_names, load_harness

CRASHERS = Path(__file__).resolve().parent / "crashers"
CASES = sorted(p for p in CRASHERS.glob("*/*") if p.is_file())


def test_kept_crashers_belong_to_existing_harnesses() -> None:
    assert {p.parent.name for p in CASES} <= set(harness_names())


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_crasher_replays_cleanly(path: Path) -> None:
    harness = load_harness(path.parent.name)
    started = time.monotonic()
    harness.test_one_input(path.read_bytes())
    assert time.monotonic() - started < 10, "an input that timed out under the fuzzer still takes too long"
