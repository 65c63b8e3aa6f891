"""Cell (flow abstractor) benchmarks.

1. SF-TAP section 5.2's workload (loadgen `cps`: handshake, two 1400-byte segments, FIN): connections
   per second of the real `celltap cell --read` process pinned to one core, with a reader draining the
   interface from another core: in-process (CPU seconds of the offline run, as the cell logs it) and
   whole-process (user+system seconds of the process from exec to exit, interpreter start and imports
   included; wall time beside it). Beside the latter, tcpflow (an independent TCP reassembler writing
   every flow to a file) on the same file and core in the same run, measured the same way, its output
   on tmpfs in a fresh directory each run. Best of --runs each.
   SF-TAP's C++ flow abstractor reached 50,000 CPS.
2. One-flow throughput (Gbit/s of TCP payload) in-process on one core.
3. Memory per live TCP flow with 1,000,000 concurrent flows (handshakes that never close).

Run: `.venv/bin/python bench/bench_cell.py [--connections N] [--flows F] [--runs R] [--cps-only]`.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from celltap.cell.abstractor import Abstractor  # noqa: E402
from celltap.cell.sftap_config import parse_config  # noqa: E402

from bench.common import Result, pin_to_one_core  # noqa: E402
from celltap.pcap import PcapWriter  # noqa: E402
from celltap.pcap.batch import FrameBatch  # noqa: E402

CONFIG = """
global:
  home: {home}
  timeout: 30
tcp_default:
  if: default
  proto: TCP
http:
  up:     '^[-a-zA-Z]+ .+ HTTP/1\\.(0\\r?\\n|1\\r?\\n([-a-zA-Z]+: .+\\r?\\n)+)'
  down:   '^HTTP/1\\.[01] [1-9][0-9]{{2}} .+\\r?\\n'
  proto:  TCP
  if:     http
