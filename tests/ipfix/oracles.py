"""Test plumbing around real processes: a recording UDP relay, tshark totals, the collector CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from celltap.launcher.ports import free_port as launcher_free_port
from celltap.pcap import PcapWriter
from tests.ipfix.traffic import ipv4_frame, udp

REPO = Path(__file__).resolve().parents[2]
CELLTAP = [sys.executable, "-m", "celltap.cli"]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A free UDP (by default) port on 127.0.0.1."""
    return launcher_free_port(kind)


class RecordingRelay:
    """Receive datagrams on one port, keep a copy, forward them unchanged to another port."""

    def __init__(self, forward_port: int | None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.forward_port = forward_port
        self.datagrams: list[bytes] = []
        self.last = time.monotonic()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.datagrams.append(data)
            self.last = time.monotonic()
            if self.forward_port is not None:
                self.out.sendto(data, ("127.0.0.1", self.forward_port))

    def wait_quiet(self, seconds: float, limit: float = 30.0) -> None:
        """Wait until nothing arrived for `seconds` (bounded by `limit`)."""
        end = time.monotonic() + limit
        while time.monotonic() < end and time.monotonic() - self.last < seconds:
            time.sleep(0.1)

    def close(self) -> None:
        """Stop relaying."""
        self._stop = True
        self._t.join()
        self.sock.close()
        self.out.close()


def datagrams_to_pcap(datagrams: list[bytes], path: Path, dport: int) -> None:
    """Wrap export datagrams in Ethernet/IPv4/UDP frames so tshark can read them."""
    with PcapWriter(str(path)) as w:
        for i, d in enumerate(datagrams):
            w.write(
                1_700_000_000 * 10**9 + i * 1000,
                ipv4_frame(b"\x7f\0\0\x01", b"\x7f\0\0\x01", 17, udp(40000, dport, d), ident=i),
            )


def tshark_fields(pcap: Path, port: int, fields: list[str]) -> list[list[list[str]]]:
    """Per frame, per field, the list of values tshark's cflow dissector shows."""
    cmd = [
        "tshark",
        "-n",
        "-r",
        str(pcap),
        "-d",
        f"udp.port=={port},cflow",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "separator=|",
        "-E",
        "aggregator=,",
    ]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    rows = []
    for line in out.splitlines():
        rows.append([v.split(",") if v else [] for v in line.split("|")])
    return rows


def tshark_problems(pcap: Path, port: int) -> int:
    """Frames tshark marks malformed or with an expert error."""
    out = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(pcap),
            "-d",
            f"udp.port=={port},cflow",
            "-Y",
            "_ws.malformed || _ws.expert.severity >= 8388608",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return len(out.splitlines())


class CollectorProcess:
    """`celltap collector ... --json` as a child process; records are read back from its stdout."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [*CELLTAP, "collector", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(REPO),
        )
        line = self.proc.stderr.readline()  # type: ignore[union-attr]
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"collector did not start: {line}{self.proc.stderr.read()}")  # type: ignore

    def stop(self) -> tuple[list[dict], dict, str]:
        """SIGTERM, then (records, summary, stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        records = [json.loads(x) for x in out.splitlines() if x.strip()]
        summary = {}
        for line in err.splitlines():
            if line.startswith("{"):
                summary = json.loads(line)
        return records, summary, err
