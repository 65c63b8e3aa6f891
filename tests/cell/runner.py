"""Run the real `celltap cell` process on a capture with raw socket readers on its interfaces."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from celltap.launcher.ports import free_port

PY = sys.executable


class RawReader(threading.Thread):
    """Connect to an interface socket (retrying until it exists) and keep every byte."""

    def __init__(self, path: Path, stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.data = bytearray()
        self.stop_after = stop_after  # stop reading (but stay connected) after this many bytes
        self.connected = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
        self.sock = s
        self.connected.set()
        while True:
            if self.stop_after is not None and len(self.data) >= self.stop_after:
                time.sleep(0.05)
                continue
            try:
                d = s.recv(1 << 20)
            except OSError:
                return
            if not d:
                return
            self.data += d


def write_config(path: Path, home: Path, body: str) -> Path:
    """An SF-TAP config file with `global.home` set to `home`."""
    path.write_text(f"global:\n  home: {home}\n  timeout: 30\n" + body)
    return path


def run_cell(
    config: Path,
    pcap: Path,
    home: Path,
    interfaces: list[str],
    extra: list[str] | None = None,
    timeout: float = 120,
) -> tuple[subprocess.CompletedProcess, dict[str, bytes]]:
    """Run `celltap cell --read`, readers on `interfaces`; return (process, bytes per interface)."""
    readers = {name: RawReader(home / name) for name in interfaces}
    for r in readers.values():
        r.start()
    cmd = [
        PY,
        "-m",
        "celltap.cli",
        "cell",
        "--config",
        str(config),
        "--read",
        str(pcap),
        "--wait-readers",
        ",".join(interfaces),
        "--wait-timeout",
        "20",
        *(extra or []),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    for r in readers.values():
        r.join(10)
    return proc, {name: bytes(r.data) for name, r in readers.items()}




class LiveCell:
    """A `celltap cell` process in live mode (no --read), with its metrics endpoint."""

    def __init__(self, config: Path, home: Path, extra: list[str] | None = None) -> None:
        self.home = home
        self.metrics_port = free_port()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "celltap.cli",
                "cell",
                "--config",
                str(config),
                "--metrics-port",
                str(self.metrics_port),
                *(extra or []),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def wait_socket(self, name: str, timeout: float = 20) -> Path:
        """Wait until an interface socket exists."""
        path = self.home / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, self.proc.communicate()[1]
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.02)
        return path

    def metrics(self) -> dict[str, float]:
        """Scrape /metrics into {'name{labels}': value}."""
        import urllib.request

        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        )
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out

    def inject_pcap(self, pcap: Path) -> None:
        """Write a pcap file into the cell's pcap injection socket."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(self.wait_socket("pcap")))
        s.sendall(pcap.read_bytes())
        s.close()

    def stop(self) -> tuple[int, str]:
        """SIGTERM; return (exit code, stderr)."""
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def wait_for(pred, timeout: float = 20, what: str = "condition") -> None:
    """Poll `pred` until true; an endpoint that is not up yet (OSError) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if pred():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
