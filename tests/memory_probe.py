"""Measuring memory in tests: what a call keeps (tracemalloc), and a child process's peak RSS.

Peak RSS is the kernel's VmHWM of the process, polled while it runs (its last value may be gone
once it is reaped; wait4's ru_maxrss is no good either: Linux folds the forking parent's size into
it at exec)."""

from __future__ import annotations

import gc
import re
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path


def kept_bytes(fn: Callable[[], object]) -> int:
    """Bytes still allocated after fn() returns, what it returns included (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return after - before


def vm_hwm(pid: int) -> int | None:
    """A process's peak RSS so far in bytes (None once it is gone)."""
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def peak_rss_until_exit(proc: subprocess.Popen, interval: float = 0.02) -> tuple[int, str]:
    """Poll `proc`'s peak RSS until it exits; (the highest seen in bytes, its whole stderr).

    `proc` must have been started with stderr=PIPE in text mode (it is read here, so the child
    never blocks on a full pipe)."""
    peak = [0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            hwm = vm_hwm(proc.pid)
            if hwm is None:
                return
            peak[0] = max(peak[0], hwm)
            time.sleep(interval)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.wait()
    stop.set()
    t.join()
    return peak[0], err
