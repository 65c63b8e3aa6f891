"""A stalled incubator loses nothing at a trickle for as long as its capture ring's blocks last.

The kernel hands a TPACKET_V3 block over when it is full or when its retire timer (10 ms) fires, so
at one frame a millisecond each block holds one 10 ms slice whatever its size: the number of
blocks, not the ring's bytes, is how long a stall the ring rides out.  The incubator (mirror mode,
default 64 MiB ring, one `pcap:` output) is stopped with SIGSTOP for 1.5 s while a sender in another
namespace sends one datagram a millisecond; 64 blocks of 1 MiB (the old geometry) last 0.64 s, 256
blocks of 256 KiB last 2.56 s.  Checked: the kernel dropped nothing (`capture_ring_full` stays 0),
and the pcap output holds every datagram the sender sent (tshark counts them).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import IncubatorProcess, NetNS, no_offloads, quiet, sum_metric

pytestmark = pytest.mark.netns

SENDER = textwrap.dedent(
    """
    import socket, sys, time
    n = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.79.0.1", 4000))
    t = time.perf_counter()
    for i in range(n):
        t += 0.001
        while time.perf_counter() < t:
            pass
        s.sendto(b"n=%06d " % i + b"r" * 100, ("10.79.0.2", 5000))
    """
)
SENT = 1500  # 1.5 s at one a millisecond, all of it while the incubator is stopped


def test_a_stall_at_a_trickle_loses_nothing_within_the_rings_blocks(tmp_path):
    require_root()
    tshark = require_tool("tshark")
    require_tool("ethtool")
    out = tmp_path / "split.pcap"
    with NetNS("rss") as snd, NetNS("rsi") as ns:
        quiet(snd)
        quiet(ns)
        snd.veth("rs-out", "rs-in", other=ns)
        no_offloads(snd, "rs-out")
        no_offloads(ns, "rs-in")
        snd.ip("addr", "add", "10.79.0.1/24", "dev", "rs-out")
        snd.ip("neigh", "add", "10.79.0.2", "lladdr", "02:00:00:00:79:02", "dev", "rs-out")
        cfg = {
            "mode": "mirror",
            "capture": "afpacket:rs-in",
            "cells": [{"id": "split", "output": f"pcap:{out}"}],
            "metrics_port": 9479,
        }
        inc = IncubatorProcess(ns, cfg, str(tmp_path))
        try:
            inc.wait_ready(1)
            inc.proc.send_signal(signal.SIGSTOP)
            sender = snd.exec(sys.executable, "-c", SENDER, str(SENT))
            assert sender.wait(timeout=60) == 0
            time.sleep(0.05)  # the last slice's block retires
            inc.proc.send_signal(signal.SIGCONT)
            m = inc.wait_received(SENT)
        finally:
            inc.proc.send_signal(signal.SIGCONT)
            inc.stop()
    assert sum_metric(m, 'celltap_incubator_dropped_frames_total{reason="capture_ring_full"}') == 0, m
    got = subprocess.run(
        [tshark, "-r", str(out), "-Y", "udp.dstport == 5000", "-T", "fields", "-e", "frame.number"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert len(got) == SENT
