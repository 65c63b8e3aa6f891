"""Incubator benchmarks: offline split of a 64-byte-frame capture beside tcpdump, live replay, and
the per-cell outputs' batched sends (sendmmsg) beside one send per frame in the same run.

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
    from celltap.incubator.offline import split_capture

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


LIVE_CELLS = ("c0", "c1", "c2", "c3")


def _sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _ns_run(ns: str, *cmd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)


def _metrics(ns: str, port: int) -> dict[str, float]:
    out = _ns_run(
        ns,
        sys.executable,
        "-c",
        f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())",
    )
    m: dict[str, float] = {}
    for line in out.stdout.splitlines():
        if line.startswith("celltap_incubator_"):
            k, _, v = line.rpartition(" ")
            m[k] = float(v)
    return m


def _losses(m: dict[str, float]) -> float:
    """Frames the incubator did not forward: every drop reason, kernel ring drops included."""
    return sum(v for k, v in m.items() if k.startswith("celltap_incubator_dropped_frames_total"))


def _received(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("celltap_incubator_received_frames_total"))


def bench_live(tmp: str, frames: int = 200_000, port: int = 9477) -> dict[str, float]:
    """Highest replay rate into a veth that the incubator (mirror mode, 4 iface cells) forwards
    without a single drop, beside the sender's own top rate.  Needs root (network namespaces)."""
    import json
    import signal
    import uuid

    import yaml

    ns = f"ctbench-{uuid.uuid4().hex[:6]}"
    cap = os.path.join(tmp, "live.pcap")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "celltap.cli",
            "loadgen",
            "pcap",
            "small",
            cap,
            "--count",
            str(frames),
            "--flows",
            "20000",
        ],
        check=True,
    )
    _sh("ip", "netns", "add", ns)
    inc = None
    try:
        _ns_run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        _ns_run(ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        _sh("ip", "-n", ns, "link", "add", "tap", "type", "veth", "peer", "name", "tap-in")
        links = ["lo", "tap", "tap-in"]
        for c in LIVE_CELLS:
            _sh("ip", "-n", ns, "link", "add", c, "type", "veth", "peer", "name", f"{c}-rx")
            links += [c, f"{c}-rx"]
        for ifname in links:
            _sh("ip", "-n", ns, "link", "set", ifname, "up")
        replay = [sys.executable, "-m", "celltap.cli", "loadgen", "replay", cap, "tap", "--json"]

        def send(rate: float | None) -> dict:
            args = replay + (["--topspeed"] if rate is None else ["--pps", str(int(rate))])
            p = _ns_run(ns, *args)
            return json.loads(p.stdout)

        top = send(None)  # the sender alone, nobody capturing
        cfg = {
            "mode": "mirror",
            "capture": "afpacket:tap-in",
            "cells": [{"id": c, "output": f"iface:{c}"} for c in LIVE_CELLS],
            "metrics_port": port,
            "batch": {"ring_mb": 256, "timeout_ms": 5},
        }
        cfg_path = os.path.join(tmp, "live.yaml")
        with open(cfg_path, "w") as f:
            yaml.safe_dump(cfg, f)
        log = open(os.path.join(tmp, "live.log"), "wb")
        inc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "celltap.cli",
                "incubator",
                "--config",
                cfg_path,
            ],
            stderr=log,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if _metrics(ns, port).get("celltap_incubator_cells") == len(LIVE_CELLS):
                    break
            except (ValueError, OSError):
                pass
            time.sleep(0.2)

        def trial(rate: float) -> tuple[bool, dict]:
            before = _metrics(ns, port)
            res = send(rate)
            deadline = time.time() + 30
            after = before
            while time.time() < deadline:
                time.sleep(0.3)
                after = _metrics(ns, port)
                if _received(after) - _received(before) >= res["frames_sent"]:
                    break
            time.sleep(0.5)
            after = _metrics(ns, port)
            lost = _losses(after) - _losses(before)
            got = _received(after) - _received(before)
            return lost == 0 and got == res["frames_sent"] and res["send_errors_total"] == 0, res

        lo, hi = 0.0, float(top["pps"])
        best: dict = {}
        rate = hi
        for _ in range(7):
            ok, res = trial(rate)
            if ok:
                lo, best = rate, res
            else:
                hi = rate
            if hi - lo < 0.05 * hi:
                break
            rate = (lo + hi) / 2 if lo else rate / 2
        return {
            "live_sender_top_pps": float(top["pps"]),
            "live_zero_drop_pps": float(best.get("pps", 0.0)),
            "live_zero_drop_target_pps": lo,
            "live_frames_per_trial": float(frames),
        }
    finally:
        if inc is not None:
            inc.send_signal(signal.SIGTERM)
            inc.wait(timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


_SENDS = """
import json, os, socket, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from celltap.pcap.batch import FrameBatch
from celltap.incubator.outputs import IfaceOutput, VxlanOutput
try:  # a tree from before capture times (bench_sends(root=...)) has neither
    from celltap.incubator.outputs import GeneveOutput
except ImportError:
    GeneveOutput = None
os.sched_setaffinity(0, {int(sys.argv[2])})
frames = [bytes(12) + b"\\x08\\x00" + bytes([i % 251]) * 50 for i in range(1024)]
batch = FrameBatch.from_frames(frames, list(range(1024)))
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
def rate(out, rounds):
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(rounds):
            sent, _b, drops = out.send(batch)
            assert sent == 1024 and not drops, drops
        best = max(best, rounds * 1024 / (time.perf_counter() - t))
    return best
res = {}
for batched in (True, False):
    tag = "batched" if batched else "per_frame"
    res["send_iface_" + tag + "_fps"] = rate(IfaceOutput("s0", batched=batched), 200)
    vx = VxlanOutput("127.0.0.1", rx.getsockname()[1], 7, batched=batched)
    res["send_vxlan_" + tag + "_fps"] = rate(vx, 200)
    if GeneveOutput is not None:
        stamped = IfaceOutput("s0", batched=batched, timestamps=True)
        res["send_iface_arista_" + tag + "_fps"] = rate(stamped, 200)
        gn = GeneveOutput("127.0.0.1", rx.getsockname()[1], 7, batched=batched)
        res["send_geneve_" + tag + "_fps"] = rate(gn, 200)
print(json.dumps(res))
"""


def bench_sends(cpu: int = 1, root: str | None = None) -> dict[str, float]:
    """Frames/s of one cell output with sendmmsg batches of 1024 vs one send per frame (root); `root`:
    the source tree to measure (default this one; another checkout gives a before/after in one run)."""
    import json
    import uuid

    ns = f"ctsend-{uuid.uuid4().hex[:6]}"
    _sh("ip", "netns", "add", ns)
    try:
        _sh("ip", "-n", ns, "link", "add", "s0", "type", "veth", "peer", "name", "s1")
        for ifname in ("lo", "s0", "s1"):
            _sh("ip", "-n", ns, "link", "set", ifname, "up")
        root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        p = _ns_run(ns, sys.executable, "-c", _SENDS, root, str(cpu))
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        res = json.loads(p.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    for kind in ("iface", "vxlan", "iface_arista", "geneve"):
        if f"send_{kind}_batched_fps" not in res:
            continue
        res[f"send_{kind}_batched_over_per_frame"] = (
            res[f"send_{kind}_batched_fps"] / res[f"send_{kind}_per_frame_fps"]
        )
    return res


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmarks, print one line per result, return them."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=2_000_000)
    p.add_argument("--flows", type=int, default=20_000)
    p.add_argument("--cells", type=int, default=4)
    p.add_argument(
        "--live",
        action="store_true",
        help="also measure live replay through a veth and the outputs' send rates (root)",
    )
    p.add_argument("--live-frames", type=int, default=200_000, help="frames per live trial")
    p.add_argument("--sends-only", action="store_true", help="only the outputs' send rates (root)")
    p.add_argument(
        "--before", metavar="TREE", help="with --sends-only: also measure another checkout, in the same run"
    )
    if argv is None:
        # From bench/run.py: the live figure too where we can make veths (root).
        argv = ["--live"] if os.geteuid() == 0 else []
    a = p.parse_args(argv)
    if a.sends_only:
        results = {}
        if a.before:
            results.update({f"before_{k}": v for k, v in bench_sends(root=a.before).items()})
        results.update(bench_sends())
        for k, v in results.items():
            print(f"{k}: {v:,.3f}")
        return results
    with tempfile.TemporaryDirectory(prefix="celltap-bench-inc-") as tmp:
        cap = os.path.join(tmp, "in.pcap")
        make_capture(cap, a.frames, a.flows)
        results = bench_split(cap, a.cells, os.path.join(tmp, "out"))
        if a.live:
            results.update(bench_live(tmp, a.live_frames))
            results.update(bench_sends())
    for k, v in results.items():
        print(f"{k}: {v:,.3f}" if isinstance(v, float) else f"{k}: {v}")
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])
