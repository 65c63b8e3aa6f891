"""The router's pending records are bounded in real memory too (issue #15 item 3), not only in count.

A record's real size follows its template: 2,000,000 pending records (max_pending_records) of a
100-field template are gigabytes. With a node registered but unreachable (real gRPC, file://
registry), an exporter's wide records fill the router until `max_pending_bytes`; what Python really
keeps (tracemalloc) stays within it, the excess is refused at ingress and counted, and the router's
own count of that memory is never below what tracemalloc sees. Records are synthetic (numpy), their
expected sizes come from their dtype.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc

import numpy as np
import pytest
from celltap.collector.cluster import RouterConfig, pending_memory
from celltap.collector.cluster_collector import router_config, start_router
from celltap.collector.node import AnalysisNode
from celltap.collector.node_config import config_from_dict

from celltap.ipfix import template_from_names
from celltap.ipfix.iana import default_registry
from celltap.ipfix.records import RecordBatch
from tests.cluster.procs import free_port

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
            "c-mem", {"batch_records": 1000, "max_pending_bytes": cap, "max_pending_records": 10**9}, None
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
        assert kept <= st["pending_bytes"] + (256 << 10), (kept, st["pending_bytes"])
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
