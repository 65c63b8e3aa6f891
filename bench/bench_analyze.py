"""`celltap analyze` against tshark extracting the same application fields, on one core, in one run.

Captures (made by loadgen in the run): `http` (keep-alive, pipelining, chunked, HEAD, 100-continue),
`mixed` (http, dns, tls, smtp, sip, ssh, torrent, fragments, VLAN, IPv6, ICMP interleaved), and a
larger `mixed` one. Both tools run pinned to the same core, write to a fresh directory on tmpfs
(/dev/shm) each run, best of RUNS:

- `celltap analyze F -o DIR` (whole process: interpreter start, imports, every log written);
- the same pipeline in-process (cell.analyze.pipeline.Analysis over the capture's batches, logs to
  tmpfs): what a long-running or live analysis costs per packet, start-up excluded;
- `tshark -r F -n -T fields -e <conn id, http, dns, tls, smtp, sip fields> -Y <those protocols>`
  into a file on tmpfs: the closest tshark does to writing the same logs (no conn.log: tshark's
  `-z conv` is a second pass; left out in tshark's favour).

Figures: packets per second (whole process and in-process) and wall/CPU seconds of both tools.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Result, pin_to_one_core

RUNS = 3
PY = sys.executable
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
CAPTURES = [("http", 2000), ("mixed", 3000), ("mixed", 30000)]
TSHARK_FIELDS = [
    "frame.time_epoch",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "http.request.method",
    "http.request.uri",
    "http.host",
    "http.user_agent",
    "http.response.code",
    "http.content_type",
    "dns.id",
    "dns.qry.name",
    "dns.qry.type",
    "dns.flags.rcode",
    "dns.a",
    "dns.aaaa",
    "dns.resp.ttl",
    "tls.handshake.extensions_server_name",
    "tls.handshake.ciphersuite",
    "tls.handshake.version",
    "smtp.req.command",
    "smtp.req.parameter",
    "smtp.response.code",
    "sip.Method",
    "sip.r-uri",
    "sip.Status-Code",
    "sip.Call-ID",
]
TSHARK_FILTER = "http or dns or tls.handshake or smtp or sip"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(argv: list[str], cpu: int, stdout_path: Path | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds of one run of a command pinned to `cpu`."""
    c0 = _children_cpu()
    t0 = time.perf_counter()
    with open(stdout_path or os.devnull, "wb") as out:
        subprocess.run(
            argv,
            check=True,
            stdout=out,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
        )
    return time.perf_counter() - t0, _children_cpu() - c0


def _best(fn: Callable[[], tuple[float, float]], runs: int = RUNS) -> tuple[float, float]:
    return min((fn() for _ in range(runs)), key=lambda wc: wc[0])


def _packets(pcap: Path) -> int:
    from celltap.pcap import open_capture

    with open_capture(str(pcap)) as cap:
        return sum(len(b) for b in cap)


def _in_process(pcap: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of the analysis pipeline itself over the capture's batches (read beforehand)."""
    from importlib import resources

    from celltap.cell.analyze.logs import LogSet
    from celltap.cell.analyze.pipeline import Analysis
    from celltap.cell.sftap_config import load_config

    from celltap.pcap import read_all

    batches = read_all(str(pcap))
    with resources.as_file(resources.files("celltap") / "defaults" / "sftap.yaml") as p:
        cfg = load_config(str(p))
    best = (float("inf"), float("inf"))
    for _ in range(RUNS):
        out = Path(tempfile.mkdtemp(prefix="bench-analyze-", dir=SHM))
        logs = LogSet(out)
        t0, c0 = time.perf_counter(), time.process_time()
        analysis = Analysis(cfg, logs)
        for b in batches:
            analysis.process(b)
        analysis.finish()
        logs.close()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
        shutil.rmtree(out)
    return best


def main() -> list[Result]:
    """Run every capture through both tools; return the figures."""
    cpu = pin_to_one_core()
    tshark = shutil.which("tshark")
    work = Path(tempfile.mkdtemp(prefix="bench-analyze-", dir=SHM))
    results: list[Result] = []
    try:
        for scenario, count in CAPTURES:
            pcap = work / f"{scenario}-{count}.pcap"
            subprocess.run(
                [PY, "-m", "celltap.cli", "loadgen", "pcap", scenario, str(pcap), "--count", str(count)],
                check=True,
                capture_output=True,
            )
            n = _packets(pcap)

            def ours(pcap: Path = pcap) -> tuple[float, float]:
                out = Path(tempfile.mkdtemp(prefix="logs-", dir=work))
                try:
                    return _timed(
                        [PY, "-m", "celltap.cli", "analyze", str(pcap), "-o", str(out), "--quiet"], cpu
                    )
                finally:
                    shutil.rmtree(out)

            def theirs(pcap: Path = pcap) -> tuple[float, float]:
                out = Path(tempfile.mkdtemp(prefix="tshark-", dir=work))
                argv = [tshark, "-r", str(pcap), "-n", "-T", "fields", "-Y", TSHARK_FILTER]
                for f in TSHARK_FIELDS:
                    argv += ["-e", f]
                try:
                    return _timed(argv, cpu, out / "fields.tsv")
                finally:
                    shutil.rmtree(out)

            wall, cpu_s = _best(ours)
            inproc, inproc_cpu = _in_process(pcap)
            label = f"{scenario} ({n} packets)"
            if tshark:
                t_wall, t_cpu = _best(theirs)
            else:
                t_wall = t_cpu = 0.0
            results.append(
                Result(
                    f"analyze whole process, {label}",
                    n / wall,
                    "packets/s",
                    "tshark -T fields, same fields" if tshark else "",
                    n / t_wall if t_wall else 0.0,
                    note=f"wall {wall:.2f} s, cpu {cpu_s:.2f} s; tshark wall {t_wall:.2f} s, "
                    f"cpu {t_cpu:.2f} s",
                )
            )
            results.append(
                Result(
                    f"analyze in-process (no start-up), {label}",
                    n / inproc,
                    "packets/s",
                    "tshark -T fields, same fields" if tshark else "",
                    n / t_wall if t_wall else 0.0,
                    note=f"wall {inproc:.2f} s, cpu {inproc_cpu:.2f} s",
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    for r in main():
        print(f"{r.name}: {r.value:,.0f} {r.unit}  (x{r.ratio:.2f} of {r.baseline_name})  {r.note}")
