"""Processes a test starts: the celltap command line, free ports, polling."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

import pytest

CELLTAP = [sys.executable, "-m", "celltap.cli"]


def free_port(kind: int) -> int:
    """A port the kernel says is free now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")
