"""`celltap up` as a real process for system tests, with its endpoints.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CELLTAP = [sys.executable, "-m", "celltap.cli"]


class UpCluster:
    """A running `celltap up --config F --run-dir D`."""

    def __init__(self, config: dict[str, Any], run_dir: Path) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = run_dir / "cluster.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self.log = run_dir / "up.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*CELLTAP, "up", "--config", str(cfg), "--run-dir", str(run_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_running(self, timeout: float = 90) -> dict[str, Any]:
        """endpoints.json once the cluster has started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"celltap up exited {self.proc.returncode}: {self.tail()}")
            if "running; registry" in self.log.read_text(errors="replace"):
                return self.endpoints()
            time.sleep(0.2)
        raise AssertionError(f"celltap up did not start in {timeout} s: {self.tail()}")

    def endpoints(self) -> dict[str, Any]:
        """The launcher's endpoints.json."""
        return json.loads((self.run_dir / "endpoints.json").read_text())

    def component(self, name: str) -> dict[str, Any]:
        """One component's entry of endpoints.json."""
        return next(c for c in self.endpoints()["components"] if c["name"] == name)

    def tail(self, n: int = 3000) -> str:
        """End of celltap up's own log."""
        return self.log.read_text(errors="replace")[-n:]

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def pids_alive(pids: list[int]) -> list[int]:
    """Those of `pids` that still exist (zombies count as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive
