"""Cells joining and leaving mid-replay: live TCP flows stay pinned; a leaving cell's flows re-home."""

from __future__ import annotations

import collections
import os
import random

import numpy as np
import pytest
from celltap.incubator.cells import WEIGHT_SCALE
from celltap.incubator.engine import CellSpec, Engine
from celltap.incubator.metrics import IncubatorMetrics
from celltap.incubator.separator import Separator
from celltap.loadgen.packets import ACK, FIN, PSH, SYN, ethernet, ipv4, tcp
from prometheus_client import CollectorRegistry

from celltap.pcap import read_all
from celltap.pcap.batch import FrameBatch
from celltap.ring import Ring
from tests.conftest import require_tool
from tests.fixtures_etcd import etcd_server  # noqa: F401  (fixture)
from tests.incubator.oracle import expected_owner, tshark_packets

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


class Conn:
    """One TCP connection whose segments we emit phase by phase."""

    def __init__(self, i: int) -> None:
        self.c = bytes([10, 1, i >> 8, i & 255])
        self.s = bytes([10, 2, 0, 1 + i % 7])
        self.sport, self.dport = 20000 + i, 80
        self.seq, self.ack = 1000, 5000

    def seg(self, from_client: bool, flags: int, data: bytes = b"") -> bytes:
        if from_client:
            t = tcp(self.c, self.s, self.sport, self.dport, self.seq, self.ack, flags, data)
            self.seq += len(data) + (1 if flags & (SYN | FIN) else 0)
            return ethernet(MAC_B, MAC_A, 0x0800, ipv4(self.c, self.s, 6, t))
        t = tcp(self.s, self.c, self.dport, self.sport, self.ack, self.seq, flags, data)
        self.ack += len(data) + (1 if flags & (SYN | FIN) else 0)
        return ethernet(MAC_A, MAC_B, 0x0800, ipv4(self.s, self.c, 6, t))

    def opening(self) -> list[bytes]:
        return [self.seg(True, SYN), self.seg(False, SYN | ACK), self.seg(True, ACK)]

    def data(self) -> list[bytes]:
        return [
            self.seg(True, PSH | ACK, b"GET / HTTP/1.1\r\n\r\n"),
            self.seg(False, PSH | ACK, b"HTTP/1.1 200 OK\r\n"),
        ]

    def closing(self) -> list[bytes]:
        return [self.seg(True, FIN | ACK), self.seg(False, FIN | ACK), self.seg(True, ACK)]


def owner(ring: Ring, c: Conn) -> str:
    """Where the oracle says connection c belongs."""
    return expected_owner(ring, 4, 6, ".".join(map(str, c.c)), c.sport, ".".join(map(str, c.s)), c.dport)


def batch_of(frames: list[bytes], t0: int) -> FrameBatch:
    return FrameBatch.from_frames(frames, [t0 + i * 1000 for i in range(len(frames))])


def make_engine(tmp_path, cells: list[str]) -> tuple[Engine, dict[str, CellSpec]]:
    specs = {c: CellSpec(c, f"pcap:{tmp_path}/{c}.pcap") for c in cells}
    e = Engine(Separator(), IncubatorMetrics(CollectorRegistry()))
    e.set_cells(specs)
    return e, specs


def cell_of_frames(tmp_path, cells: list[str]) -> dict[bytes, str]:
    where = {}
    for c in cells:
        path = f"{tmp_path}/{c}.pcap"
        if os.path.exists(path):
            for b in read_all(path):
                for i in range(len(b)):
                    where[b.frame(i)] = c
    return where


def test_join_moves_no_live_flow_and_new_flows_follow_the_ring(tmp_path):
    rng = random.Random(5)
    old = [Conn(i) for i in range(1500)]
    new = [Conn(2000 + i) for i in range(1500)]
    e, specs = make_engine(tmp_path, ["c0", "c1", "c2"])
    phase1 = [f for c in old for f in c.opening() + c.data()]
    e.process(batch_of(phase1, 10**18))
    specs["c3"] = CellSpec("c3", f"pcap:{tmp_path}/c3.pcap")
    e.set_cells(specs)  # a cell joins in the middle of the replay
    later_old = [(c, f) for c in old for f in c.data() + c.closing()]
    fresh = [(c, f) for c in new for f in c.opening() + c.data()]
    mixed = later_old + fresh
    rng.shuffle(mixed)
    e.process(batch_of([f for _c, f in mixed], 10**18 + 10**9))
    e.finish()
    where = cell_of_frames(tmp_path, ["c0", "c1", "c2", "c3"])
    assert len(where) == len(phase1) + len(mixed)
    ring3 = Ring({c: WEIGHT_SCALE for c in ("c0", "c1", "c2")})
    ring4 = Ring({c: WEIGHT_SCALE for c in ("c0", "c1", "c2", "c3")})
    moved_by_ring = 0
    # Every frame of an old connection sits on the cell its first frames went to (ring of 3).
    for c, f in later_old:
        want = owner(ring3, c)
        assert where[f] == want
        if owner(ring4, c) != want:
            moved_by_ring += 1
    assert moved_by_ring > 100  # without pinning these would have moved to c3
    # New connections follow the 4-cell ring, so c3 takes a share of them only.
    for c, f in fresh:
        assert where[f] == owner(ring4, c)
    assert 0 < sum(1 for _c, f in fresh if where[f] == "c3") < len(fresh) / 2
    assert not any(where[f] == "c3" for _c, f in later_old)
    assert e.rehomed == 0
    assert e.conservation()[0] == e.conservation()[1]


