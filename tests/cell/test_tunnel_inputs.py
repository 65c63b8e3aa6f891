"""The cell's UDP tunnel inputs on real loopback sockets: which time each frame gets, and what is dropped.

Datagrams come from the incubator's own outputs (Geneve with the time option, VXLAN) and from
hand-made headers (crafted: a third-party Geneve datagram without the option, one with a critical
option, a bogus future time).  Receive times are bracketed by the wall clock read before the send
and after the read.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import numpy as np
from celltap.cell.inputs import FUTURE_LIMIT_NS, GeneveSource, VxlanSource
from celltap.incubator.outputs import GeneveOutput, VxlanOutput

from celltap.capture_time import geneve_headers
from celltap.pcap.batch import FrameBatch
from fuzz import harness_capture_time as harness
from tests.incubator.test_outputs import varied_frames

OLD = 1_500_000_000_123_456_789  # a capture file's time (2017): carried times may be old


def _read_all(src, n: int, timeout: float = 5.0) -> FrameBatch:
    got: list[FrameBatch] = []
    deadline = time.monotonic() + timeout
    while sum(map(len, got)) < n and time.monotonic() < deadline:
        b = src.read_batch()
        if b is not None:
            got.append(b)
        else:
            time.sleep(0.005)
    frames = [b.frame(i) for b in got for i in range(len(b))]
    return FrameBatch.from_frames(frames, [int(t) for b in got for t in b.ts_ns])


def _free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_geneve_input_takes_carried_times_and_receive_times_for_others():
    port = _free_port()
    src = GeneveSource(f"geneve://127.0.0.1:{port}")
    frames = varied_frames(700)  # more than one recvmmsg call (256 slots)
    times = [OLD + i * 1_000 for i in range(len(frames))]
    out = GeneveOutput("127.0.0.1", port, 0)
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.time_ns()
    assert out.send(FrameBatch.from_frames(frames, times))[0] == 700
    # crafted: a third-party Geneve datagram (no options), a critical option, a future carried time
    plain = struct.pack("!BBHI", 0, 0, 0x6558, 0) + frames[0]
    critical = struct.pack("!BBHI", 1, 0x40, 0x6558, 0) + struct.pack("!HBB", 0x0102, 0x80, 0) + frames[1]
    future = geneve_headers(np.array([time.time_ns() + 2 * FUTURE_LIMIT_NS]), 0)[0].tobytes() + frames[2]
    for d in (plain, critical, future):
        raw.sendto(d, ("127.0.0.1", port))
    got = _read_all(src, 702)
    t1 = time.time_ns()
    assert len(got) == 702
    assert [got.frame(i) for i in range(700)] == frames
    assert got.ts_ns[:700].tolist() == times
    assert [got.frame(i) for i in (700, 701)] == [frames[0], frames[2]]
    assert all(t0 <= t <= t1 for t in got.ts_ns[700:].tolist())  # receive times
    assert src.drops == {"geneve_critical_option": 1}
    assert src.stamps == {"sender": 700, "receive": 1, "future": 1}
    for s in (src, out):
        s.close()
    raw.close()


def test_vxlan_input_frames_keep_their_own_receive_times():
    port = _free_port()
    src = VxlanSource(f"vxlan://127.0.0.1:{port}?vni=5", vni=5)
    ok = VxlanOutput("127.0.0.1", port, 5)
    other = VxlanOutput("127.0.0.1", port, 6)
    frames = varied_frames(300)
    t0 = time.time_ns()
    ok.send(FrameBatch.from_frames(frames[:150], [OLD] * 150))  # VXLAN has no room for OLD
    time.sleep(0.02)
    ok.send(FrameBatch.from_frames(frames[150:], [OLD] * 150))
    other.send(FrameBatch.from_frames(frames[:3], [OLD] * 3))
    got = _read_all(src, 300)
    t1 = time.time_ns()
    time.sleep(0.05)
    assert src.read_batch() is None
    assert [got.frame(i) for i in range(len(got))] == frames
    ts = got.ts_ns
    assert t0 <= ts.min() and ts.max() <= t1
    assert ts[150] - ts[149] >= 15_000_000  # the 20 ms pause between the bursts is in the times
    assert np.all(np.diff(ts) >= 0)
    assert src.drops == {"vxlan_other_vni": 3}
    for s in (src, ok, other):
        s.close()


def test_capture_time_harness_on_seeds_and_mutations():
    """The fuzz harness (fuzz/harness_capture_time.py) on its seeds and random mutations of them."""
    rng = random.Random(7)
    for s in harness.seeds():
        harness.test_one_input(s)
        for _ in range(300):
            b = bytearray(s)
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            harness.test_one_input(bytes(b))