"""


def make_cps(path: str, connections: int) -> None:
    """The loadgen `cps` capture."""
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    with PcapWriter(path, nanosecond=True) as w:
        for ts, frame in get("cps").generate(1, connections):
            w.write(ts, frame)


def _drain(path: Path, stop: threading.Event, total: list[int], cpus: set[int]) -> None:
    # The reader is a consumer of the cell, like an analyzer: it gets its own core where there is
    # one, so the cell's core (and its caches) are the cell's alone. (Linux: this pins the thread.)
    os.sched_setaffinity(0, cpus)
    while not path.exists() and not stop.is_set():
        time.sleep(0.01)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        total[0] += len(d)


def run_pinned(
    argv: list[str], cpu: int, stderr_path: Path | None = None, tree: str | None = None
) -> tuple[float, float]:
    """Run a command pinned to `cpu`; (wall seconds from exec to exit, its user+system CPU seconds).

    The CPU seconds come from wait4's rusage of that one process: on a machine loaded by other jobs
    they stay close to what an idle machine would show, where wall time does not.
    """
    err = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
    try:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tree or ROOT,  # `python -m` imports celltap from its working directory first
            env=dict(os.environ, PYTHONPATH=tree) if tree else None,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if stderr_path:
            err.close()  # type: ignore[union-attr]
    if p.returncode != 0:
        tail = stderr_path.read_text(errors="replace")[-2000:] if stderr_path else ""
        raise RuntimeError(f"{argv[0]} exited {p.returncode}: {tail}")
    return wall, usage.ru_utime + usage.ru_stime


def tcpflow_seconds(pcap: str, cpu: int, runs: int) -> tuple[float, float]:
    """Best (wall, CPU) seconds of `tcpflow -r PCAP` pinned to `cpu`, each run into a fresh tmpfs directory.

    tcpflow writes two files per connection: on a disk, and into the directory of a previous run,
    it measures the filesystem (creating 100,000 files next to 100,000 old ones), not reassembly.
    tmpfs (/dev/shm) takes the disk out; a fresh directory per run makes every run do the same work.
    The directory is removed after each run, outside the timing.
    """
    tool = shutil.which("tcpflow")
    if tool is None:
        raise FileNotFoundError("tcpflow")
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    best_wall = best_cpu = float("inf")
    for _ in range(runs):
        out = tempfile.mkdtemp(prefix="celltap-bench-tcpflow-", dir=shm)
        try:
            wall, cpu_s = run_pinned([tool, "-r", pcap, "-o", out], cpu)
            best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu_s)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return best_wall, best_cpu


def cell_run(
    cfg: Path, pcap: str, home: Path, cpu: int, tmp: str, tree: str | None = None
) -> tuple[float, float, float, float, int]:
    """One `celltap cell --read` run pinned to `cpu`, a reader draining from another core.

    Returns (CPU and wall seconds of the offline run as the cell logs them, i.e. in-process after
    start-up; wall and CPU seconds of the whole process from exec to exit, interpreter start and
    imports included; bytes of events drained).
    """
    stop = threading.Event()
    total = [0]
    others = set(range(os.cpu_count() or 1)) - {cpu} or {cpu}
    t = threading.Thread(target=_drain, args=(home / "tcp/default", stop, total, others), daemon=True)
    t.start()
    args = ["-v", "cell", "--config", str(cfg), "--read", pcap, "--wait-readers", "tcp/default"]
    log = Path(tmp) / "cell-stderr.log"
    whole_wall, whole_cpu = run_pinned([sys.executable, "-m", "celltap.cli", *args], cpu, log, tree)
    stop.set()
    t.join(10)
    text = log.read_text(errors="replace")
    m = re.search(r"offline run: (\d+) packets, (\d+) flows in ([\d.]+) s \(cpu ([\d.]+) s\)", text)
    if not m:
        raise RuntimeError(text[-2000:])
    return float(m.group(4)), float(m.group(3)), whole_wall, whole_cpu, total[0]


def bench_cps(connections: int, tmp: str, cpu: int, runs: int = 3) -> list[Result]:
    """CPS of the real cell process on one core, a reader draining, and tcpflow on the same file.

    Two figures for the cell, best of `runs` each: in-process (CPU seconds of the offline run, what
    SF-TAP's figure measures) and whole-process (CPU seconds of `celltap cell --read` from exec to
    exit, interpreter start and imports included; wall time in the note), the latter beside tcpflow's
    whole-process figures on the same file and core.
    """
    pcap = os.path.join(tmp, "cps.pcap")
    make_cps(pcap, connections)
    home = Path(tmp) / "home"
    cfg = Path(tmp) / "cell.yaml"
    cfg.write_text(CONFIG.format(home=home))
    cpu_s = wall_s = whole_wall = whole_cpu = float("inf")
    drained = 0
    for _ in range(runs):
        c, w, ww, wc, drained = cell_run(cfg, pcap, home, cpu, tmp)
        if c < cpu_s:
            cpu_s, wall_s = c, w
        whole_wall, whole_cpu = min(whole_wall, ww), min(whole_cpu, wc)
    try:
        tf_wall, tf_cpu = tcpflow_seconds(pcap, cpu, runs)
    except FileNotFoundError:
        tf_wall = tf_cpu = float("inf")
    in_process = Result(
        "cell CPS (cps workload, one core, reader draining)",
        connections / cpu_s,
        "conn/s",
        target=50_000,
        note=f"{connections} connections, {drained / 1e6:.1f} MB of events drained by a reader on "
        f"another core; CPU seconds of the offline run, in-process ({connections / wall_s:,.0f} conn/s by "
        f"its wall time); best of {runs}",
    )
    whole = Result(
        "cell CPS whole process (`celltap cell --read`, start-up included; CPU seconds)",
        connections / whole_cpu,
        "conn/s",
        "tcpflow same file, same core, output on tmpfs (CPU seconds)",
        connections / tf_cpu,
        note=f"user+system seconds of each whole process from exec to exit ({whole_cpu:.2f} s cell: "
        f"interpreter start, imports, config, the run, the drain; {tf_cpu:.2f} s tcpflow); by wall time "
        f"{connections / whole_wall:,.0f} vs {connections / tf_wall:,.0f} conn/s; tcpflow writes into a "
        f"fresh /dev/shm directory each run; best of {runs} each",
        extra={"cell_whole_wall_s": whole_wall, "tcpflow_wall_s": tf_wall},
    )
    return [in_process, whole]


def bench_cps_before_after(connections: int, tmp: str, cpu: int, runs: int, before: str) -> dict[str, float]:
    """In-process CPS (CPU seconds) of another checkout, of this tree, and of this tree with `dedup: yes`,
    runs interleaved so that all three see the same machine load; best of `runs` each."""
    pcap = os.path.join(tmp, "cps.pcap")
    make_cps(pcap, connections)
    home = Path(tmp) / "home"
    plain = Path(tmp) / "cell.yaml"
    plain.write_text(CONFIG.format(home=home))
    dedup = Path(tmp) / "cell-dedup.yaml"
    dedup.write_text(CONFIG.format(home=home).replace("  timeout: 30\n", "  timeout: 30\n  dedup: yes\n"))
    best = {"before": float("inf"), "after": float("inf"), "after_dedup": float("inf")}
    trials = (("before", plain, before), ("after", plain, None), ("after_dedup", dedup, None))
    for _ in range(runs):
        for name, cfg, tree in trials:
            best[name] = min(best[name], cell_run(cfg, pcap, home, cpu, tmp, tree)[0])
    return {f"cps_{k}": connections / v for k, v in best.items()}


def one_flow_capture(nbytes: int, seg: int = 1448) -> list[FrameBatch]:
    """One TCP connection carrying `nbytes` client->server, as frame batches (checksums not filled in)."""
    n = nbytes // seg
    hdr = bytearray(14 + 20 + 20)
    hdr[12:14] = b"\x08\x00"
    ip = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 40 + seg, 0, 0, 64, 6, 0, bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
    )
    hdr[14:34] = ip
    frames: list[bytes] = []
    base_ts = 1_700_000_000 * 10**9

    def tcp(seq: int, ack: int, flags: int, payload: bytes, c2s: bool = True) -> bytes:
        h = bytearray(hdr)
        struct.pack_into(">H", h, 16, 40 + len(payload))
        if not c2s:
            h[26:30], h[30:34] = bytes((10, 0, 0, 2)), bytes((10, 0, 0, 1))
        sp, dp = (40000, 80) if c2s else (80, 40000)
        h[34:54] = struct.pack(">HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, ack, 0x50, flags, 65535, 0, 0)
        return bytes(h) + payload

    frames.append(tcp(1000, 0, 0x02, b""))
    frames.append(tcp(5000, 1001, 0x12, b"", False))
    frames.append(tcp(1001, 5001, 0x10, b""))
    payload = bytes(range(256)) * (seg // 256 + 1)
    payload = payload[:seg]
    # the frames differ only in the sequence number: build them as one numpy array
    proto = np.frombuffer(tcp(0, 5001, 0x18, payload), np.uint8)
    arr = np.tile(proto, (n, 1))
    seqs = (1001 + np.arange(n, dtype=np.uint64) * seg) & 0xFFFFFFFF
    for k in range(4):
        arr[:, 38 + k] = (seqs >> np.uint64(24 - 8 * k)) & 0xFF
    flen = len(proto)
    batches = [FrameBatch.from_frames(frames, [base_ts] * 3)]
    step = 8192
    for start in range(0, n, step):
        part = arr[start : start + step]
        k = part.shape[0]
        lens = np.full(k, flen, np.int64)
        batches.append(
            FrameBatch(
                part.reshape(-1).copy(),
                np.arange(k, dtype=np.int64) * flen,
                lens,
                lens.copy(),
                np.full(k, base_ts, np.int64),
            )
        )
    end = 1001 + n * seg
    batches.append(
        FrameBatch.from_frames(
            [tcp(end, 5001, 0x11, b""), tcp(5001, end + 1, 0x11, b"", False)], [base_ts, base_ts]
        )
    )
    return batches


def bench_one_flow(nbytes: int) -> Result:
    """Gbit/s of one flow's payload through the core (in-process, one core), events drained."""
    batches = one_flow_capture(nbytes)
    cfg = parse_config({"tcp_default": {"if": "default", "proto": "TCP"}})
    best = None
    for _ in range(3):
        a = Abstractor(cfg)
        t0 = time.perf_counter()
        for b in batches:
            a.process_frames(b)
            for s in a.sinks.values():
                s.take()
        a.finish()
        secs = time.perf_counter() - t0
        best = secs if best is None else min(best, secs)
    return Result(
        "one-flow throughput (TCP payload)",
        nbytes * 8 / best / 1e9,
        "Gbit/s",
        note=f"{nbytes / 1e6:.0f} MB in 1448-byte segments",
    )


