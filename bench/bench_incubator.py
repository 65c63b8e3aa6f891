"""Incubator benchmarks: offline split of a 64-byte-frame capture beside tcpdump, and live replay.

Run: `.venv/bin/python bench/bench_incubator.py [--frames N] [--flows F] [--cells C] [--live]`.
`main()` prints the results and returns them as a dict.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from celltap.pcap import PcapWriter
from celltap.pcap.batch import FrameBatch


def make_capture(path: str, frames: int, flows: int, seed: int = 1) -> None:
    """Write `frames` 64-byte Ethernet/IPv4/UDP frames over `flows` bidirectional flows."""
    rng = np.random.default_rng(seed)
    step = 1 << 18
    with PcapWriter(path) as w:
        src = rng.integers(0, 256, (flows, 4), dtype=np.uint8)
        dst = rng.integers(0, 256, (flows, 4), dtype=np.uint8)
        sport = rng.integers(1024, 65535, flows)
        for start in range(0, frames, step):
            n = min(step, frames - start)
            fl = rng.integers(0, flows, n)
            rev = rng.random(n) < 0.5
            f = np.zeros((n, 64), np.uint8)
            f[:, 0:6] = 2
            f[:, 6:12] = 4
            f[:, 12] = 8
            f[:, 14] = 0x45
            f[:, 17] = 50  # IP total length: 20 + 8 + 22 bytes of payload = 64-byte frame
            f[:, 22] = 64
            f[:, 23] = 17
            f[:, 26:30] = np.where(rev[:, None], dst[fl], src[fl])
            f[:, 30:34] = np.where(rev[:, None], src[fl], dst[fl])
            a = np.where(rev, 53, sport[fl])
            b = np.where(rev, sport[fl], 53)
            f[:, 34], f[:, 35], f[:, 36], f[:, 37] = a >> 8, a & 255, b >> 8, b & 255
            f[:, 39] = 30
            ts = (np.arange(start, start + n, dtype=np.int64) * 1000) + 1_700_000_000 * 10**9
            lens = np.full(n, 64, np.int64)
            w.write_batch(FrameBatch(f.reshape(-1), np.arange(n, dtype=np.int64) * 64, lens, lens, ts))


def bench_split(path: str, cells: int, out_dir: str) -> dict[str, float]:
    """Time the offline split in-process (one core) and tcpdump on the same file."""
    from incubator.offline import split_capture

    t0 = time.perf_counter()
    res = split_capture(path, cells, out_dir)
    split_s = time.perf_counter() - t0
    result: dict[str, float] = {
        "frames": res.received,
        "split_s": split_s,
        "split_fps": res.received / split_s,
    }
    counts = np.array(list(res.per_cell.values()), dtype=np.float64)
    result["cell_min"] = float(counts.min())
    result["cell_max"] = float(counts.max())
    result["cell_spread"] = float(counts.max() / counts.min() - 1)
    tcpdump = shutil.which("tcpdump")
    if tcpdump:
        t0 = time.perf_counter()
        subprocess.run([tcpdump, "-r", path, "-w", "/dev/null"], check=True, capture_output=True)
        td = time.perf_counter() - t0
        result["tcpdump_s"] = td
        result["tcpdump_fps"] = res.received / td
        result["split_over_tcpdump"] = result["split_fps"] / result["tcpdump_fps"]
    return result


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmarks, print one line per result, return them."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=2_000_000)
    p.add_argument("--flows", type=int, default=20_000)
    p.add_argument("--cells", type=int, default=4)
    p.add_argument("--live", action="store_true", help="also measure live replay through a veth (root)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="celltap-bench-inc-") as tmp:
        cap = os.path.join(tmp, "in.pcap")
        make_capture(cap, a.frames, a.flows)
        results = bench_split(cap, a.cells, os.path.join(tmp, "out"))
        if a.live:
            from bench.bench_incubator_live import bench_live

            results.update(bench_live(tmp))
    for k, v in results.items():
        print(f"{k}: {v:,.3f}" if isinstance(v, float) else f"{k}: {v}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
