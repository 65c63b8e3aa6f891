"""HTTP analyzer throughput: one process, and two on balanced interfaces, against tshark on the same
capture in the same run.

The capture is `celltap loadgen pcap http` (keep-alive, pipelining, chunked and Content-Length bodies,
HEAD, 100-continue). `celltap cell --read` turns it into its interface byte streams once (recorded to
files: one unbalanced `http`, and `http0`/`http1` with `balance: 2`), so the timed part is only the
analyzer: a writer process serves the recorded stream on a real UNIX socket at full speed and the
analyzer (`celltap analyzer http --exit-on-eof`) reads, parses and writes JSON lines to a file.
Time runs from the writer's accept() to the analyzer's exit. tshark's figure is
`tshark -r F -Y http.request -T fields -e http.request.method`, requests / wall seconds.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench.common import Result, best_of

CONNECTIONS = int(os.environ.get("BENCH_HTTP_CONNECTIONS", "10000"))
RUNS = 3
PY = sys.executable


def _celltap(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "celltap.cli", *args], check=True, capture_output=True, text=True, **kw)


def _record(home: Path, names: list[str], outdir: Path) -> list[threading.Thread]:
    """Connect one recorder per interface (retrying until the cell creates it) and dump its bytes."""

    def rec(name: str) -> None:
        path = str(home / "tcp" / name)
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                break
            except OSError:
                s.close()
                time.sleep(0.05)
        with open(outdir / f"{name}.events", "wb") as f:
            while chunk := s.recv(1 << 20):
                f.write(chunk)
        s.close()

    threads = [threading.Thread(target=rec, args=(n,)) for n in names]
    for t in threads:
        t.start()
    return threads


def record_streams(pcap: str, work: Path, balance: int) -> list[Path]:
    """Run the cell on the capture and record its HTTP interface stream(s)."""
    home = work / f"home{balance}"
    rule = {
        "up": r"^[-a-zA-Z]+ \S+ HTTP/1\.[01]\r?\n",
        "proto": "TCP",
        "if": "http",
        "format": "text",
        "body": "yes",
    }
    if balance > 1:
        rule["balance"] = balance
    cfg = work / f"sftap{balance}.yaml"
    cfg.write_text(yaml.safe_dump({"global": {"home": str(home), "timeout": 60}, "http": rule}))
    names = [f"http{i}" for i in range(balance)] if balance > 1 else ["http"]
    threads = _record(home, names, work)
    _celltap(
        "cell",
        "--config",
        str(cfg),
        "--read",
        pcap,
        "--wait-readers",
        ",".join(f"tcp/{n}" for n in names),
        timeout=600,
    )
    for t in threads:
        t.join()
    return [work / f"{n}.events" for n in names]


def _serve(path: str, stream: str, accepted: mp.Queue, go: mp.Event) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    data = Path(stream).read_bytes()
    conn, _ = srv.accept()
    accepted.put(1)
    go.wait()  # every analyzer is connected (and done importing) before the clock starts
    conn.sendall(data)
    conn.close()
    srv.close()
    os.unlink(path)


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, clock ticks


def run_analyzers(streams: list[Path], work: Path) -> tuple[float, list[float], int]:
    """Serve each stream to its own analyzer process.

    Returns (wall seconds from the first byte to the last exit, CPU seconds each analyzer spent after
    connecting, records written). CPU seconds exclude interpreter start-up and, unlike wall time, do
    not grow when other work shares the cores.
    """
    q: mp.Queue = mp.Queue()
    go = mp.Event()
    writers, analyzers, outs = [], [], []
    for i, stream in enumerate(streams):
        sock = str(work / f"bench{i}.sock")
        out = work / f"bench{i}.jsonl"
        out.unlink(missing_ok=True)
        w = mp.Process(target=_serve, args=(sock, str(stream), q, go))
        w.start()
        writers.append(w)
        outs.append(out)
        analyzers.append(
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "celltap.cli",
                    "analyzer",
                    "http",
                    "--socket",
                    sock,
                    "--exit-on-eof",
                    "--out",
                    str(out),
                ]
            )
        )
    for _ in streams:
        q.get()
    cpu0 = [_cpu_ticks(a.pid) for a in analyzers]
    t0 = time.perf_counter()
    go.set()
    cpu = []
    for a, c0 in zip(analyzers, cpu0, strict=True):
        _, status, usage = os.wait4(a.pid, 0)
        a.returncode = os.waitstatus_to_exitcode(status)
        if a.returncode != 0:
            raise RuntimeError("analyzer failed")
        cpu.append(usage.ru_utime + usage.ru_stime - c0 / os.sysconf("SC_CLK_TCK"))
    t_end = time.perf_counter()
    for w in writers:
        w.join()
    records = 0
    for out in outs:
        with open(out, "rb") as f:
            records += sum(1 for line in f if b'"method"' in line)
    return t_end - t0, cpu, records


def main() -> list[Result]:
    """Measure and print requests/s for 1 and 2 analyzer processes and for tshark."""
    work = Path(tempfile.mkdtemp(prefix="bench-analyzers-"))
    try:
        pcap = str(work / "http.pcap")
        _celltap("loadgen", "pcap", "http", pcap, "--count", str(CONNECTIONS), timeout=600)
        fields = ["tshark", "-r", pcap, "-Y", "http.request", "-T", "fields", "-e", "http.request.method"]
        t0 = time.perf_counter()
        out = subprocess.run(fields, check=True, capture_output=True, text=True).stdout
        tshark_s = time.perf_counter() - t0
        requests = sum(len(line.split(",")) for line in out.splitlines() if line)
        one = record_streams(pcap, work, 1)
        two = record_streams(pcap, work, 2)
        counts: dict[str, int] = {}
        cpus: dict[str, float] = {}

        def timed(streams: list[Path], key: str):
            def once() -> float:
                secs, cpu, n = run_analyzers(streams, work)
                counts[key] = n
                # the busier process bounds the wall time when each has a core of its own
                cpus[key] = min(cpus.get(key, float("inf")), max(cpu))
                return secs

            return once

        one_s = best_of(RUNS, timed(one, "one"))
        two_s = best_of(RUNS, timed(two, "two"))
        r1, r2, rt = requests / one_s, requests / two_s, requests / tshark_s
        c1, c2 = requests / cpus["one"], requests / cpus["two"]
        size_mb = os.path.getsize(pcap) / 1e6
        note = (
            f"{requests} requests, {CONNECTIONS} connections, {size_mb:.0f} MB capture; "
            f"records: one={counts['one']} two={counts['two']}; {os.cpu_count()} cores shared, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        results = [
            Result(
                "analyzers: HTTP, one process (wall)",
                r1,
                "requests/s",
                "tshark -Y http.request -T fields",
                rt,
                25_000,
                note,
            ),
            Result(
                "analyzers: HTTP, two balanced processes (wall)",
                r2,
                "requests/s",
                "one process (wall)",
                r1,
                1.8 * r1,
                "target: 1.8x one process",
            ),
            Result(
                "analyzers: HTTP, one process, per CPU-second",
                c1,
                "requests/s",
                "tshark (wall)",
                rt,
                25_000,
                "requests / CPU seconds the analyzer used after connecting",
            ),
            Result(
                "analyzers: HTTP, two processes, per CPU-second of the busier",
                c2,
                "requests/s",
                "one process per CPU-second",
                c1,
                1.8 * c1,
                "requests / max CPU seconds of the two = wall time with a core each",
            ),
        ]
        for r in results:
            print(
                f"{r.name}: {r.value:,.0f} {r.unit}  ({r.baseline_name}: {r.baseline_value:,.0f}, "
                f"x{r.ratio:.2f})  {r.note}"
            )
        print(
            json.dumps(
                {
                    "requests": requests,
                    "one_s": one_s,
                    "two_s": two_s,
                    "tshark_s": tshark_s,
                    "one_cpu_s": cpus["one"],
                    "two_cpu_max_s": cpus["two"],
                    "load_avg": os.getloadavg(),
                }
            )
        )
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
