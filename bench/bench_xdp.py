"""XDP incubator benchmark: the kernel path against the Python incubator, same traffic, one run.

Setup (a network namespace with a unique name, removed at the end): trafgen sends 64-byte
Ethernet/IPv4/UDP frames (20 000 flows by default, `--flows`; each frame the next flow's, so a
flow's state is touched once per 20 000 frames: the worst case for caches) into veth tg0 -> tg1;
the incubator (`capture: xdp:tg1` or `afpacket:tg1`, 4 cells `iface:cK`) separates them onto
veths c0..c3, whose peers run `xdp_sink` (count and drop: a receiver that costs next to nothing),
so "delivered" is what the sinks counted and "lost" is sent - delivered.

Figures, each for both paths at the same offered rates:
* delivered frames and loss at fixed trafgen rates and at trafgen's top rate (one and two
  trafgen CPUs);
* the whole machine's CPU seconds per million offered frames, from /proc/stat (user, system,
  softirq, irq, steal; every process and the kernel, so other helpers' load on this shared
  machine counts too: the idle run before the measurements is reported as the floor), its
  softirq part (where the XDP program and AF_PACKET delivery run), and the incubator process's
  own CPU seconds per million frames (/proc/PID/stat: not inflated by other load);
* for the XDP program, ns per frame from the kernel's BPF statistics
  (`kernel.bpf_stats_enabled=1`, run_time_ns / run_cnt of `bpftool prog show`), per run and over
  all runs, which includes the cost of the statistics themselves (a clock read per run; on a VM
  whose sched_clock is kvm-clock, tens of ns).
* the floor of that method, measured in the same run with the same traffic at the same rates on
  the same veth: `xdp_pass` (returns XDP_PASS: what the statistics and the call cost) and
  `xdp_redirect_floor` (only `bpf_redirect_map` through the same DEVMAP to c0: the least a
  redirecting program costs); the incubator's figure is printed as a ratio to both and as the ns
  above them.

Run as root: `.venv/bin/python bench/bench_xdp.py [--seconds S] [--paths floor,xdp,python]
[--rounds N] [--json]` (`--rounds` repeats floors and ours one after the other), or with the
defaults through the harness: `.venv/bin/python -m bench.run bench_xdp` (`main()` returns the
figures as a dict: `runs` and `bpf_stats` are one row per measurement, tagged by path and round).
Needs root, trafgen (netsniff-ng), bpftool and clang; without them it stops with one line saying
which is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

# Run as a script (`python bench/bench_xdp.py`) as well as a module: the bed imports tests.incubator.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CELLS = ("c0", "c1", "c2", "c3")
TRAFGEN_CONF = """{
  eth(da=02:00:00:00:00:02, sa=02:00:00:00:00:01, type=0x0800),
  ipv4(saddr=10.0.0.1, daddr=10.0.1.1, proto=17, ttl=64),
  udp(sp=dinc(10000, {last_port}), dp=80),
  fill(0x00, 18)
}
"""


def sh(*cmd: str, check: bool = True) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


class Bed:
    """The namespace, its veths and the sinks."""

    def __init__(self) -> None:
        self.ns = f"ctb-xdp-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", self.ns)
        self.ip("link", "set", "lo", "up")
        pairs = [("tg0", "tg1")] + [(c, f"{c}-rx") for c in CELLS]
        for a, b in pairs:
            self.ip("link", "add", a, "type", "veth", "peer", "name", b)
            for n in (a, b):
                self.run(
                    "ethtool", "-K", n, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off"
                )
                self.ip("link", "set", n, "up")
        for key in ("all", "default"):
            self.run("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        self.sinks = self.call(self._load_sinks)

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.ns, *args)

    def run(self, *cmd: str, check: bool = False) -> str:
        return sh("ip", "netns", "exec", self.ns, *cmd, check=check)

    def call(self, fn):
        from tests.incubator.netns import NetNS

        n = NetNS.__new__(NetNS)
        n.name = self.ns
        return n.call(fn)

    def _load_sinks(self):
        import socket

        from celltap.incubator.xdp.build import build_object
        from celltap.incubator.xdp.libbpf import BpfObject

        obj = BpfObject(str(build_object()), programs=("xdp_sink",))
        for c in CELLS:
            obj.attach_xdp("xdp_sink", socket.if_nametoindex(f"{c}-rx"))
        return obj

    def delivered(self) -> int:
        import struct

        from celltap.incubator.xdp.libbpf import num_cpus

        raw = self.sinks.map("counters").lookup(struct.pack("<I", 0), 8 * num_cpus())
        return sum(struct.unpack(f"<{num_cpus()}Q", raw)) if raw else 0

    def close(self) -> None:
        self.sinks.close()
        sh("ip", "netns", "del", self.ns, check=False)


def cpu_jiffies() -> tuple[int, int, int]:
    """(busy, softirq, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, softirq, busy + idle + iowait


def start_incubator(bed: Bed, capture: str, tmp: str, cpu: int) -> subprocess.Popen:
    import yaml

    cfg = {
        "mode": "mirror",
        "capture": capture,
        "cells": [{"id": c, "output": f"iface:{c}"} for c in CELLS],
        "metrics_port": 9479,
    }
    path = os.path.join(tmp, f"inc-{capture.split(':')[0]}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    log = open(path + ".log", "wb")
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            bed.ns,
            "taskset",
            "-c",
            str(cpu),
            sys.executable,
            "-m",
            "celltap.cli",
            "-v",
            "incubator",
            "--config",
            path,
        ],
        stderr=log,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if "cells joined" in open(path + ".log", errors="replace").read():
            break
        if proc.poll() is not None:
            raise RuntimeError(open(path + ".log").read()[-2000:])
        time.sleep(0.1)
    time.sleep(0.5)
    return proc


def tx_stats(bed: Bed) -> tuple[int, int]:
    """(packets, dropped) tg0 transmitted: what trafgen handed to the veth, and what the veth
    could not pass to tg1 (its receive ring full: the receiver's loss)."""
    st = json.loads(bed.run("ip", "-s", "-j", "link", "show", "tg0", check=True))[0]["stats64"]["tx"]
    return int(st["packets"]), int(st["dropped"])


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (the incubator: its own cost, whatever else runs)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def offer(bed: Bed, conf: str, frames: int, rate: int | None, cpus: int, pid: int | None) -> dict:
    """Send `frames` with trafgen at `rate` pps (None: as fast as it can); measure what arrived
    (`pid`: the incubator process whose own CPU time is counted, None when none runs)."""
    before = bed.delivered()
    p0 = proc_cpu_s(pid) if pid else 0.0
    tx0 = tx_stats(bed)
    j0, t0 = cpu_jiffies(), time.perf_counter()
    cmd = ["trafgen", "--dev", "tg0", "--conf", conf, "--num", str(frames), "--cpus", str(cpus), "-q", "-C"]
    if rate:
        cmd += ["--rate", f"{rate}pps"]
    bed.run(*cmd)  # trafgen may end early (EAGAIN flushing its ring): tg0's counters say what it sent
    sent_s = time.perf_counter() - t0
    tx1 = tx_stats(bed)
    frames = (tx1[0] - tx0[0]) + (tx1[1] - tx0[1])
    # wait until the receivers stop counting (the Python path drains its ring)
    last, stable = -1, 0
    while stable < 3:
        time.sleep(0.2)
        now = bed.delivered()
        stable = stable + 1 if now == last else 0
        last = now
    j1 = cpu_jiffies()
    p1 = proc_cpu_s(pid) if pid else 0.0
    hz = os.sysconf("SC_CLK_TCK")
    got = last - before
    busy = (j1[0] - j0[0]) / hz
    wall = time.perf_counter() - t0
    return {
        "offered_pps": round(frames / sent_s),
        "rate_asked": rate or "max",
        "trafgen_cpus": cpus,
        "sent": frames,
        "delivered": got,
        "lost": frames - got,
        "veth_tx_dropped": tx1[1] - tx0[1],
        "cpu_s_per_mframe": round(busy / frames * 1e6, 3),
        "softirq_s_per_mframe": round((j1[1] - j0[1]) / hz / frames * 1e6, 3),
        "busy_cpus": round(busy / wall, 2),
        "incubator_process_cpu_s_per_mframe": round((p1 - p0) / frames * 1e6, 3) if pid else None,
    }


def bpf_stats(bed: Bed) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the XDP program attached to tg1."""
    net = json.loads(bed.run("bpftool", "-j", "net", "show", "dev", "tg1", check=True))
    ids = [x["id"] for entry in net for x in entry.get("xdp", [])]
    info = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(ids[0])))
    return int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0))


def test_run_ns(repeat: int = 1_000_000) -> dict:
    """ns per run of xdp_incubator on one 64-byte frame by BPF_PROG_TEST_RUN (the kernel's loop:
    no NIC, no redirect transmit; pins warm after the first run), 4 cells."""
    import socket

    from celltap.incubator.cells import TABLE_BITS, CellSet
    from celltap.incubator.xdp.libbpf import test_run
    from celltap.incubator.xdp.program import KernelConfig, PartitionProgram
    from celltap.loadgen.packets import ethernet, ipv4, udp

    p = PartitionProgram(KernelConfig(), ("xdp_incubator",), TABLE_BITS)
    try:
        cells = CellSet({c: 1 for c in CELLS})
        lo = socket.if_nametoindex("lo")
        p.set_cells(cells, {s: lo for s in cells.alive_slots()})
        a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 1, 1])
        frame = ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 10000, 80, bytes(18))))
        fd = p.obj.prog_fd("xdp_incubator")
        test_run(fd, frame)
        best = min(test_run(fd, frame, repeat)[2] for _ in range(3))
        return {"frame_bytes": len(frame), "repeat": repeat, "ns_per_frame_best_of_3": best}
    finally:
        p.close()


def idle_floor(seconds: float = 2.0) -> float:
    """The machine's busy CPU seconds per second with nothing of ours running (other load)."""
    j0 = cpu_jiffies()
    time.sleep(seconds)
    j1 = cpu_jiffies()
    return (j1[0] - j0[0]) / os.sysconf("SC_CLK_TCK") / seconds


RATES = ((250_000, 1), (500_000, 1), (1_000_000, 1), (None, 1), (None, 2))  # (pps or max, trafgen CPUs)
# The floor of the BPF-stats method: the same attachment, traffic and statistics around programs
# that do (next to) nothing; xdp_incubator's figure minus these is what its own work costs.
FLOORS = {"floor_pass": "xdp_pass", "floor_redirect": "xdp_redirect_floor"}


def attach_floor(bed: Bed, program: str):
    """Load and attach a floor program to tg1 (xdp_redirect_floor sends every frame to c0)."""
    import socket
    import struct

    from celltap.incubator.xdp.build import build_object
    from celltap.incubator.xdp.libbpf import BpfObject

    def go():
        obj = BpfObject(str(build_object()), programs=(program,))
        try:
            c0 = socket.if_nametoindex("c0")
            obj.map("cell_devs").update(struct.pack("<I", 0), struct.pack("<I", c0))
            obj.attach_xdp(program, socket.if_nametoindex("tg1"))
        except BaseException:
            obj.close()
            raise
        return obj

    return bed.call(go)


def xdp_runs(bed: Bed, conf: str, seconds: float, pid: int | None, label: str) -> tuple[list[dict], dict]:
    """Every rate of RATES through the XDP program attached to tg1, each with its BPF-stats ns/frame;
    returns (runs, {run_time_ns, run_cnt, ns_per_frame} over all of them)."""
    runs, total_ns, total_cnt = [], 0, 0
    for rate, cpus in RATES:
        s0 = bpf_stats(bed)
        r = offer(bed, conf, int((rate or 1_200_000) * seconds), rate, cpus, pid)
        s1 = bpf_stats(bed)
        ns, cnt = s1[0] - s0[0], s1[1] - s0[1]
        r["bpf_ns_per_frame"] = round(ns / cnt, 1) if cnt else None
        r["bpf_run_cnt"] = cnt
        total_ns += ns
        total_cnt += cnt
        runs.append(r)
        print(label, r, file=sys.stderr)
    overall = {
        "run_time_ns": total_ns,
        "run_cnt": total_cnt,
        "ns_per_frame": round(total_ns / total_cnt, 1) if total_cnt else None,
    }
    return runs, overall


def measure(
    seconds: float, paths: tuple[str, ...] = ("floor", "xdp", "python"), rounds: int = 1, flows: int = 20000
) -> dict:
    """The asked paths, same rates; returns the results dict.  `rounds` > 1 repeats the BPF-stats
    programs (floors and ours) one after the other, so load from other processes hits all alike."""
    tmp = tempfile.mkdtemp(prefix="bench_xdp")
    conf = os.path.join(tmp, "udp64.cfg")
    with open(conf, "w") as f:
        ports = f"dinc(10000, {10000 + flows - 1})" if flows > 1 else "10000"
        f.write(TRAFGEN_CONF.replace("dinc(10000, {last_port})", ports))
    floor = idle_floor()
    out: dict = {
        "machine": machine(),
        "idle_busy_cpus": round(floor, 3),
        "flows": flows,
        "runs": [],
        "bpf_stats": [],
    }
    if "xdp" in paths:
        out["xdp_test_run"] = test_run_ns()
    stats_was = sh("sysctl", "-n", "kernel.bpf_stats_enabled").strip()
    bed = Bed()
    cpu = max(os.sched_getaffinity(0))
    order = ([*FLOORS] if "floor" in paths else []) + (["xdp"] if "xdp" in paths else [])
    try:
        sh("sysctl", "-qw", "kernel.bpf_stats_enabled=1")
        for rnd in range(rounds):
            for path in order:
                label = path if rounds == 1 else f"{path}#{rnd}"
                if path in FLOORS:
                    obj = attach_floor(bed, FLOORS[path])
                    try:
                        runs, overall = xdp_runs(bed, conf, seconds, None, label)
                    finally:
                        obj.close()
                else:
                    proc = start_incubator(bed, "xdp:tg1", tmp, cpu)
                    try:
                        runs, overall = xdp_runs(bed, conf, seconds, proc.pid, label)
                    finally:
                        proc.send_signal(signal.SIGTERM)
                        proc.wait(timeout=30)
                out["runs"].extend(dict(path=path, round=rnd, **r) for r in runs)
                out["bpf_stats"].append(dict(path=path, round=rnd, **overall))
        sh("sysctl", "-qw", f"kernel.bpf_stats_enabled={stats_was}")
        if "python" in paths:
            proc = start_incubator(bed, "afpacket:tg1", tmp, cpu)
            try:
                out["runs"].extend(
                    dict(
                        path="python",
                        round=0,
                        **offer(bed, conf, int((rate or 1_200_000) * seconds), rate, cpus, proc.pid),
                    )
                    for rate, cpus in RATES
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    finally:
        sh("sysctl", "-qw", f"kernel.bpf_stats_enabled={stats_was}", check=False)
        bed.close()
    out.update(summarise(out["bpf_stats"]))
    out["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    out["idle_busy_cpus_end"] = round(idle_floor(), 3)
    return out


def summarise(stats: list[dict]) -> dict:
    """ns/frame of each program over all its rounds, and ours against the floors (same run)."""
    ns = {}
    for path in dict.fromkeys(r["path"] for r in stats):
        rounds = [r for r in stats if r["path"] == path]
        cnt = sum(r["run_cnt"] for r in rounds)
        ns[path] = round(sum(r["run_time_ns"] for r in rounds) / cnt, 1) if cnt else None
    res: dict = {"bpf_ns_per_frame": ns}
    if ns.get("xdp"):
        res["xdp_ns_per_frame"] = ns["xdp"]
        res["xdp_bpf_stats_frames"] = sum(r["run_cnt"] for r in stats if r["path"] == "xdp")
        for f in FLOORS:
            if ns.get(f):
                res[f"xdp_over_{f}"] = round(ns["xdp"] / ns[f], 2)
                res[f"xdp_minus_{f}_ns"] = round(ns["xdp"] - ns[f], 1)
    return res


def machine() -> dict:
    """What ran the benchmark."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = open("/proc/loadavg").read().split()[:3]
    trafgen = sh("trafgen", "--version", check=False).splitlines()
    return {
        "kernel": platform.release(),
        "cpu": model,
        "cpus": str(os.cpu_count()),
        "loadavg": " ".join(load),
        "trafgen": trafgen[0] if trafgen else "",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def unavailable() -> str | None:
    """Why this machine cannot run the benchmark (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, XDP, kernel.bpf_stats_enabled)"
    for tool, pkg in (("trafgen", "netsniff-ng"), ("bpftool", "bpftool"), ("clang", "clang")):
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: apt-get install {pkg})"
    return None


def main(argv: list[str] | None = None) -> dict:
    """Run and print the figures (bench/run.py calls main() without arguments: the defaults)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic per measurement at the asked rate")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--paths",
        default="floor,xdp,python",
        help="comma-separated: floor (xdp_pass and xdp_redirect_floor), xdp (the incubator's program), "
        "python (the AF_PACKET incubator)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="repeat the BPF-stats programs this many times")
    ap.add_argument("--flows", type=int, default=20000, help="UDP flows trafgen cycles through (1-55536)")
    args = ap.parse_args(argv if argv is not None else [])
    why = unavailable()
    if why:
        raise SystemExit(f"bench_xdp: {why}")
    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip())
    res = measure(args.seconds, paths, args.rounds, min(max(args.flows, 1), 55536))
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(json.dumps(res["machine"]))
        print(f"idle floor: {res['idle_busy_cpus']} busy CPUs")
        print(f"ns/frame by BPF stats (same run, same traffic): {res['bpf_ns_per_frame']}")
        for f in FLOORS:
            if f"xdp_over_{f}" in res:
                print(f"xdp_incubator vs {f}: x{res[f'xdp_over_{f}']} (+{res[f'xdp_minus_{f}_ns']} ns)")
        if "xdp_test_run" in res:
            print(f"BPF_PROG_TEST_RUN: {res['xdp_test_run']}")
        for r in res["runs"]:
            print(r)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
