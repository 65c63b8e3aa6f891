"""Packet store: sustained write rate with the index against `tcpdump -w`, and one flow's retrieval
latency from a store of more than 1 GB.

Traffic: loadgen's `mixed` scenario (2000 flows: HTTP, DNS, TLS, SMTP, SIP, SSH ..., 535-byte
frames on average), repeated with shifted times up to `--mb` megabytes (so the files hold many
flows and every flow's uid is distinct per repetition).

Write rate, all on one core (the last one, for us and for tcpdump alike), output on tmpfs
(/dev/shm) into a fresh directory each run, best of `--runs`:
* in-process: the store alone, fed the batches a cell has already decoded (decoding is the cell's
  work, not the store's): pcap record packing, the index (keys, XXH64, per-file CSR), the writes by
  the writer thread, the index files; CPU seconds of the whole process during the run (both
  threads) and wall seconds;
* whole process: `python -m bench.bench_store write PCAP DIR` (interpreter start, imports, reading
  and decoding the capture, storing) beside `tcpdump -r PCAP -w DIR/out.pcap` (reading and writing
  the same capture), CPU seconds from wait4 and wall seconds;
* the cell with and without its store (`celltap cell --read`, whole process, no readers), on
  `--cell-mb` megabytes of the traffic: what the store adds to a cell.

Retrieval: more than 1 GB of the traffic stored by a real `celltap cell --read --store` on disk
(/var/tmp), then one TCP connection by uid (resolved through the indexes' connection tables, which
the cell fills) and by 5-tuple + time range, in-process and as a whole `celltap pcap` process,
with the page cache warm (just written, synced) and cold (after `echo 3 > /proc/sys/vm/drop_caches`,
when allowed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_cell import run_pinned
from bench.common import Result, pin_to_one_core

ROOT = Path(__file__).resolve().parent.parent
CELLTAP = [sys.executable, "-m", "celltap.cli"]


def make_traffic(tmp: str, target_mb: int, name: str = "traffic.pcap") -> tuple[str, str, int, int]:
    """(big capture, one-repetition capture, frames, record bytes) of mixed traffic, repeated to target_mb."""
    from celltap.pcap import read_all
    from celltap.pcap.batch import FrameBatch
    from celltap.pcap.writer import PcapWriter

    base = os.path.join(tmp, "mixed.pcap")
    subprocess.run([*CELLTAP, "loadgen", "pcap", "mixed", base, "--count", "2000", "--seed", "5"],
                   check=True, cwd=ROOT, capture_output=True)  # fmt: skip
    batches = read_all(base)
    size = os.path.getsize(base)
    first = min(int(b.ts_ns.min()) for b in batches)
    last = max(int(b.ts_ns.max()) for b in batches)
    span = last - first + 1_000_000_000
    loops = max(1, -(-target_mb * 2**20 // size))
    big = os.path.join(tmp, name)
    frames = 0
    with PcapWriter(big, batches[0].linktype) as w:
        for k in range(loops):
            for b in batches:
                w.write_batch(
                    FrameBatch(b.buf, b.offsets, b.caplens, b.wirelens, b.ts_ns + k * span, b.linktype)
                )
                frames += len(b)
    return big, base, frames, os.path.getsize(big) - 24


def decoded(path: str) -> list:
    """The capture's batches as the cell decodes them."""
    from celltap.cell.inputs import pcap_batches

    from celltap.decode import DecodeOptions, decode_batch

    return [decode_batch(b, DecodeOptions()) for b in pcap_batches(path)]


