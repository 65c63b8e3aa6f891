"""Core hot path: read a pcap of 64-byte frames, batch-decode, canonical key, flow hash.

Baselines in the same run: `tcpdump -r FILE -w /dev/null` on the same file (a C reader that does
far less: it copies records), and our own scalar per-frame decoder (what a naive Python loop gets).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from bench.common import Result, best_of, pin_to_one_core, time_command
from celltap.decode import decode_batch, decode_frame
from celltap.flowkey import canonical_key, flow_hashes
from celltap.pcap import open_capture

LINE_RATE_64B = 14_880_952  # frames/s on one 10 GbE port at 64-byte frames


def write_small_pcap(path: str, frames: int, seed: int = 1) -> None:
    """loadgen's `small` scenario: 64-byte frames (60 captured + FCS) over many flows."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "celltap.cli",
            "loadgen",
            "pcap",
            "small",
            path,
            "--count",
            str(frames),
            "--seed",
            str(seed),
        ],
        check=True,
    )


def batch_pipeline(path: str) -> tuple[float, int]:
    """Seconds and frames for read + decode + key + hash of the whole file."""
    t0 = time.perf_counter()
    n = 0
    with open_capture(path) as reader:
        for batch in reader:
            d = decode_batch(batch)
            flow_hashes(d.l3, d.l4, d.src, d.sport, d.dst, d.dport)
            n += len(batch)
    return time.perf_counter() - t0, n


def scalar_pipeline(path: str, limit: int) -> tuple[float, int]:
    """The same work one frame at a time (the per-packet Python baseline)."""
    t0 = time.perf_counter()
    n = 0
    with open_capture(path) as reader:
        for batch in reader:
            for i in range(len(batch)):
                d = decode_frame(batch.frame(i))
                canonical_key(d.l3, d.l4, d.src, d.sport, d.dst, d.dport)[0].hash()
                n += 1
                if n >= limit:
                    return time.perf_counter() - t0, n
    return time.perf_counter() - t0, n


def main(frames: int = 2_000_000) -> list[Result]:
    """Run the core benchmark and return its results."""
    cpu = pin_to_one_core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "small.pcap")
        write_small_pcap(path, frames)
        batch_pipeline(path)  # warm the page cache and numpy
        ours = best_of(3, lambda: batch_pipeline(path)[0])
        tcpdump = time_command(["tcpdump", "-r", path, "-w", "/dev/null"], cpu=cpu)
        scalar_s, scalar_n = scalar_pipeline(path, 100_000)
    rate = frames / ours
    results = [
        Result(
            "core: pcap read + batch decode + key + hash, 64 B frames",
            rate,
            "frames/s",
            "tcpdump -r F -w /dev/null",
            frames / tcpdump,
            target=2_000_000,
            note=f"one core; {LINE_RATE_64B / rate:.1f} such cores for one 10 GbE port at 64 B "
            f"({LINE_RATE_64B:,} frames/s)",
        ),
        Result(
            "core: batch vs per-frame Python (scalar decoder + key + hash)",
            rate,
            "frames/s",
            "scalar per-frame path",
            scalar_n / scalar_s,
        ),
    ]
    return results


if __name__ == "__main__":
    for r in main():
        print(
            f"{r.name}: {r.value:,.0f} {r.unit} | {r.baseline_name}: {r.baseline_value:,.0f} | x{r.ratio:.2f}"
        )
