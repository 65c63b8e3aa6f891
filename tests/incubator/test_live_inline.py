"""Inline mode: the incubator bridges two namespaces (ping and TCP pass both ways) while every
frame is also separated to its cell; tcpdump on host A's link and on each cell's link are the oracle."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
import time

import pytest
from celltap.incubator.cells import WEIGHT_SCALE

from celltap.pcap import read_all
from celltap.ring import Ring
from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import IncubatorProcess, NetNS, Tcpdump, conservation, no_offloads, quiet
from tests.incubator.oracle import expected_owner, tshark_packets

CELLS = ("c0", "c1")
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.9.0.2", 5001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); data = b""
while len(data) < int(sys.argv[1]):
    chunk = c.recv(65536)
    if not chunk: break
    data += chunk
c.sendall(data[::-1]); c.close()
"""
CLIENT = """
import hashlib, os, socket, sys
n = int(sys.argv[1]); data = bytes(os.urandom(n))
c = socket.create_connection(("10.9.0.2", 5001), timeout=20); c.sendall(data)
back = b""
while len(back) < n:
    chunk = c.recv(65536)
    if not chunk: break
    back += chunk
print("ok" if back == data[::-1] else "mismatch", flush=True)
"""


def frames_of(path: str) -> list[bytes]:
    return [b.frame(i) for b in read_all(path) for i in range(len(b))]


@pytest.fixture
def topo():
    require_root()
    for tool in ("tcpdump", "ethtool", "tshark", "ping"):
        require_tool(tool)
    with NetNS("a") as a, NetNS("b") as b, NetNS("br") as br:
        for ns in (a, b, br):
            quiet(ns)
        a.veth("a0", "ia", br)
        b.veth("b0", "ib", br)
        for c in CELLS:
            br.veth(c, f"{c}-rx")
        no_offloads(a, "a0")
        no_offloads(b, "b0")
        for ifname in ("ia", "ib", *CELLS, *(f"{c}-rx" for c in CELLS)):
            no_offloads(br, ifname)
        a.ip("addr", "add", "10.9.0.1/24", "dev", "a0")
        b.ip("addr", "add", "10.9.0.2/24", "dev", "b0")
        yield a, b, br


def test_inline_bridges_ping_and_tcp_and_separates_every_frame(topo, tmp_path):
    a, b, br = topo
    cfg = {
        "mode": "inline",
        "capture": "afpacket:ia",
        "peer": "afpacket:ib",
        "cells": [{"id": c, "output": f"iface:{c}"} for c in CELLS],
        "non_ip": "cell0",
        "metrics_port": 9467,
    }
    wire = Tcpdump(a, "a0", str(tmp_path / "a0.pcap"), direction_in=False)
    dumps = {c: Tcpdump(br, f"{c}-rx", str(tmp_path / f"{c}.pcap")) for c in CELLS}
    inc = IncubatorProcess(br, cfg, str(tmp_path))
    try:
        inc.wait_ready(len(CELLS))
        ping_ab = a.run("ping", "-c", "4", "-i", "0.2", "-W", "2", "10.9.0.2")
        ping_ba = b.run("ping", "-c", "4", "-i", "0.2", "-W", "2", "10.9.0.1")
        size = 300_000
        server = b.exec(sys.executable, "-c", SERVER, str(size), stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        client = a.run(sys.executable, "-c", CLIENT, str(size))
        server.wait(timeout=20)
        time.sleep(0.5)
        m = inc.metrics()
    finally:
        rc = inc.stop()
        files = {c: d.stop() for c, d in dumps.items()}
        wire_path = wire.stop()
    assert ping_ab.returncode == 0, ping_ab.stdout + ping_ab.stderr
    assert ping_ba.returncode == 0, ping_ba.stdout + ping_ba.stderr
    assert client.stdout.strip() == "ok", client.stderr
    assert rc == 0, inc.read_log()
    # Every frame that crossed the bridge (seen on host A's link, both directions) reached a cell, once.
    crossed = collections.Counter(frames_of(wire_path))
    got = {c: frames_of(p) for c, p in files.items()}
    union = collections.Counter(f for fs in got.values() for f in fs)
    assert union == crossed
    assert sum(crossed.values()) > 60
    received, accounted = conservation(m)
    assert received == sum(crossed.values()) == accounted
    assert m['celltap_incubator_bridged_frames_total{to="ib"}'] + m[
        'celltap_incubator_bridged_frames_total{to="ia"}'
    ] == sum(crossed.values())
    # ...and to the right cell: the TCP connection and the pings follow the ring; ARP goes to cell 0.
    ring = Ring({c: WEIGHT_SCALE for c in CELLS})
    tshark = require_tool("tshark")
    kinds = collections.Counter()
    for c, path in files.items():
        for p in tshark_packets(path, tshark):
            assert expected_owner(ring, p.l3, p.proto, p.src, p.sport, p.dst, p.dport) == c, p
            kinds[p.proto] += 1
    assert kinds[6] > 100 and kinds[1] == 16
    ip_frames = sum(kinds.values())
    assert len(got["c0"]) + len(got["c1"]) - ip_frames >= 2  # the ARP exchange, on cell 0
    assert (
        hashlib.sha1(b"".join(sorted(union.elements()))).digest()
        == hashlib.sha1(b"".join(sorted(crossed.elements()))).digest()
    )
    assert os.path.getsize(files["c0"]) > 24