def store_into(dbs: list, directory: str, repeats: int = 1, file_bytes: int = 64 << 20) -> object:
    """Run a PacketStore over the batches (`repeats` times, times shifted) and close it."""
    from celltap.cell.store.config import StoreConfig
    from celltap.cell.store.writer import PacketStore

    cfg = StoreConfig(
        dir=directory, file_bytes=file_bytes, max_bytes=1 << 45, max_age=0, queue_bytes=256 << 20
    )
    store = PacketStore(cfg, 0)
    store.block = True
    span = 0
    if repeats > 1:
        span = (
            int(max(int(d.batch.ts_ns.max()) for d in dbs) - min(int(d.batch.ts_ns.min()) for d in dbs))
            + 10**9
        )
    for k in range(repeats):
        for db in dbs:
            if k:
                b = db.batch
                db = dataclasses.replace(db, batch=dataclasses.replace(b, ts_ns=b.ts_ns + k * span))
            store.submit(db)
    store.close(timeout=3600)
    return store


def fresh_dir(root: str) -> str:
    """A new empty directory under root."""
    return tempfile.mkdtemp(prefix="celltap-bench-store-", dir=root)


def bench_write(pcap: str, frames: int, nbytes: int, cpu: int, runs: int) -> list[Result]:
    """In-process and whole-process write rates, tcpdump -w beside them."""
    dbs = decoded(pcap)
    best_cpu = best_wall = float("inf")
    index_bytes = files = 0
    for _ in range(runs):
        d = fresh_dir("/dev/shm")
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            store = store_into(dbs, d)
            wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            if store.written_frames != frames or any(store.dropped_frames.values()):  # type: ignore[attr-defined]
                raise RuntimeError(f"store wrote {store.written_frames} of {frames} frames")  # type: ignore[attr-defined]
            index_bytes = store.index_bytes_written  # type: ignore[attr-defined]
            files = store.files_created  # type: ignore[attr-defined]
        finally:
            shutil.rmtree(d, ignore_errors=True)
        best_cpu, best_wall = min(best_cpu, cpu_s), min(best_wall, wall)
    mb = nbytes / 1e6
    whole_cpu = whole_wall = td_cpu = td_wall = float("inf")
    for _ in range(runs):
        d = fresh_dir("/dev/shm")
        try:
            w, c = run_pinned([sys.executable, "-m", "bench.bench_store", "write", pcap, d], cpu)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        whole_wall, whole_cpu = min(whole_wall, w), min(whole_cpu, c)
        tcpdump = shutil.which("tcpdump")
        if tcpdump:
            d = fresh_dir("/dev/shm")
            try:
                w, c = run_pinned([tcpdump, "-r", pcap, "-w", os.path.join(d, "out.pcap")], cpu)
            finally:
                shutil.rmtree(d, ignore_errors=True)
            td_wall, td_cpu = min(td_wall, w), min(td_cpu, c)
    in_proc = Result(
        "store write rate in-process (record packing + index + writes, one core, tmpfs)",
        mb / best_cpu,
        "MB/s",
        note=f"{frames:,} frames, {mb:,.0f} MB of pcap records into {files} files of 64 MiB; "
        f"{frames / best_cpu:,.0f} frames/s by CPU seconds (both threads), {mb / best_wall:,.0f} MB/s and "
        f"{frames / best_wall:,.0f} frames/s by wall time; index {index_bytes / 1e6:.1f} MB "
        f"({100 * index_bytes / nbytes:.1f} % of the data); batches decoded beforehand (the cell's work); "
        f"best of {runs}",
        extra={"frames_per_s_cpu": frames / best_cpu, "wall_s": best_wall, "cpu_s": best_cpu},
    )
    whole = Result(
        "store write rate whole process (read + decode + store, start-up included; CPU seconds)",
        mb / whole_cpu,
        "MB/s",
        "tcpdump -r same file -w, same core, tmpfs (CPU seconds)",
        mb / td_cpu,
        note=f"{frames / whole_cpu:,.0f} vs {frames / td_cpu:,.0f} frames/s; by wall time "
        f"{mb / whole_wall:,.0f} vs {mb / td_wall:,.0f} MB/s ({whole_wall:.2f} s vs {td_wall:.2f} s); "
        f"fresh /dev/shm directory each run; best of {runs} each",
        extra={"store_wall_s": whole_wall, "tcpdump_wall_s": td_wall, "tcpdump_cpu_s": td_cpu},
    )
    return [in_proc, whole]


