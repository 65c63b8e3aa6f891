"""Mirror mode on real kernel interfaces: veth pairs in a network namespace, loadgen replay in,
tcpdump on every cell's link, tshark to decode what each cell got."""

from __future__ import annotations

import collections
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

CELLS = ("c0", "c1", "c2")


def frames_of(path: str) -> list[bytes]:
    return [b.frame(i) for b in read_all(path) for i in range(len(b))]


def replay(ns: NetNS, pcap: str, ifname: str, pps: int = 20000) -> None:
    p = ns.run(
        sys.executable, "-m", "celltap.cli", "loadgen", "replay", pcap, ifname, "--pps", str(pps), timeout=120
    )
    assert p.returncode == 0, p.stderr


@pytest.fixture
def mirror_ns():
    require_root()
    for tool in ("tcpdump", "ethtool", "tshark"):
        require_tool(tool)
    with NetNS("mir") as ns:
        quiet(ns)
        ns.veth("tap", "tap-in")
        for c in CELLS:
            ns.veth(c, f"{c}-rx")
        for ifname in ("tap", "tap-in", *CELLS, *(f"{c}-rx" for c in CELLS)):
            no_offloads(ns, ifname)
        yield ns


def test_mirror_each_cell_gets_exactly_its_flows(mirror_ns, tmp_path):
    ns = mirror_ns
    traffic = str(tmp_path / "in.pcap")
    frag = str(tmp_path / "frag.pcap")
    subprocess.run(
        [sys.executable, "-m", "celltap.cli", "loadgen", "pcap", "mixed", traffic, "--count", "80"],
        check=True,
    )
    subprocess.run(
        [sys.executable, "-m", "celltap.cli", "loadgen", "pcap", "frag", frag, "--count", "30"], check=True
    )
    sent = frames_of(traffic) + frames_of(frag)
    cfg = {
        "mode": "mirror",
        "capture": "afpacket:tap-in",
        "cells": [{"id": c, "output": f"iface:{c}"} for c in CELLS],
        "non_ip": "cell0",
        "metrics_port": 9466,
    }
    dumps = {c: Tcpdump(ns, f"{c}-rx", str(tmp_path / f"{c}.pcap")) for c in CELLS}
    tap = Tcpdump(ns, "tap-in", str(tmp_path / "tap.pcap"))
    inc = IncubatorProcess(ns, cfg, str(tmp_path))
    try:
        inc.wait_ready(len(CELLS))
        replay(ns, traffic, "tap")
        replay(ns, frag, "tap")
        m = inc.wait_received(len(sent))
    finally:
        rc = inc.stop()
        files = {c: d.stop() for c, d in dumps.items()}
        tapf = tap.stop()
        links = {c: ns.ip("-s", "link", "show", f"{c}-rx").split("RX:")[1][:150] for c in CELLS}
    extra = collections.Counter(frames_of(tapf)) - collections.Counter(sent)
    assert not extra, [f.hex() for f in extra]
    assert rc == 0, inc.read_log()
    # Nothing lost, nothing twice: the cells together got exactly the frames sent.
    got = {c: frames_of(p) for c, p in files.items()}
    union = collections.Counter(f for fs in got.values() for f in fs)
    assert union - collections.Counter(sent) == collections.Counter(), [
        f.hex() for f in union - collections.Counter(sent)
    ]
    diag = (
        links,
        {k[18:]: v for k, v in m.items() if "frames_total{" in k},
        {c: len(v) for c, v in got.items()},
    )
    assert union == collections.Counter(sent), diag
    received, accounted = conservation(m)
    assert received == len(sent)
    assert received == accounted, m
    # Each cell got exactly the frames of its flows (tshark decodes, the ring oracle decides).
    ring = Ring({c: WEIGHT_SCALE for c in CELLS})
    tshark = require_tool("tshark")
    first_frag = {}
    for p in tshark_packets(frag, tshark) + tshark_packets(traffic, tshark):
        if p.is_frag and p.frag_off == 0:
            first_frag[p.datagram] = p
    both_directions = 0
    for c, path in files.items():
        flows = collections.defaultdict(set)
        for p in tshark_packets(path, tshark):
            head = first_frag[p.datagram] if p.is_frag else p
            assert expected_owner(ring, p.l3, head.proto, head.src, head.sport, head.dst, head.dport) == c, p
            flows[p.flow].add(p.src)
        both_directions += sum(len(v) == 2 for v in flows.values())
    assert both_directions > 50
    for c in CELLS:
        assert m[f'celltap_incubator_out_frames_total{{cell="{c}"}}'] == len(got[c]), (
            m,
            {k: len(v) for k, v in got.items()},
        )


def test_dicap_mode_cell_keeps_exactly_its_share(mirror_ns, tmp_path):
    """`mode: dicap`: the cell process filters in the kernel and writes only its own share."""
    from celltap.incubator.cells import CellSet
    from celltap.incubator.dicap import dicap_owner_slots

    from celltap.pcap.batch import FrameBatch

    ns = mirror_ns
    traffic = str(tmp_path / "in.pcap")
    subprocess.run(
        [sys.executable, "-m", "celltap.cli", "loadgen", "pcap", "mixed", traffic, "--count", "60"],
        check=True,
    )
    sent = frames_of(traffic)
    members = {c: 1 for c in CELLS}
    mine = str(tmp_path / "mine.pcap")
    cfg = {
        "mode": "dicap",
        "capture": "afpacket:tap-in",
        "cells": [{"id": c, "output": f"iface:{c}"} for c in CELLS],
        "partition": "dicap",
        "dicap": {"cell": "c1", "output": f"pcap:{mine}"},
        "metrics_port": 9468,
    }
    inc = IncubatorProcess(ns, cfg, str(tmp_path))
    try:
        inc.wait_ready(1)
        time.sleep(0.3)  # the filter for the live membership is attached before the first batch
        replay(ns, traffic, "tap")
        cells = CellSet(members)
        want = [
            f
            for f, s in zip(sent, dicap_owner_slots(FrameBatch.from_frames(sent), cells), strict=True)
            if s == cells.slot_of["c1"]
        ]
        m = inc.wait_received(len(want))
    finally:
        rc = inc.stop()
    assert rc == 0, inc.read_log()
    assert 0 < len(want) < len(sent)
    assert frames_of(mine) == want
    received, accounted = conservation(m)
    assert received == len(want) == accounted
