"""Real traffic of real tools, captured by tcpdump on the loopback of a fresh network namespace.

The namespace (unique name, removed on exit) keeps servers, clients and the capture away from the
host and from other tests running at the same time; only loopback traffic inside it is produced.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.incubator.netns import NetNS

# A UDP echo server (the client's bytes are what the tests look at; any real socket peer will do).
UDP_ECHO = (
    "import socket,sys\n"
    "fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    d, a = s.recvfrom(65535); s.sendto(d, a)\n"
)


class LoopCapture:
    """A network namespace with tcpdump writing its loopback's frames to `path`."""

    def __init__(self, tag: str, path: Path) -> None:
        self.ns = NetNS(tag)
        self.path = path
        self.procs: list[subprocess.Popen] = []
        self.tcpdump: subprocess.Popen | None = None

    def __enter__(self) -> LoopCapture:
        self.ns.__enter__()
        args = ["tcpdump", "-i", "lo", "-w", str(self.path), "-U", "-n", "-s", "0", "--immediate-mode"]
        self.tcpdump = self.ns.exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        line = b""
        while time.time() < deadline and b"listening" not in line:
            line = self.tcpdump.stderr.readline()  # type: ignore[union-attr]
            if not line and self.tcpdump.poll() is not None:
                raise RuntimeError("tcpdump exited")
        return self

    def start(self, *cmd: str, ready: bytes | None = None) -> subprocess.Popen:
        """A background process in the namespace (a server); waits for `ready` on its stdout if given."""
        p = self.ns.exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        if ready is not None:
            assert ready in p.stdout.readline(), f"{cmd[0]} did not start"  # type: ignore[union-attr]
        return p

    def udp_echo(self, addr: str, port: int) -> subprocess.Popen:
        """A UDP echo server on addr:port."""
        return self.start(sys.executable, "-c", UDP_ECHO, addr, str(port), ready=b"ready")

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A client to completion in the namespace."""
        return self.ns.run(*cmd, timeout=timeout)

    def stop(self) -> Path:
        """Stop the capture (after its file stops growing) and the servers; return the pcap path."""
        last, stable = -1, 0
        deadline = time.time() + 10
        while stable < 3 and time.time() < deadline:
            time.sleep(0.2)
            size = os.path.getsize(self.path) if self.path.exists() else 0
            stable = stable + 1 if size == last else 0
            last = size
        assert self.tcpdump is not None
        self.tcpdump.send_signal(signal.SIGINT)
        self.tcpdump.wait(timeout=10)
        for p in self.procs:
            p.terminate()
            p.wait(timeout=10)
        return self.path

    def __exit__(self, *exc: object) -> None:
        for p in [*self.procs, *([self.tcpdump] if self.tcpdump else [])]:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        self.ns.__exit__(*exc)
