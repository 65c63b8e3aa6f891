"""Balance mode: N analyzer processes on <prefix>0 .. <prefix>N-1, each restarted when it dies.

The children share nothing (SF-TAP's balancing interfaces need no coordination); the supervisor only
keeps them running so that a crashed analyzer costs its in-flight flows, never the cell.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

from prometheus_client import Counter

log = logging.getLogger(__name__)

RESTARTS = Counter("celltap_analyzer_restarts_total", "Analyzer child processes restarted", ["analyzer"])


def child_command(
    name: str,
    socket_path: str,
    fmt: str,
    out: str | None,
    metrics_port: int | None,
    exit_on_eof: bool,
    metrics_addr: str | None = None,
) -> list[str]:
    """Command line of one balanced child."""
    cmd = [sys.executable, "-m", "celltap.cli", "analyzer", name, "--socket", socket_path, "--format", fmt]
    if out:
        cmd += ["--out", out]
    if metrics_port is not None:
        cmd += ["--metrics-port", str(metrics_port)]
        if metrics_addr:
            cmd += ["--metrics-addr", metrics_addr]
    if exit_on_eof:
        cmd.append("--exit-on-eof")
    return cmd


def supervise(commands: list[list[str]], name: str, stop: threading.Event, exit_on_eof: bool = False) -> int:
    """Run the commands, restart any that exits abnormally, stop them all when `stop` is set."""
    RESTARTS.labels(name)  # at 0 from the start: dashboards show 0, not No data
    procs: list[subprocess.Popen | None] = [subprocess.Popen(c) for c in commands]
    started = [time.monotonic()] * len(commands)
    finished = [False] * len(commands)
    for i, p in enumerate(procs):
        log.info("%s: child %d pid %d: %s", name, i, p.pid if p else -1, " ".join(commands[i]))
    while not stop.wait(0.1):
        for i, proc in enumerate(procs):
            if proc is None or finished[i]:
                continue
            code = proc.poll()
            if code is None:
                continue
            if exit_on_eof and code == 0:
                finished[i] = True
                continue
            log.warning("%s: child %d (pid %d) exited with %s; restarting", name, i, proc.pid, code)
            RESTARTS.labels(name).inc()
            # A child that dies at once would otherwise spin; back off briefly.
            if time.monotonic() - started[i] < 1.0:
                time.sleep(0.5)
            procs[i] = subprocess.Popen(commands[i])
            started[i] = time.monotonic()
        if all(finished):
            return 0
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        if proc is None:
            continue
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0