def bench_cell_overhead(pcap: str, cpu: int, runs: int, tmp: str) -> Result:
    """`celltap cell --read` with and without its store, whole process, same core."""
    from celltap.defaults import default_file

    cfg = str(default_file("sftap.yaml"))
    plain = stored = float("inf")
    for _ in range(runs):
        home = fresh_dir(tmp)
        plain = min(
            plain, run_pinned([*CELLTAP, "cell", "--config", cfg, "--home", home, "--read", pcap], cpu)[1]
        )
        d = fresh_dir("/dev/shm")
        try:
            argv = [*CELLTAP, "cell", "--config", cfg, "--home", home, "--read", pcap, "--store", d]
            stored = min(stored, run_pinned(argv, cpu)[1])
        finally:
            shutil.rmtree(d, ignore_errors=True)
    mb = (os.path.getsize(pcap) - 24) / 1e6
    return Result(
        "cell with its store, whole process (CPU seconds)",
        mb / stored,
        "MB/s",
        "the same cell without a store",
        mb / plain,
        note=f"{stored:.2f} s vs {plain:.2f} s for {mb:.0f} MB (no readers connected); the store costs "
        f"{100 * (stored - plain) / plain:.0f} % of the cell's time; best of {runs}",
    )


def _drop_caches() -> bool:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def bench_retrieval(tmp: str, store_gb: float, runs: int, cpu: int) -> list[Result]:
    """One flow by uid, and by 5-tuple + time range, from a store a real cell wrote (over store_gb GB)."""
    from celltap.cell.store.index import FileIndex
    from celltap.cell.store.query import Query, parse_flow, query_dir

    from celltap.defaults import default_file
    from celltap.flowid import uid_from_flow_id

    pcap = make_traffic(tmp, int(store_gb * 1000 / 1.048576) + 16, "store.pcap")[0]
    root = fresh_dir("/var/tmp")
    try:
        d = os.path.join(root, "store")
        cfg = str(default_file("sftap.yaml"))
        argv = [*CELLTAP, "cell", "--config", cfg, "--home", os.path.join(root, "home"), "--read", pcap,
                "--store", d, "--store-max-bytes", str(4 << 30)]  # fmt: skip
        fill_wall, fill_cpu = run_pinned(argv, cpu)
        os.remove(pcap)
        os.sync()  # page-cache writeback of the fill would otherwise disturb the first queries
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        idxs = sorted(p for p in os.listdir(d) if p.endswith(".idx"))
        mid = FileIndex.load(os.path.join(d, idxs[len(idxs) // 2]))
        # the longest IPv4 TCP connection the cell ended while the middle file was open
        tcp = np.flatnonzero((mid.conn_key[:, 0] == 4) & (mid.conn_key[:, 1] == 6))
        pick = int(tcp[np.argmax(mid.conn_last[tcp] - mid.conn_first[tcp])])
        uid = uid_from_flow_id(int(mid.conn_fid[pick]))
        k = mid.conn_key[pick]
        a1, a2 = (
            socket.inet_ntop(socket.AF_INET, k[2:6].tobytes()),
            socket.inet_ntop(socket.AF_INET, k[8:12].tobytes()),
        )
        flow = f"tcp {a1}:{int(k[6]) << 8 | int(k[7])} {a2}:{int(k[12]) << 8 | int(k[13])}"
        lo, hi = int(mid.conn_first[pick]), int(mid.conn_last[pick])
        span = ["--from", f"{lo // 10**9}.{lo % 10**9:09d}", "--to", f"{hi // 10**9}.{hi % 10**9:09d}"]
        out = os.path.join(root, "flow.pcap")
        results = []
        for what, q, args in (
            ("uid", Query(uid=uid), ["--uid", uid]),
            (
                "5-tuple + time range",
                Query(key=parse_flow(flow), t_from=lo, t_to=hi),
                ["--flow", flow, *span],
            ),
        ):
            frames = len(query_dir(d, q) or [])
            warm_in = min(_timed(lambda q=q: query_dir(d, q)) for _ in range(runs))
            argv = [*CELLTAP, "pcap", "--store", d, *args, "-w", out]
            whole = [run_pinned(argv, cpu) for _ in range(runs)]
            warm_whole, warm_cpu = min(w for w, _ in whole), min(c for _, c in whole)
            cold = "not measured (no permission to drop caches)"
            if _drop_caches():
                cold_wall, cold_cpu = run_pinned(argv, cpu)
                cold = f"{cold_wall * 1e3:,.0f} ms wall ({cold_cpu * 1e3:,.0f} ms CPU) page cache dropped"
            results.append(
                Result(
                    f"retrieval of one flow by {what} from a {size / 1e9:.2f} GB store "
                    "(whole `celltap pcap` process, warm; CPU)",
                    warm_cpu * 1e3,
                    "ms",
                    note=f"{len(idxs)} files written by `celltap cell --read --store` ({fill_cpu:.0f} s CPU, "
                    f"{fill_wall:.0f} s wall); a TCP connection of {frames} frames; "
                    f"{warm_whole * 1e3:,.0f} ms wall (start-up, imports included); "
                    f"{warm_in * 1e3:,.0f} ms in-process (index loads, resolution, lookups, record gathers); "
                    f"{cold}; best of {runs}",
                    extra={"store_bytes": size, "files": len(idxs), "in_process_ms": warm_in * 1e3},
                )
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the store benchmarks."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="traffic megabytes for the write rate")
    ap.add_argument("--store-gb", type=float, default=1.1, help="store size for the retrieval latency")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--cell-mb", type=int, default=64, help="traffic megabytes for the cell with / without store"
    )
    ap.add_argument("--only", nargs="*", default=["write", "retrieval"], help="write and/or retrieval")
    args = ap.parse_args(argv or [])
    cpu = pin_to_one_core()
    tmp = fresh_dir("/dev/shm")
    try:
        big, _, frames, nbytes = make_traffic(tmp, args.mb if "write" in args.only else 1)
        results = []
        if "write" in args.only:
            results += bench_write(big, frames, nbytes, cpu, args.runs)
            cell_pcap = make_traffic(tmp, args.cell_mb, "cell.pcap")[0]
            results.append(bench_cell_overhead(cell_pcap, cpu, args.runs, tmp))
        if "retrieval" in args.only:
            results += bench_retrieval(tmp, args.store_gb, args.runs, cpu)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _write_only(pcap: str, directory: str) -> None:
    """The whole-process write figure: read, decode and store one capture."""
    dbs_frames = 0
    from celltap.cell.inputs import pcap_batches
    from celltap.cell.store.config import StoreConfig
    from celltap.cell.store.writer import PacketStore

    from celltap.decode import DecodeOptions, decode_batch

    store = PacketStore(StoreConfig(dir=directory, max_bytes=1 << 45, max_age=0, queue_bytes=256 << 20), 0)
    store.block = True
    opts = DecodeOptions()
    for b in pcap_batches(pcap):
        store.submit(decode_batch(b, opts))
        dbs_frames += len(b)
    store.close(timeout=3600)
    if store.written_frames != dbs_frames:
        raise SystemExit(f"stored {store.written_frames} of {dbs_frames} frames")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "write":
        _write_only(sys.argv[2], sys.argv[3])
    else:
        for r in main(sys.argv[1:]):
            print(f"{r.name}: {r.value:,.1f} {r.unit}" + (f" vs {r.baseline_name} {r.baseline_value:,.1f}" if
                  r.baseline_name else "") + f"\n    {r.note}")  # fmt: skip
