"""A private network namespace per test: default ports never collide with other tests, and `ss` inside
it shows only the sockets of the process under test."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require_root, require_tool

REPO = Path(__file__).resolve().parents[2]
WILDCARDS = ("0.0.0.0", "::", "*", "[::]", "::ffff:0.0.0.0")


@contextmanager
def private_netns() -> Iterator[str]:
    """A fresh namespace with only `lo` (up); deleted afterwards."""
    require_root()
    require_tool("ip")
    require_tool("ss")
    name = f"ctsec{os.getpid() % 10000}{random.randrange(1000)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def celltap_in(netns: str, *args: str, **kw) -> subprocess.Popen:
    """`celltap ARGS` in `netns`, importing this tree."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "celltap.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def listening(netns: str) -> list[tuple[str, str, int]]:
    """(tcp|udp, local address, port) of every listening TCP and bound unconnected UDP socket in `netns`."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-H", "-l", "-n", "-t", "-u"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = []
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 5:
            continue
        host, _, port = cols[4].rpartition(":")
        found.append((cols[0], host.strip("[]").split("%")[0], int(port)))
    return found


def wait_listening(netns: str, want: set[tuple[str, int]], proc: subprocess.Popen, timeout: float = 30.0):
    """Wait until every (proto, port) of `want` is bound in `netns`; return all listeners then."""
    deadline = time.monotonic() + timeout
    while True:
        now = listening(netns)
        if want <= {(p, port) for p, _, port in now}:
            return now
        if proc.poll() is not None:
            raise AssertionError(
                f"exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {sorted(want)}; listening: {now}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
