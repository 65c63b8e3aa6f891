"""What every benchmark shares: timing, one-core pinning, external baselines, the machine."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    """One measured figure, optionally beside a baseline measured in the same run."""

    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline_value: float = 0.0
    target: float = 0.0  # the figure an issue asks for (0 = none)
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """value / baseline (0 when there is no baseline)."""
        return self.value / self.baseline_value if self.baseline_value else 0.0


def pin_to_one_core() -> int:
    """Pin this process to one CPU (the last one) and return it: 'one core' means one core."""
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """Run `fn` (returning seconds) several times and keep the fastest: least disturbed by noise."""
    return min(fn() for _ in range(runs))


def time_command(argv: list[str], cpu: int | None = None, runs: int = 3) -> float:
    """Best wall time of an external command, pinned to `cpu` when given."""
    tool = shutil.which(argv[0])
    if tool is None:
        raise FileNotFoundError(argv[0])

    def once() -> float:
        t0 = time.perf_counter()
        subprocess.run(
            [tool, *argv[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
        )
        return time.perf_counter() - t0

    return best_of(runs, once)


def machine() -> dict[str, str]:
    """Describe the machine the figures come from."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import numpy

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_gib:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
    }
