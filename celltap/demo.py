"""`celltap demo`: a whole local cluster on loopback fed with generated traffic, then what each plane saw.

No root, no etcd: a file registry in the run directory, one incubator reading the generated capture
from a FIFO and sending VXLAN over loopback UDP to the cells, analyzers on the cells' UNIX sockets,
cells exporting IPFIX to a routing collector, the collector streaming records over gRPC to the
analysis nodes. Everything runs under /tmp/celltap-demo-XXXX/ (short, for UNIX socket paths).
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celltap.cli_types import SEED, bounded
from celltap.defaults import default_file
from celltap.launcher.children import CELLTAP, ChildFailed
from celltap.launcher.cluster import LocalCluster
from celltap.launcher.feed import Feeder
from celltap.launcher.finish import finish_run
from celltap.launcher.progress import ProgressBar
from celltap.launcher.spec import SpecError, load_spec
from celltap.launcher.summary import build_summary, render

log = logging.getLogger("celltap.demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `celltap demo`."""
    parser.add_argument(
        "--flows",
        type=bounded(int, 1, 10**8),
        default=1500,
        help="flows of loadgen's mixed scenario (default 1500)",
    )
    parser.add_argument("--seed", type=SEED, default=1, help="traffic generator seed (default 1)")
    parser.add_argument("--cells", type=bounded(int, 1, 64), default=None, help="cells (default 3)")
    parser.add_argument("--nodes", type=bounded(int, 1, 64), default=None, help="analysis nodes (default 2)")
    parser.add_argument("--config", help="cluster YAML instead of the embedded demo-cluster.yaml")
    parser.add_argument("--run-dir", help="run directory (default: a new /tmp/celltap-demo-XXXX)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every stage ran and the summary was printed."""
    try:
        spec = load_spec(args.config or default_file("demo-cluster.yaml"))
    except SpecError as exc:
        print(f"celltap demo: config error: {exc}", file=sys.stderr)
        return 2
    spec.capture = "feed"
    spec.replay_loops = 1
    if args.cells is not None:
        spec.cells = max(1, args.cells)
    if args.nodes is not None:
        spec.nodes = max(1, args.nodes)
    run = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="celltap-demo-", dir="/tmp"))
    run.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster: LocalCluster | None = None
    try:
        _say(f"celltap demo: run directory {run}")
        pcap = run / "traffic.pcap"
        _say(f"generating loadgen's mixed scenario ({args.flows} flows, seed {args.seed}) -> {pcap}")
        gen = subprocess.run(
            [
                *CELLTAP,
                "loadgen",
                "pcap",
                "mixed",
                str(pcap),
                "--count",
                str(args.flows),
                "--seed",
                str(args.seed),
            ],
            capture_output=True,
            text=True,
        )
        if gen.returncode != 0:
            print(f"celltap demo: loadgen failed: {gen.stderr.strip()[-800:]}", file=sys.stderr)
            return 1
        cluster = LocalCluster(spec, run, analyzers_exit_on_eof=True)
        cluster.start(on_stage=lambda what: _say(f"starting {what}"))
        inc = cluster.of_kind("incubator")[0]
        assert cluster.fifo is not None
        feeder = Feeder(pcap, cluster.fifo, loops=1, backlog=cluster.cell_backlog)
        bar = ProgressBar(feeder.info.frames, "feeding")
        feeder.start(inc.child.alive)
        last = None
        while not feeder.done.wait(0.2):
            cluster.check()
            try:
                last = cluster.scrape(inc)
            except OSError:
                pass
            got = int(last.total("celltap_incubator_received_frames_total")) if last else 0
            bar.update(feeder.frames_written, f"(incubator {got})")
        bar.finish(feeder.frames_written)
        if feeder.error is not None:
            raise ChildFailed(f"feeding the incubator failed: {feeder.error}; see {inc.child.log_path}")
        _say("draining: cells, analyzers, collector, nodes")
        fc = finish_run(cluster, feeder.frames_written, last)
        summary = build_summary(
            run, cluster.analyzer_outputs(), fc, feeder.frames_written, time.monotonic() - started
        )
        (run / "summary.json").write_text(summary.to_json())
        print(summary.to_json() if args.json else render(summary), flush=True)
        failed = {n: rc for n, rc in fc.statuses.items() if rc not in (0, None, -15)}
        if failed:
            _say(f"celltap demo: some processes exited with an error: {failed} (logs in {run}/logs)")
            return 1
        return 0
    except Interrupted as exc:
        _say(f"\ncelltap demo: {exc}: stopping every process")
        return 130
    except (ChildFailed, TimeoutError) as exc:
        _say(f"celltap demo: {exc}")
        return 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if cluster is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            cluster.stop(grace=5.0)
            signal.signal(signal.SIGINT, old[signal.SIGINT])
            _say(f"logs: {cluster.log_dir}   analyzer JSON outputs: {cluster.out_dir}")
