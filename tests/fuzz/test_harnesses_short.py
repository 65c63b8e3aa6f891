"""CI's short fuzz run: every fuzz/harness_*.py for a few seconds under atheris, in its own process.

Discovery is by file name, so a harness another branch adds is run here too. A new crasher fails
the test (and is written to a temporary folder, not the tree: `python fuzz/run.py NAME` keeps it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.run import harness_names

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 2


def run_fuzz(*args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess, dict]:
    """Run fuzz/run.py; return the process and its RESULT record."""
    p = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    return p, json.loads(lines[-1][7:]) if lines else {}


def test_every_parser_family_has_a_harness() -> None:
    assert {"http", "dns", "tls", "smtp", "sip", "events"} <= set(harness_names())


@pytest.mark.parametrize("name", harness_names())
def test_harness_runs_without_new_crashers(name: str, tmp_path: Path) -> None:
    p, result = run_fuzz(name, "--seconds", str(SECONDS), "--crash-dir", str(tmp_path))
    assert result, p.stdout + p.stderr
    assert result["error"] == "", result["error"]
    assert result["new_crashers"] == [], (
        f"fuzzing {name} found a crash; reproduce with `python fuzz/run.py {name}`:\n{p.stdout}"
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert result["runs"] > 20, result  # it really executed inputs (seeds + mutations)
    assert result["new_units"] > 0, result  # coverage feedback works: mutations reached new code


def test_runner_finds_keeps_and_dedupes_a_crash(tmp_path: Path) -> None:
    """A planted bug: the runner must report it, keep one crasher that replays, then call it known."""
    harness = tmp_path / "harness_planted.py"
    harness.write_text(
        "def test_one_input(data: bytes) -> None:\n"
        "    if data[:3] == b'BUG':\n"
        "        raise ValueError('planted')\n\n\n"
        "def seeds() -> list[bytes]:\n"
        "    return [b'BUX', b'hello']\n"
    )
    crashes = tmp_path / "crashers"
    p, result = run_fuzz(str(harness), "--seconds", "30", "--crash-dir", str(crashes))
    assert p.returncode == 1, p.stdout + p.stderr
    assert len(result["new_crashers"]) == 1 and "ValueError" in result["new_crashers"][0], result
    kept = list((crashes / "planted").iterdir())
    assert len(kept) == 1 and kept[0].read_bytes()[:3] == b"BUG"
    p, result = run_fuzz(str(harness), "--seconds", "30", "--crash-dir", str(crashes))
    assert p.returncode == 0 and result["new_crashers"] == [], p.stdout
    assert result["duplicate_crashers"] >= 1, result
    assert len(list((crashes / "planted").iterdir())) == 1
