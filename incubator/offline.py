"""Offline split: one capture in, `DIR/cell-<i>.pcap` out, every flow whole in one file.

The ring is fixed for the whole run, so flows need no pinning: each frame goes straight to the
ring owner of its flow hash (fragments through the fragment tracker, as live), or, with the dicap
partition, of its DiCAP bucket (what DiCAP cells' kernel filters would keep).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from celltap.incubator.dicap import DEFAULT_BUCKETS_LOG2
from celltap.incubator.engine import CellSpec, Engine
from celltap.incubator.fragments import FragmentTracker
from celltap.incubator.metrics import IncubatorMetrics
from celltap.incubator.outputs import PcapOutput
from celltap.incubator.separator import Separator
from prometheus_client import CollectorRegistry

from celltap.pcap import open_capture


@dataclass
class SplitResult:
    """Totals of one offline split."""

    received: int
    forwarded: int
    dropped: dict[str, int]
    per_cell: dict[str, int]
    paths: list[str]


def cell_ids(n: int) -> list[str]:
    """Cell ids of an offline split: cell-0 .. cell-(n-1)."""
    return [f"cell-{i}" for i in range(n)]


def split_capture(
    source: str,
    cells: int,
    write_dir: str,
    seed: int = 0,
    non_ip: str = "cell0",
    registry: CollectorRegistry | None = None,
    partition: str = "xxh64",
    buckets_log2: int = DEFAULT_BUCKETS_LOG2,
    use_ports: bool = True,
) -> SplitResult:
    """Split `source` (path or '-') into `cells` pcap files under `write_dir`."""
    if cells < 1:
        raise ValueError("--cells must be at least 1")
    os.makedirs(write_dir, exist_ok=True)
    reader = open_capture(source)
    linktype = reader.linktype if reader.linktype >= 0 else 1  # pcapng: known from the first batch
    nanosecond = bool(getattr(reader, "nanosecond", False))
    paths = {cid: os.path.join(write_dir, f"{cid}.pcap") for cid in cell_ids(cells)}
    by_spec = {f"pcap:{p}": p for p in paths.values()}
    sep = Separator(
        seed=seed,
        pin_flows=False,
        nonip_policy=non_ip,
        fragments=FragmentTracker(timeout_s=3600),
        partition=partition,
        buckets_log2=buckets_log2,
        use_ports=use_ports,
    )
    metrics = IncubatorMetrics(registry if registry is not None else CollectorRegistry())
    engine = Engine(sep, metrics, lambda spec: PcapOutput(by_spec[spec], None, nanosecond), linktype)
    engine.set_cells({cid: CellSpec(cid, f"pcap:{p}") for cid, p in paths.items()})
    with reader:
        for batch in reader:
            engine.process(batch, "pcap")
    engine.finish()
    per_cell = {cid: engine.out_frames.get(cid, 0) for cid in paths}
    return SplitResult(
        engine.received, engine.forwarded, dict(engine.dropped), per_cell, list(paths.values())
    )
