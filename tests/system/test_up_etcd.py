"""`celltap up` on an etcd registry: every member registers, `celltap status` sees them and the
nodes' counters, the replayed capture reaches the analysis nodes, and SIGTERM leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.system.cluster_proc import CELLTAP, ROOT, UpCluster, pids_alive


@pytest.mark.timeout(150)
def test_up_with_etcd_and_status(etcd_server, tmp_path: Path) -> None:
    pcap = tmp_path / "mixed.pcap"
    subprocess.run([*CELLTAP, "loadgen", "pcap", "mixed", str(pcap), "--count", "150", "--seed", "4"],
                   check=True, cwd=ROOT, timeout=60)  # fmt: skip
    name = f"up{int(time.time() * 1000) % 10**8}"  # the session's etcd is shared: a cluster name of our own
    config = {
        "cluster": name, "registry": etcd_server.url, "lease_ttl": 3, "capture": f"pcap:{pcap}",
        "replay": {"loops": 1},
        "cells": {"count": 2, "analyzers": [{"analyzer": "http", "socket": "tcp/http"}]},
        "collector": {"count": 1, "routing": {"flush_interval": 0.2}},
        "nodes": {"count": 2},
    }  # fmt: skip
    run = Path(tempfile.mkdtemp(prefix="ctu-", dir="/tmp"))
    cluster = UpCluster(config, run)
    try:
        cluster.wait_running()
        deadline = time.monotonic() + 60
        status: dict = {}
        while time.monotonic() < deadline:
            argv = [
                *CELLTAP,
                "status",
                "--registry",
                etcd_server.url,
                "--cluster",
                name,
                "--json",
                "--interval",
                "0",
            ]
            p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
            if p.returncode == 0:
                status = json.loads(p.stdout)
                collector = status.get("components", {}).get("collectors/collector-0", {})
                # Collectors report their counters once a second: wait for the first report too.
                if (
                    "replay finished" in cluster.tail()
                    and _records(status) > 0
                    and collector.get("input_total")
                ):
                    break
            time.sleep(1)
        members = status.get("members", status)
        assert sorted(members["cells"]) == ["0", "1"], status
        assert sorted(members["nodes"]) == ["node-0", "node-1"], status
        assert sorted(members["collectors"]) == ["collector-0"], status
        assert "replay finished after 1 loop(s)" in cluster.tail(), cluster.tail()
        assert _records(status) > 0, status
        # Every member is held by a live lease.
        for kind in ("cells", "nodes", "collectors"):
            for mid, value in members[kind].items():
                assert (value["lease_seconds_left"] or 0) > 0, (kind, mid, value)
        # Per component, from its metrics endpoint: what it took in, and its drop counters.
        comps = status["components"]
        for member in ("cells/0", "cells/1", "nodes/node-0", "nodes/node-1", "collectors/collector-0"):
            assert "error" not in comps[member], comps[member]
            assert isinstance(comps[member]["drops"], dict)
        assert sum(comps[f"cells/{c}"]["input_total"] for c in "01") > 0
        assert comps["collectors/collector-0"]["input_total"] > 0
        pids = [c["pid"] for c in cluster.endpoints()["components"]]
    finally:
        rc = cluster.stop()
    assert rc == 0, cluster.tail()
    time.sleep(0.5)
    assert not pids_alive(pids)
    shutil.rmtree(run)


def _records(status: dict) -> int:
    """Records the nodes applied as primaries, as `celltap status --json` reports them."""
    return sum(
        int(n.get("counts", {}).get("records_primary", 0)) for n in (status.get("nodes") or {}).values()
    )
