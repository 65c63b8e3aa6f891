"""Cluster fault matrix, 5 runs in a row: every fault of issue #19, exact every time?

Each run of each fault is a fresh cluster on loopback (real etcd, 3 nodes, 1 collector, 2
exporters at 15k records/s each, the fault 3 s into a 9 s stream; tests/cluster/fault_matrix.py).
Reports, per fault, the runs that were exact, and the worst duplicates and uncounted loss seen.
`python -m bench.bench_faults [--runs N] [FAULT ...]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.cluster import fault_matrix  # noqa: E402
from tests.fixtures_etcd import EtcdServer, _etcd_binary  # noqa: E402


def run_fault(fault: str, runs: int) -> dict:
    """`runs` fresh clusters with `fault`; a row of the result table."""
    exact = dups = lost = 0
    seconds = 0.0
    notes: list[str] = []
    for _ in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix=f"faults-{fault}-"))
        etcd = EtcdServer(_etcd_binary(), str(tmp / "etcd"))
        etcd.start()
        t0 = time.monotonic()
        try:
            out = fault_matrix.run(fault, etcd, tmp)
            exact += out.exact and not out.notes
            dups = max(dups, out.duplicates)
            lost = max(lost, out.uncounted_loss)
            notes += out.notes
            if not out.exact:
                notes.append(repr(out))
        except Exception as exc:  # a run that could not even finish counts as not exact
            notes.append(f"{type(exc).__name__}: {str(exc)[:300]}")
        finally:
            seconds += time.monotonic() - t0
            etcd.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "fault": fault, "runs": runs, "exact runs": exact, "max duplicates": dups,
        "max uncounted loss": lost, "seconds per run": round(seconds / runs, 1),
        "notes": "; ".join(notes)[:400],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """Run the matrix and return its table (bench/run.py renders it)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("faults", nargs="*", default=list(fault_matrix.FAULTS))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv if argv is not None else [])
    rows = []
    for fault in args.faults:
        rows.append(run_fault(fault, args.runs))
        print(rows[-1], flush=True)
    return {
        "stream": f"2 exporters x {fault_matrix.RATE} records/s for {fault_matrix.DURATION:.0f} s, "
        f"node lease TTL {fault_matrix.TTL:.0f} s, fault at {fault_matrix.AT:.0f} s",
        "all exact": all(r["exact runs"] == r["runs"] for r in rows),
        "matrix": rows,
    }


if __name__ == "__main__":
    res = main(sys.argv[1:])
    print(res)
