"""Non-IP frames (ARP, LLDP ...) follow the configured policy: bridge only, cell 0, or all cells."""

from __future__ import annotations

import pytest
from celltap.incubator.engine import CellSpec, Engine
from celltap.incubator.metrics import IncubatorMetrics
from celltap.incubator.separator import Separator
from prometheus_client import CollectorRegistry

from celltap.pcap import read_all
from celltap.pcap.batch import FrameBatch

ARP = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes.fromhex("0001080006040001") + bytes(20)
LLDP = bytes.fromhex("0180c200000e") + b"\x02" * 6 + b"\x88\xcc" + bytes(30)


@pytest.mark.parametrize(
    ("policy", "expect"),
    [
        ("bridge", {"a": 0, "b": 0, "c": 0}),
        ("cell0", {"a": 2, "b": 0, "c": 0}),
        ("all", {"a": 2, "b": 2, "c": 2}),
    ],
)
def test_policy(tmp_path, policy, expect):
    e = Engine(Separator(nonip_policy=policy), IncubatorMetrics(CollectorRegistry()))
    e.set_cells({c: CellSpec(c, f"pcap:{tmp_path}/{c}.pcap") for c in ("c", "a", "b")})
    e.process(FrameBatch.from_frames([ARP, LLDP], [1, 2]))
    e.finish()
    got = {c: sum(len(b) for b in read_all(f"{tmp_path}/{c}.pcap")) for c in ("a", "b", "c")}
    assert got == expect
    received, accounted = e.conservation()
    assert received == accounted == 2
    if policy == "bridge":
        assert e.dropped == {"non_ip_policy": 2}
    else:
        assert e.forwarded == 2