def syn_batches(flows: int, step: int = 65536) -> list[FrameBatch]:
    """SYN frames of `flows` distinct connections (64-byte frames)."""
    out = []
    for start in range(0, flows, step):
        n = min(step, flows - start)
        i = np.arange(start, start + n, dtype=np.int64)
        f = np.zeros((n, 64), np.uint8)
        f[:, 12] = 8
        f[:, 14] = 0x45
        f[:, 17] = 40
        f[:, 22] = 64
        f[:, 23] = 6
        f[:, 26] = 10
        f[:, 27] = (i >> 16) & 0xFF
        f[:, 28] = (i >> 8) & 0xFF
        f[:, 29] = i & 0xFF
        f[:, 30:34] = (192, 0, 2, 1)
        f[:, 34] = 0x9C
        f[:, 35] = 0x40
        f[:, 37] = 80
        f[:, 46] = 0x50
        f[:, 47] = 0x02
        lens = np.full(n, 64, np.int64)
        ts = np.full(n, 1_700_000_000 * 10**9, np.int64) + i
        out.append(FrameBatch(f.reshape(-1), np.arange(n, dtype=np.int64) * 64, lens, lens.copy(), ts))
    return out


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_memory(flows: int) -> Result:
    """Bytes of resident memory per live TCP flow with `flows` concurrent flows."""
    batches = syn_batches(flows)
    cfg = parse_config({"tcp_default": {"if": "default", "proto": "TCP"}})
    a = Abstractor(cfg)
    before = _rss()
    t0 = time.perf_counter()
    for b in batches:
        a.process_frames(b)
    secs = time.perf_counter() - t0
    live = len(a.table)
    after = _rss()
    per = (after - before) / max(live, 1)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return Result(
        "memory per live TCP flow",
        per,
        "bytes",
        note=f"{live:,} live flows, {live / secs:,.0f} new flows/s, peak RSS {peak_mib} MiB",
    )


