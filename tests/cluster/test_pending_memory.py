"""The router's pending records are bounded in real memory too (issue #15 item 3), not only in count.

A record's real size follows its template: 2,000,000 pending records (max_pending_records) of a
100-field template are gigabytes. With a node registered but unreachable (real gRPC, file://
registry), an exporter's wide records fill the router until `max_pending_bytes`; what Python really
keeps (tracemalloc) stays within it, the excess is refused at ingress and counted, and the router's
own count of that memory is never below what tracemalloc sees. Records are synthetic (numpy), their
expected sizes come from their dtype. And a real routing collector process flooded with such records
over UDP (crafted IPFIX) keeps its peak RSS growth under the cap plus its receive buffers (measured:
+26 MiB at a 16 MiB cap, +104 MiB at 1 GiB).
"""

from __future__ import annotations

import gc
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from celltap.collector.cluster import RouterConfig, pending_memory
from celltap.collector.cluster_collector import router_config, start_router
from celltap.collector.node import AnalysisNode
from celltap.collector.node_config import config_from_dict

from celltap.ipfix import template_from_names
from celltap.ipfix.iana import default_registry
from celltap.ipfix.records import RecordBatch
from tests.cluster.procs import free_port
from tests.ipfix.oracles import CELLTAP, REPO

pytestmark = pytest.mark.timeout(150)

MiB = 1 << 20
GiB = 1 << 30


def wide_template(fields: int):
    """A template of `fields` distinct unsigned64 IANA elements (8 bytes each in a decoded row)."""
    names = sorted(
        ie.name
        for ie in default_registry()._by_name.values()
        if ie.enterprise == 0 and ie.data_type == "unsigned64"
    )[:fields]
    assert len(names) == fields
    return template_from_names(400, [(n, None) for n in names])


@pytest.fixture
def unreachable_node(tmp_path):
    """A registry holding one analysis node whose gRPC server is already gone."""
    registry = f"file://{tmp_path}/reg"
    cfg = config_from_dict({
        "id": "away", "listen": f"127.0.0.1:{free_port()}", "http": None, "registry": registry,
        "cluster": "mem", "apps": {"volume": {"kind": "volume", "key": "src"}},
    })  # fmt: skip
    node = AnalysisNode(cfg)
    node.start()
    assert node.grpc_server is not None and node.grpc_server.stop(grace=None).wait(30)
    yield registry
    node.stop()


def test_wide_records_are_capped_by_max_pending_bytes(unreachable_node):
    cap = 16 * MiB
    t = wide_template(100)
    assert t.out_dtype.itemsize == 800
    router, close = start_router(
        unreachable_node,
        "mem",
        router_config(
            "c-mem",
            {"batch_records": 1000, "max_pending_bytes": cap, "max_pending_records": 10**9,
             "close_timeout": 0.5},
            None,
        ),
    )
    try:
        batches = []
        for i in range(30):  # 30,000 rows of 800 bytes: ~48 MB pending uncapped
            r = np.zeros(1000, dtype=t.out_dtype)
            r[t.fields[0].name] = np.arange(i * 1000, (i + 1) * 1000)
            batches.append(RecordBatch("192.0.2.7", 1, t.template_id, t, r))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            accepted = sum(router.on_batch(b) for b in batches)
            router.flush()
            del batches
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        st = router.stats()
        assert st["pending_records"] == accepted * 1000 and 0 < accepted < 30
        assert st["dropped_buffer_full"] == (30 - accepted) * 1000
        assert st["pending_bytes"] <= cap
        # the count is real memory: never below what Python keeps for the pending records, not far above
        # ... plus what the senders hold while a message is on its way: a packed copy of its records
        # (at most `window` messages per node, here batches of 1,000 rows of 800 bytes)
        in_flight = router.config.window * 1000 * 800
        assert kept <= st["pending_bytes"] + in_flight + (256 << 10), (kept, st["pending_bytes"])
        assert st["pending_bytes"] <= 1.5 * kept, (kept, st["pending_bytes"])
    finally:
        close()


def test_the_default_record_cap_alone_did_not_fit_the_collector_pod():
    """Why the byte cap: at the default max_pending_records, rows of that template would need far more
    than the chart's collector memory limit (2 GiB); max_pending_bytes keeps them to 128 MiB."""
    t = wide_template(100)
    rows = np.zeros(1000, dtype=t.out_dtype)
    per_record = pending_memory(rows, 1) / 1000
    cfg = RouterConfig(collector_id="x")
    assert cfg.max_pending_records * per_record > 2 * GiB
    assert cfg.max_pending_bytes <= 128 * MiB


