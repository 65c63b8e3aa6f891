"""`celltap up --config cluster.yaml`: the demo's cluster, long-running, on one host, until Ctrl-C / SIGTERM.

The registry is `etcd://` or `file://`; traffic comes from a live interface (`afpacket:IFACE`,
needs CAP_NET_RAW) or from a capture replayed through the launcher (`pcap:FILE`, `replay.loops`
times, 0 = forever). The run directory holds every config, log and analyzer output, plus
`endpoints.json` (every process, pid, metrics URL) and `prometheus-targets.json` (file_sd targets).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celltap.launcher.children import ChildFailed
from celltap.launcher.cluster import LocalCluster
from celltap.launcher.feed import Feeder
from celltap.launcher.spec import SpecError, load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `celltap up`."""
    parser.add_argument(
        "--config", required=True, help="cluster YAML (see celltap/defaults/demo-cluster.yaml)"
    )
    parser.add_argument(
        "--run-dir",
        help="where configs, logs and outputs go (default: the config's run_dir, "
        "else a new /tmp/celltap-up-XXXX)",
    )


class Stop(Exception):
    """SIGINT or SIGTERM arrived."""


def _stop(signum: int, _frame: Any) -> None:
    raise Stop(signal.Signals(signum).name)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Start the cluster and supervise it until told to stop; 1 if it cannot start."""
    try:
        spec = load_spec(args.config)
    except SpecError as exc:
        print(f"celltap up: config error: {exc}", file=sys.stderr)
        return 2
    if spec.capture == "feed":
        print("celltap up: config error: capture: expected pcap:FILE or afpacket:IFACE", file=sys.stderr)
        return 2
    run_dir = args.run_dir or spec.run_dir
    run = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="celltap-up-", dir="/tmp"))
    run.mkdir(parents=True, exist_ok=True)
    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = LocalCluster(spec, run)
    feeder: Feeder | None = None
    try:
        cluster.start(on_stage=lambda what: _say(f"starting {what}"))
        inc = cluster.of_kind("incubator")[0]
        if spec.fed:
            assert cluster.fifo is not None
            feeder = Feeder(
                Path(spec.capture[len("pcap:") :]),
                cluster.fifo,
                loops=spec.replay_loops,
                pps=spec.replay_pps,
                backlog=cluster.cell_backlog,
            )
            feeder.start(inc.child.alive)
        _say(f"celltap up: cluster {spec.cluster!r} running; registry {cluster.registry_url}")
        _say(f"  processes, pids, metrics: {run / 'endpoints.json'}")
        _say(f"  Prometheus file_sd targets: {run / 'prometheus-targets.json'}")
        _say(f"  analysis nodes (HTTP queries): {', '.join(cluster.node_http())}")
        _say(f"  status: celltap status --registry {cluster.registry_url} --cluster {spec.cluster}")
        _say(f"  logs: {cluster.log_dir}   analyzer outputs: {cluster.out_dir}")
        print(run, flush=True)
        announced = False
        while True:
            if feeder is not None and feeder.done.is_set() and not announced:
                announced = True
                # The incubator ends with its input: expected, the rest keeps running.
                inc.child.expected_exit = True
                note = f" ({feeder.error})" if feeder.error else ""
                _say(
                    f"celltap up: replay finished after {feeder.loops_done} loop(s), "
                    f"{feeder.frames_written} frames{note}"
                )
            for c in cluster.sup.children:
                rc = c.returncode()
                if rc is not None and not c.expected_exit:
                    # A long-running cluster degrades instead of stopping: the others keep working
                    # (the registry lease of the dead member expires and the rest re-balance).
                    c.expected_exit = True
                    _say(
                        f"celltap up: {c.name} exited with status {rc}; the rest keeps running "
                        f"(log: {c.log_path})"
                    )
            time.sleep(0.5)
    except Stop as exc:
        _say(f"celltap up: {exc}: stopping")
        return 0
    except (ChildFailed, TimeoutError) as exc:  # only while starting
        _say(f"celltap up: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if feeder is not None:
            feeder.stop.set()
        cluster.stop(grace=10.0)
        for s, h in old.items():
            signal.signal(s, h)
