"""Helpers for the live (network namespace) incubator tests: tcpdump receivers, the incubator process,
metrics scraping inside a namespace."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import yaml

from tests.incubator.netns import NetNS, sh


def quiet(ns: NetNS) -> None:
    """No IPv6 (router solicitations, MLD) so that only test traffic crosses the links."""
    for key in ("all", "default"):
        ns.run("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")


def no_offloads(ns: NetNS, ifname: str) -> None:
    """Frames as on a wire: no TSO/GSO super-frames, checksums filled in by the stack."""
    ns.run("ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off")
    ns.ip("link", "set", ifname, "mtu", "9000")  # room for tagged and jumbo test frames


class Tcpdump:
    """tcpdump writing one interface's frames to a pcap file (an independent receiver)."""

    def __init__(
        self,
        ns: NetNS,
        ifname: str,
        path: str,
        direction_in: bool = True,
        count: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.path = path
        self.count = count
        self.kernel_drops = 0
        # A large buffer: on a loaded 2-core box tcpdump itself must not be the one that drops.
        args = ["tcpdump", "-i", ifname, "-w", path, "-U", "-n", "-s", "0", "--immediate-mode", "-B", "65536"]
        if count is not None:
            args += ["-c", str(count)]
        if direction_in:
            args += ["-Q", "in"]
        args += list(extra)
        self.proc = ns.exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        line = b""
        while time.time() < deadline and b"listening" not in line:
            line = self.proc.stderr.readline()  # type: ignore[union-attr]
            if not line and self.proc.poll() is not None:
                raise RuntimeError("tcpdump exited")

    def stop(self) -> str:
        """Stop and return the file path."""
        if self.count is not None:
            try:
                self.proc.wait(timeout=10)  # exits by itself after `count` frames
                return self.path
            except subprocess.TimeoutExpired:
                pass
        # SIGINT drops what tcpdump has not read yet: wait until the file stops growing first.
        last, stable = -1, 0
        deadline = time.time() + 10
        while stable < 3 and time.time() < deadline:
            time.sleep(0.2)
            size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            stable = stable + 1 if size == last else 0
            last = size
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        tail = self.proc.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
        m = re.search(r"(\d+) packets dropped by kernel", tail)
        self.kernel_drops = int(m.group(1)) if m else 0
        return self.path


class IncubatorProcess:
    """`celltap incubator --config` running inside a namespace."""

    def __init__(self, ns: NetNS, cfg: dict, tmp: str) -> None:
        self.ns = ns
        self.port = cfg["metrics_port"]
        path = os.path.join(tmp, "incubator.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        self.log = open(os.path.join(tmp, "incubator.log"), "wb")
        self.proc = ns.exec(
            sys.executable, "-m", "celltap.cli", "-v", "incubator", "--config", path, stderr=self.log
        )

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics from inside the namespace: {'name{labels}': value}."""

        def get() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
                return r.read().decode()

        out = {}
        for line in self.ns.call(get).splitlines():
            if line.startswith("celltap_incubator_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def wait_ready(self, cells: int, timeout: float = 20) -> None:
        """Until the metrics endpoint answers and the cells are set up."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"incubator exited: {self.read_log()}")
            try:
                if self.metrics().get("celltap_incubator_cells") == cells:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"incubator not ready: {self.read_log()}")

    def wait_received(self, n: int, timeout: float = 20) -> dict[str, float]:
        """Until the incubator has taken in n frames (summed over interfaces) and the data path is idle."""
        deadline = time.time() + timeout
        m: dict[str, float] = {}
        while time.time() < deadline:
            m = self.metrics()
            got = sum(v for k, v in m.items() if k.startswith("celltap_incubator_received_frames_total"))
            if got >= n:
                time.sleep(0.3)
                return self.metrics()
            time.sleep(0.1)
        raise TimeoutError(f"incubator received only part of {n}: {m}")

    def read_log(self) -> str:
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")[-3000:]

    def stop(self) -> int:
        """SIGTERM and wait."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            self.log.close()


def sum_metric(m: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets."""
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


def conservation(m: dict[str, float]) -> tuple[float, float]:
    """(received, forwarded + dropped + held) from scraped metrics."""
    received = sum_metric(m, "celltap_incubator_received_frames_total")
    dropped = sum(
        v
        for k, v in m.items()
        if k.startswith("celltap_incubator_dropped_frames_total") and 'reason="capture_ring_full"' not in k
    )
    fwd = m.get("celltap_incubator_forwarded_frames_total", 0.0)
    return received, fwd + dropped + m.get("celltap_incubator_fragments_held_frames", 0.0)


__all__ = ["IncubatorProcess", "NetNS", "Tcpdump", "conservation", "no_offloads", "quiet", "sh", "sum_metric"]