_INPUTS = """
import json, os, socket, sys, time
sys.path.insert(0, sys.argv[1])
from celltap.pcap.batch import FrameBatch
from celltap.incubator.outputs import VxlanOutput
from celltap.cell.inputs import VxlanSource
try:  # a tree from before capture times has no Geneve
    from celltap.incubator.outputs import GeneveOutput
    from celltap.cell.inputs import GeneveSource
except ImportError:
    GeneveOutput = None
os.sched_setaffinity(0, {int(sys.argv[2])})
frames = [bytes(12) + b"\\x08\\x00" + bytes([i % 251]) * 50 for i in range(1024)]
batch = FrameBatch.from_frames(frames, [1_700_000_000_000_000_000 + i for i in range(1024)])
def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]; s.close(); return p
def rate(out_cls, src_cls, scheme, rounds=200):
    port = free_port()
    src = src_cls(f"{scheme}://127.0.0.1:{port}")
    out = out_cls("127.0.0.1", port, 0)
    best = 0.0
    for _ in range(3):
        spent = 0.0
        for _ in range(rounds):
            out.send(batch)
            got = 0
            t = time.perf_counter()
            while got < 1024:
                b = src.read_batch()
                got += 0 if b is None else len(b)
            spent += time.perf_counter() - t
        best = max(best, rounds * 1024 / spent)
    src.close(); out.close()
    return best
res = {"receive_vxlan_fps": rate(VxlanOutput, VxlanSource, "vxlan")}
if GeneveOutput is not None:
    res["receive_geneve_fps"] = rate(GeneveOutput, GeneveSource, "geneve")
print(json.dumps(res))
"""


def bench_inputs(root: str | None = None, cpu: int = 1) -> dict[str, float]:
    """Frames/s the cell's tunnel inputs read (read_batch only; 64-byte frames, 1024 per burst, loopback);
    `root`: the source tree to measure (another checkout gives a before/after in one run)."""
    import json

    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", _INPUTS, root, str(cpu)], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(p.stdout)


def main(argv: list[str] | None = None) -> list[Result]:
    """Run the cell benchmarks and print them."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connections", type=int, default=50_000)
    ap.add_argument("--bytes", type=int, default=200_000_000)
    ap.add_argument("--flows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="runs of the cell and of tcpflow (best of)")
    ap.add_argument("--cps-only", action="store_true", help="only the CPS figures")
    ap.add_argument("--inputs-only", action="store_true", help="only the live tunnel inputs' receive rates")
    ap.add_argument(
        "--before", metavar="TREE", help="with --inputs-only or --cps-only: also measure another checkout"
    )
    args = ap.parse_args(argv if argv is not None else [])
    if args.inputs_only:
        res = {f"before_{k}": v for k, v in bench_inputs(args.before).items()} if args.before else {}
        res.update(bench_inputs())
        for k, v in res.items():
            print(f"{k}: {v:,.0f} frames/s")
        return []
    cpu = pin_to_one_core()
    others = set(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1))) - {cpu}
    if others:
        os.sched_setaffinity(0, others)  # the draining reader runs beside the cell's core, not on it
    if args.cps_only and args.before:
        with tempfile.TemporaryDirectory() as tmp:
            res = bench_cps_before_after(args.connections, tmp, cpu, args.runs, args.before)
        for k, v in res.items():
            print(f"{k}: {v:,.0f} conn/s (in-process CPU seconds, best of {args.runs})")
        return []
    with tempfile.TemporaryDirectory() as tmp:
        results = bench_cps(args.connections, tmp, cpu, args.runs)
        if not args.cps_only:
            results += [bench_one_flow(args.bytes), bench_memory(args.flows)]
    for r in results:
        base = f"  ({r.baseline_name}: {r.baseline_value:,.0f})" if r.baseline_name else ""
        print(f"{r.name}: {r.value:,.2f} {r.unit}{base}  {r.note}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
