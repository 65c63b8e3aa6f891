"""A live `celltap cell` with a packet store, fed over VXLAN (RFC 7348) from this process."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

from celltap.launcher.ports import free_port, free_udp_port
from tests.store.oracle import CELLTAP

VXLAN_VNI_FLAG = 0x08


def vxlan(frame: bytes, vni: int = 0) -> bytes:
    """The frame behind an 8-byte VXLAN header (flags I, the VNI)."""
    return struct.pack("!II", VXLAN_VNI_FLAG << 24, vni << 8) + frame


class StoreCell:
    """`celltap cell --input vxlan://127.0.0.1:P` with a `store:` section and /metrics."""

    def __init__(self, tmp: Path, store: dict, extra: list[str] | None = None, timeout: float = 30) -> None:
        self.udp = free_udp_port()
        self.metrics_port = free_port()
        cfg = {
            "global": {"home": str(tmp / "home"), "timeout": timeout, "udp_timeout": timeout},
            "tcp_default": {"if": "default"},
            "udp_default": {"if": "default"},
            "store": store,
        }
        path = tmp / "cell.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.log = tmp / "cell.log"
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                [*CELLTAP, "-v", "cell", "--config", str(path), "--input", f"vxlan://127.0.0.1:{self.udp}",
                 "--metrics-port", str(self.metrics_port), *(extra or [])],
                stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.metrics()
                break
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the cell's /metrics never answered"
                time.sleep(0.05)

    def send(self, frames: list[bytes]) -> None:
        """Each frame in its own VXLAN datagram."""
        for f in frames:
            self.sock.sendto(vxlan(f), ("127.0.0.1", self.udp))

    def metrics(self) -> dict[str, float]:
        """{'name{labels}': value} of the cell's /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def total(self, name: str) -> float:
        """Sum of a metric over its labels."""
        return sum(v for k, v in self.metrics().items() if k == name or k.startswith(name + "{"))

    def stop(self) -> int:
        """SIGTERM, wait; the exit code."""
        self.sock.close()
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def dir_bytes(path: Path) -> int:
    """Bytes of every file in a directory (files may vanish while we look)."""
    total = 0
    for f in path.iterdir():
        try:
            total += f.stat().st_size
        except FileNotFoundError:
            pass
    return total