def test_leave_rehomes_flows_and_counts_them(tmp_path):
    conns = [Conn(i) for i in range(2000)]
    e, specs = make_engine(tmp_path, ["c0", "c1", "c2", "c3"])
    e.process(batch_of([f for c in conns for f in c.opening()], 10**18))
    pinned_c2 = int(e.sep.table.per_cell(len(e.sep.cells.ids))[e.sep.cells.slot_of["c2"]])
    assert pinned_c2 > 300
    del specs["c2"]
    e.set_cells(specs)
    assert e.rehomed == pinned_c2
    value = e.metrics.registry.get_sample_value("celltap_incubator_rehomed_flows_total")
    assert value == pinned_c2
    data = [(c, f) for c in conns for f in c.data()]
    e.process(batch_of([f for _c, f in data], 10**18 + 10**9))
    e.finish()
    ring3 = Ring({c: WEIGHT_SCALE for c in ("c0", "c1", "c3")})
    where = cell_of_frames(tmp_path, ["c0", "c1", "c2", "c3"])
    for c, f in data:
        assert where[f] == owner(ring3, c)


@pytest.fixture(params=["file", "etcd"])
def registry_url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/reg"
    return request.getfixturevalue("etcd_server").url


def test_registry_membership_drives_the_engine(tmp_path, registry_url):
    """Cells put in the registry (with leases) become outputs; an expired lease re-homes its flows."""
    import time
    import uuid

    from celltap.incubator.cellsource import RegistryCells

    from celltap.registry import Membership, open_registry

    url = registry_url
    cluster = f"inc{uuid.uuid4().hex[:8]}"
    src = RegistryCells(url, cluster, ttl=1.0)
    reg = open_registry(url)
    cells = Membership(reg, cluster, ttl=1.0, retry_initial=0.05)
    for c in ("a", "b"):
        cells.register("cells", c, {"input": f"pcap:{tmp_path}/{c}.pcap", "weight": 1})
    deadline = time.time() + 10
    while set(src.current()) != {"a", "b"} and time.time() < deadline:
        time.sleep(0.05)
    assert set(src.current()) == {"a", "b"}
    e = Engine(Separator(), IncubatorMetrics(CollectorRegistry()))
    e.set_cells(src.current())
    conns = [Conn(i) for i in range(400)]
    e.process(batch_of([f for c in conns for f in c.opening()], 10**18))
    on_b = int(e.sep.table.per_cell(2)[e.sep.cells.slot_of["b"]])
    # Cell b stops renewing its lease: it vanishes from the registry by expiry, not by a delete.
    cells.close(withdraw=False)
    cells2 = Membership(reg, cluster, ttl=1.0)
    cells2.register("cells", "a", {"input": f"pcap:{tmp_path}/a.pcap", "weight": 1})
    deadline = time.time() + 15
    while set(src.current()) != {"a"} and time.time() < deadline:
        time.sleep(0.1)
    assert set(src.current()) == {"a"}
    e.set_cells(src.current())
    assert e.rehomed == on_b > 0
    e.finish()
    cells2.close()
    src.close()


def test_imbalance_and_flow_gauges(tmp_path):
    e, _ = make_engine(tmp_path, ["c0", "c1"])
    conns = [Conn(i) for i in range(300)]
    e.process(batch_of([f for c in conns for f in c.opening()], 10**18))
    r = e.metrics.registry
    assert r.get_sample_value("celltap_incubator_flows") == 300
    ratio = r.get_sample_value("celltap_incubator_imbalance_ratio")
    counts = np.array(list(collections.Counter(e.out_frames).values()), float)
    assert abs(ratio - counts.max() / counts.mean()) < 1e-9
    e.finish()
    tshark = require_tool("tshark")
    assert len(tshark_packets(f"{tmp_path}/c0.pcap", tshark)) == e.out_frames["c0"]
