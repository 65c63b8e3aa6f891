"""The incubator's worst case fits its pod (incubator/memory_budget.py; issue #15 item 3).

The per-unit figures the sum plans with are measured here: the flow table's arrays as numpy allocates
them, what an eviction of a full table allocates on top (tracemalloc peak), a remembered first
fragment (tracemalloc), the process (peak RSS of a real `celltap incubator` offline split). Then every
values set the Helm chart ships is rendered and its incubator's worst case must fit the container's
memory limit less the headroom.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from celltap.incubator.config import parse_config
from celltap.incubator.flowtable import FlowTable
from celltap.incubator.fragments import FragmentTracker, datagram_key
from celltap.incubator.memory_budget import (
    FLOW_TABLE_TRANSIENT,
    KNOWN_ENTRY,
    PROCESS,
    SLOT_BYTES,
    fits,
    table_slots,
    worst_case,
)

from tests.deploy.chart import VALUE_SETS, documents, find, helm_template
from tests.memory_probe import peak_rss_until_exit

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
_QUANTITY = {"Mi": 1 << 20, "Gi": 1 << 30}


def _peak_of(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_flow_table_arrays_eviction_and_rehash_are_as_planned():
    """The arrays numpy allocates for max_flows, and the peak of what an eviction of a full table and
    a rehash allocate on top."""
    n = 200_000
    t = FlowTable(max_flows=n, idle_timeout_s=1e6)
    assert t.nbytes == table_slots(n) * SLOT_BYTES
    rng = np.random.default_rng(5)
    assert t.insert(rng.integers(2, 2**63, n, dtype=np.uint64), np.zeros(n, np.int32), 0) == 0
    assert len(t) == n
    evict = _peak_of(lambda: t.evict(n // 2))
    assert len(t) == n // 2
    rehash = _peak_of(t._rehash)
    assert len(t) == n // 2
    assert max(evict, rehash) <= FLOW_TABLE_TRANSIENT * t.nbytes, (evict, rehash, t.nbytes)


def test_a_remembered_first_fragment_costs_no_more_than_planned():
    tr = FragmentTracker(max_known=1 << 30)
    n = 50_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):  # IPv6 keys: the largest addresses
            key = datagram_key(6, os.urandom(16), os.urandom(16), 0, 100_000 + 7919 * i)
            tr.first_fragment(key, 3, 1_700_000_000_000_000_000 + i)
        gc.collect()
        per = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per <= KNOWN_ENTRY, per


def test_the_incubator_process_is_within_its_planned_size(tmp_path):
    """Peak RSS of an offline split of 20,000 flows (the process, its decode and a batch)."""
    src = tmp_path / "in.pcap"
    cli = [sys.executable, "-m", "celltap.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([*cli, "loadgen", "pcap", "small", str(src), "--count", "60000", "--flows", "20000"],
                   check=True, env=env)  # fmt: skip
    proc = subprocess.Popen(
        [*cli, "incubator", "--read", str(src), "--cells", "4", "--write-dir", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    peak, err = peak_rss_until_exit(proc)
    assert proc.returncode == 0, err[-2000:]
    assert 0 < peak <= PROCESS, f"peak RSS {peak / MiB:.0f} MiB"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_incubator_limit_holds_its_worst_case(name):
    docs = documents(helm_template(VALUE_SETS[name]))
    cfg = parse_config(yaml.safe_load(find(docs, "ConfigMap", "-config")["data"]["incubator.yaml"])).raw
    ds = find(docs, "DaemonSet", "-incubator")
    container = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "incubator")
    limit = str(container["resources"]["limits"]["memory"])
    parts = worst_case(cfg)
    figures = ", ".join(f"{k} {v / MiB:.0f}" for k, v in parts.items())
    assert fits(parts, int(limit[:-2]) * _QUANTITY[limit[-2:]]), f"{name}: {figures} > {limit}"
