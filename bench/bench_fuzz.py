"""The long fuzz run: every harness in fuzz/ under atheris for 1,000,000 inputs or a time budget.

Each harness runs through `fuzz/run.py` (coverage-guided, its seeds, crashers kept in
tests/fuzz/crashers/NAME/), one after another on the shared machine. The figures per harness: inputs
executed, inputs per second (over the workers' wall time, start-up included), new corpus units, and
new crashers (each one a bug to fix; the run's stdout names them).

Budget: BENCH_FUZZ_RUNS inputs (default 1,000,000) or BENCH_FUZZ_SECONDS seconds per harness
(default 900), whichever ends first; BENCH_FUZZ_HARNESSES=http,dns limits the set. A full run of every
harness takes up to harnesses x BENCH_FUZZ_SECONDS: give bench.run a matching --timeout, e.g.
`python -m bench.run --timeout 8000 bench_fuzz`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Result  # noqa: E402
from fuzz.run import harness_names  # noqa: E402


def fuzz_one(name: str, runs: int, seconds: float) -> dict:
    """Run one harness with the budget; its RESULT record (or an error)."""
    cmd = [
        sys.executable,
        str(ROOT / "fuzz" / "run.py"),
        name,
        "--runs",
        str(runs),
        "--seconds",
        str(seconds),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds * 3 + 600)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"harness": name, "error": (p.stderr or p.stdout)[-1000:]}


def main() -> list[Result]:
    """Fuzz every harness with the budget and report its figures."""
    runs = int(os.environ.get("BENCH_FUZZ_RUNS", 1_000_000))
    seconds = float(os.environ.get("BENCH_FUZZ_SECONDS", 900))
    wanted = os.environ.get("BENCH_FUZZ_HARNESSES")
    names = [n for n in harness_names() if not wanted or n in wanted.split(",")]
    out = []
    for name in names:
        t0 = time.monotonic()
        r = fuzz_one(name, runs, seconds)
        wall = time.monotonic() - t0
        print(json.dumps(r), flush=True)
        if r.get("error"):
            out.append(Result(f"fuzz {name}", 0, "inputs/s", note=f"error: {r['error'][:300]}"))
            continue
        stop = "input budget" if r["runs"] >= runs else f"time budget {seconds:.0f} s"
        crashers = "; ".join(r["new_crashers"]) or "none"
        out.append(
            Result(
                f"fuzz {name}",
                r["exec_per_second"],
                "inputs/s",
                note=(
                    f"{r['runs']:,} inputs in {r['seconds']:.0f} s ({stop}; wall {wall:.0f} s), "
                    f"{r['new_units']} new corpus units, {r['workers']} worker start(s), "
                    f"max_len {r.get('max_len') or 'libFuzzer default'}, "
                    f"new crashers: {crashers}, re-found known: {r['duplicate_crashers']}"
                ),
                extra=r,
            )
        )
    return out


if __name__ == "__main__":
    for res in main():
        print(res)