@pytest.mark.parametrize(
    "values",
    [
        [b"x" * (i % 300) for i in range(500)],  # octetArray values
        ["http", "dns", "", "ü" * 40, "a" * 50 + "\U0001f600"] * 100,  # strings: latin-1, UCS-2, UCS-4
    ],
)
def test_variable_length_values_are_counted_at_least_at_their_size(values):
    """Objects of variable-length fields count by their real size (sys.getsizeof, CPython's own
    figure), never less; the row, its wire copy and hashes on top as for fixed fields."""
    field = "mplsLabelStackSection" if isinstance(values[0], bytes) else "applicationName"
    t = template_from_names(401, [("sourceIPv4Address", None), (field, None)])
    rows = np.zeros(len(values), dtype=t.out_dtype)
    col = np.empty(len(values), dtype=object)
    col[:] = values
    rows[field] = col
    objects = sum(sys.getsizeof(v) for v in values)
    exact = 2 * rows.nbytes + len(values) * (8 + 48) + objects
    got = pending_memory(rows, 1)
    assert exact <= got <= exact + 3 * objects, (got, exact)


def _collector_peak_growth(
    tmp_path: Path, registry: str, cap: int, datagrams: list[bytes], tag: str
) -> tuple[int, dict]:
    """(peak RSS growth over the idle collector, its final summary) for one routing collector process."""
    port = free_port()
    conf = tmp_path / f"{tag}.yaml"
    conf.write_text(yaml.safe_dump({
        "listen": [f"udp://127.0.0.1:{port}"], "workers": 1, "metrics_port": 0, "registry": registry,
        "cluster": "mem", "collector_id": tag, "receive_buffer": 8 << 20,
        "routing": {"batch_records": 1000, "max_pending_bytes": cap, "max_pending_records": 10**9,
                    "close_timeout": 0.5},  # the node never answers: no use waiting at the stop
    }))  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*CELLTAP, "collector", "--config", str(conf)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))  # fmt: skip

    def status(key: str) -> int:
        text = Path(f"/proc/{proc.pid}/status").read_text()
        return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024

    try:
        assert "listening" in proc.stderr.readline()
        time.sleep(2.0)  # the router learns the (unreachable) node from the registry
        base = status("VmRSS")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", port))
                time.sleep(0.002)  # this test is about memory, not receive-buffer drops
        time.sleep(2.0)
        peak = status("VmHWM")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    summary = json.loads([x for x in err.splitlines() if x.startswith("{")][-1])
    return peak - base, summary


def test_wide_records_flood_keeps_a_routing_collector_under_max_pending_bytes(tmp_path, unreachable_node):
    """A real collector routing to a registered but unreachable node gets 1,000 IPFIX messages of 100
    records of a 100-field template (crafted): at max_pending_bytes = 16 MiB its peak RSS grows by less
    than the cap plus the receive path's buffers; at 1 GiB the same flood grows it past that."""
    n_fields, per_msg = 100, 100
    tset = _template_set(500, n_fields)
    data_rec = b"".join(struct.pack("!I", (7 * k) & 0xFFFFFFFF) for k in range(n_fields))
    datagrams = [_ipfix(0, tset)]
    for i in range(1, 1001):
        body = struct.pack("!HH", 500, 4 + per_msg * len(data_rec)) + data_rec * per_msg
        datagrams.append(_ipfix(i, body))
    cap = 16 << 20
    slack = 24 << 20  # recvmmsg slots, decoded batches, allocator slack (as test_state_limits)
    grown, summary = _collector_peak_growth(tmp_path, unreachable_node, cap, datagrams, "capped")
    assert summary["records"] == 100_000, summary
    assert grown < cap + slack, f"peak RSS grew {grown >> 20} MiB"
    grown_all, _ = _collector_peak_growth(tmp_path, unreachable_node, 1 << 30, datagrams, "uncapped")
    assert grown_all > cap + slack, f"the flood is too small to prove the bound: {grown_all >> 20} MiB"


def _ipfix(seq: int, body: bytes, odid: int = 1) -> bytes:
    return struct.pack("!HHIII", 10, 16 + len(body), 1_700_000_000, seq, odid) + body


def _template_set(tid: int, n_fields: int) -> bytes:
    """A template set of `n_fields` distinct 4-byte IANA elements (ids 1..400 wrap)."""
    specs = [struct.pack("!HH", i % 400 + 1, 4) for i in range(n_fields)]
    rec = struct.pack("!HH", tid, n_fields) + b"".join(specs)
    return struct.pack("!HH", 2, 4 + len(rec)) + rec
