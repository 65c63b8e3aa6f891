"""Processes a test starts: the celltap command line, free ports, polling."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

import pytest

from celltap.launcher.ports import free_port

CELLTAP = [sys.executable, "-m", "celltap.cli"]




def free_port_block(n: int) -> int:
    """The first of n consecutive TCP ports that are all free now."""
    for _ in range(50):
        base = free_port(socket.SOCK_STREAM)
        if base + n > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no block of {n} free ports found")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until true, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")
