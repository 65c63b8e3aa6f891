"""TCP reassembly with many holes: one flow of n 1-byte out-of-order segments (issue #15, finding 4).

Each case runs in a child process with PYTHONPATH set to a source tree, so this tree and the code
before the change (by default commit BASELINE_REV, extracted with `git archive`; or any checkout with
`--baseline-tree`) are measured in the same run on the same crafted input (bench/crafted_floods.py).
The baseline is quadratic in holes, so it runs at `--baseline-n` holes (this tree at both sizes).
The figure is the in-process time of Abstractor.process_frames + finish (decode included) for the
whole capture as one batch, in CPU seconds of the process (time.process_time: the machine is
shared, wall time says more about the neighbours), best of `--runs`.

    PYTHONPATH=. python -m bench.bench_reassembly [--baseline-tree DIR] [--n 40000] [--baseline-n 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Result

HERE = Path(__file__).resolve().parent.parent
BASELINE_REV = "8465e3f"  # main before the out-of-order buffer became runs with a heap (issue #15)

CHILD = r"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("crafted_floods", sys.argv[1] + "/bench/crafted_floods.py")
crafted = importlib.util.module_from_spec(spec)
spec.loader.exec_module(crafted)
ooo_holes = crafted.ooo_holes
from celltap.cell.abstractor import Abstractor
from celltap.cell.sftap_config import parse_config
from celltap.pcap.batch import LINKTYPE_RAW, FrameBatch
n, descending, runs = int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
frames = ooo_holes(n, descending)
cfg = {"global": {"ooo_limit": 1 << 30, "ooo_memory": 1 << 30}}
cfg["tcp_default"] = {"if": "default", "proto": "TCP"}
best = 1e9
for _ in range(runs):
    a = Abstractor(parse_config(cfg))
    batch = FrameBatch.from_frames([f for _, f in frames], [t for t, _ in frames], LINKTYPE_RAW)
    t0 = time.process_time()
    a.process_frames(batch)
    a.finish()
    best = min(best, time.process_time() - t0)
    got = sum(len(p) for p in a.sinks["tcp/default"].parts)
print(json.dumps({"seconds": best, "gap_bytes": a.tcp_stats.gap_bytes, "out_bytes": got}))
"""


def measure(tree: Path, n: int, descending: bool, runs: int) -> dict:
    """Run one case in a child process importing `tree` (the crafted input comes from this tree)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(HERE), str(n), "1" if descending else "0", str(runs)],
        env=env,
        cwd=tree,  # `python -c` puts the working directory first on sys.path
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"{tree}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extract(rev: str, into: Path) -> Path:
    """The source tree of commit `rev` of this repository, unpacked into `into`."""
    archive = subprocess.run(["git", "-C", str(HERE), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the cases and print one line per figure (bench.run calls this without arguments)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--baseline-tree", type=Path, help="source tree to compare (default: BASELINE_REV)")
    p.add_argument("--baseline-n", type=int, default=4_000, help="holes for the baseline (it is quadratic)")
    p.add_argument("--n", type=int, default=40_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv or [])
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline_tree is None:
            args.baseline_tree = _extract(BASELINE_REV, Path(tmp))
        return _cases(args)


def _cases(args: argparse.Namespace) -> list[Result]:
    results = []
    for desc in (False, True):
        order = "descending" if desc else "ascending"
        for n in sorted({args.baseline_n, args.n}):
            r = measure(HERE, n, desc, args.runs)
            note = f"gap_bytes={r['gap_bytes']}"
            res = Result(f"reassembly {n} holes {order}", r["seconds"], "s", note=note)
            if n == args.baseline_n:
                b = measure(args.baseline_tree, n, desc, 1)
                res.baseline_name = f"before ({BASELINE_REV}), {n} holes"
                res.baseline_value = b["seconds"]
            results.append(res)
            line = f"{res.name}: {res.value:.3f} s"
            if res.baseline_value:
                slower = res.baseline_value / res.value
                line += f"   baseline {res.baseline_value:.3f} s (x{slower:.0f} slower)"
            print(line, flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
