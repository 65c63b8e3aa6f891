"""Real kernel TCP traffic: a scenario of tests/cell/kernel_tcp_scenarios.py in a new netns, tcpdump on lo."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import require_root, require_tool

ROOT = Path(__file__).resolve().parents[2]
MARK = b"celltap-kernel-tcp-end-of-scenario"
FILTER = "tcp or udp port 9"
TCPDUMP_OPTS = ("--immediate-mode", "-s", "16384", "-B", "32768")


def capture_scenario(name: str, tmp: Path, sysctls: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """Run scenario `name` in a new namespace while tcpdump writes its loopback traffic; (pcap, summary)."""
    require_root()
    require_tool("ip")
    require_tool("taskset")
    tcpdump = require_tool("tcpdump")
    tshark = require_tool("tshark")
    ns = f"ctts{os.getpid() % 100000}{secrets.token_hex(2)}"
    raw = tmp / f"{name}.raw.pcap"
    pcap = tmp / f"{name}.pcap"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=20)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=20)
        for kv in sysctls:
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", kv], check=True, timeout=20)
        dump = subprocess.Popen(
            # immediate mode: every packet reaches the file before tcpdump is stopped; a short snaplen
            # and a 32 MiB buffer: the ring holds buffer / snaplen packets, and a busy machine may let
            # tcpdump fall behind (the scenarios' segments are far below 16 KiB on the wire)
            ["ip", "netns", "exec", ns, tcpdump, "-i", "lo", *TCPDUMP_OPTS, "-Unw", str(raw), FILTER],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = dump.stderr.readline()  # "listening on lo, ..." once the capture runs
            assert "listening" in line, line
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            # tcpdump sees loopback packets on their receive side, queued per CPU: the scenario and
            # the sentinel below run on one CPU so that they are received (and captured) in order
            cpu = str(min(os.sched_getaffinity(0)))
            taskset = ["taskset", "-c", cpu]
            proc = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    *taskset,
                    sys.executable,
                    "-m",
                    "tests.cell.kernel_tcp_scenarios",
                    name,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=ROOT,
            )
            assert proc.returncode == 0, proc.stderr
            # the capture is complete once a last datagram sent after the scenario is in the file
            sentinel = f"import socket; socket.socket(2, 2).sendto({MARK!r}, ('127.0.0.1', 9))"
            deadline = time.monotonic() + 30
            while MARK not in raw.read_bytes():
                assert time.monotonic() < deadline, "tcpdump did not write the sentinel"
                subprocess.run(
                    ["ip", "netns", "exec", ns, *taskset, sys.executable, "-c", sentinel], check=True
                )
                time.sleep(0.2)
        finally:
            dump.send_signal(signal.SIGINT)
            stats = dump.communicate(timeout=10)[1]
        assert "\n0 packets dropped by kernel" in stats, stats
        # the scenario's TCP packets only
        subprocess.run([tshark, "-r", str(raw), "-Y", "tcp", "-F", "pcap", "-w", str(pcap)], check=True)
        return pcap, json.loads(proc.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
