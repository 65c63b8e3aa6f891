"""The collector's worst case fits its pod (collector/memory_budget.py; issue #15 item 3).

The real collector, as the Helm chart runs it by default (two UDP ports, two worker processes each,
routing through a registry), is started and its processes' memory measured: the main process's
peak RSS and each forked worker's proportional set size (the pages it does not share) must stay
within the figures the worst case plans for. Then every values set the chart ships is rendered by
helm and its collector's worst case, from the rendered collector.yaml, must fit the container's
memory limit less the headroom.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import yaml
from celltap.collector.cluster_collector import router_config
from celltap.collector.config import config_from_dict
from celltap.collector.memory_budget import HEADROOM, PROCESS, WORKER_PROCESS, fits, worst_case

from tests.deploy.chart import VALUE_SETS, documents, find, helm_template
from tests.ipfix.oracles import CELLTAP, REPO, free_port

MiB = 1 << 20
_QUANTITY = {"Mi": 1 << 20, "Gi": 1 << 30}


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise KeyError("Pss")


def test_collector_processes_stay_within_the_planned_process_memory(tmp_path):
    ports = [free_port(), free_port()]
    conf = tmp_path / "c.yaml"
    chart_like = {
        "listen": [f"udp://127.0.0.1:{p}" for p in ports], "workers": 2, "metrics_port": 0,
        "registry": f"file://{tmp_path}/reg", "cluster": "budget", "collector_id": "c0",
        "state_dir": str(tmp_path / "state"), "routing": {"journal": str(tmp_path / "journal")},
    }  # fmt: skip
    conf.write_text(yaml.safe_dump(chart_like))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*CELLTAP, "collector", "--config", str(conf)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))  # fmt: skip
    try:
        assert "listening" in proc.stderr.readline()
        time.sleep(2.0)
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as fh:
            workers = [int(x) for x in fh.read().split()]
        main_peak = _status(proc.pid, "VmHWM")
        worker_pss = [_pss(w) for w in workers]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert len(workers) == 4  # workers x UDP ports, each a process
    assert main_peak <= PROCESS, f"main process {main_peak / MiB:.0f} MiB"
    assert max(worker_pss) <= WORKER_PROCESS, f"workers' own pages {[round(p / MiB) for p in worker_pss]} MiB"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_chart_collector_limit_holds_its_worst_case(name):
    docs = documents(helm_template(VALUE_SETS[name]))
    data = yaml.safe_load(find(docs, "ConfigMap", "-config")["data"]["collector.yaml"])
    routing = data.pop("routing", None)
    data.pop("tls", None)
    data.pop("registry_tls", None)
    cfg = config_from_dict(data)
    router = router_config("c", routing, None) if routing else None
    dep = find(docs, "Deployment", "-collector")
    container = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "collector")
    limit = str(container["resources"]["limits"]["memory"])
    limit_bytes = int(limit[:-2]) * _QUANTITY[limit[-2:]]
    parts = worst_case(cfg, router)
    figures = ", ".join(f"{k} {v / MiB:.0f}" for k, v in parts.items())
    assert fits(parts, limit_bytes), (
        f"{name}: worst case {sum(parts.values()) / MiB:.0f} MiB ({figures}) > {limit} less {HEADROOM:.0%}"
    )
