"""User mistakes across the commands: one line naming what is wrong, exit status 2, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root

CELLTAP = [sys.executable, "-m", "celltap.cli"]
SFTAP = str(Path(__file__).resolve().parents[2] / "celltap" / "defaults" / "sftap.yaml")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CELLTAP, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def busy_ports() -> Iterator[tuple[int, int]]:
    """A TCP port and a UDP port that another socket holds."""
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    t.listen()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    yield t.getsockname()[1], u.getsockname()[1]
    t.close()
    u.close()


def assert_one_line(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_metrics_port_in_use_names_the_port(busy_ports: tuple[int, int], tmp_path: Path) -> None:
    tcp, _ = busy_ports
    p = run("analyzer", "http", "--socket", str(tmp_path / "s"), "--metrics-port", str(tcp))
    assert_one_line(p, f"port {tcp} is already in use")
    p = run(
        "cell",
        "--config",
        SFTAP,
        "--home",
        str(tmp_path / "h"),
        "--read",
        "x.pcap",
        "--metrics-port",
        str(tcp),
    )
    assert_one_line(p, f"port {tcp} is already in use")


def test_collector_udp_port_in_use_names_the_address(busy_ports: tuple[int, int]) -> None:
    _, udp = busy_ports
    p = run("collector", "--listen", f"udp://127.0.0.1:{udp}", "--json", timeout=30)
    assert_one_line(p, f"127.0.0.1:{udp}", "in use")


def test_analyzer_without_its_socket_says_so_after_a_short_wait(tmp_path: Path) -> None:
    sock = tmp_path / "tcp" / "http"
    p = run("analyzer", "http", "--socket", str(sock), "--exit-on-eof", "--socket-wait", "0.5")
    assert_one_line(p, str(sock), "does not exist")


def test_unknown_interface_is_named(tmp_path: Path) -> None:
    require_root()
    p = run("cell", "--config", SFTAP, "--home", str(tmp_path / "h"), "--input", "iface:nosuch0")
    assert_one_line(p, "nosuch0", "no network interface")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["loadgen", "ipfix", "localhost"], ["expected HOST:PORT"]),
        (["loadgen", "ipfix", "127.0.0.1:abc"], ["'abc' is not a number"]),
        (["collector", "--listen", "udp://127.0.0.1:99999", "--json"], ["out of range"]),
        (["collector", "--read-pcap", "missing.pcap", "--json"], ["missing.pcap"]),
        (["incubator", "--read", "missing.pcap", "--cells", "2", "--write-dir", "out"], ["missing.pcap"]),
        (["cell", "--config", SFTAP, "--read", "missing.pcap", "--home", "h"], ["missing.pcap"]),
        (["cell", "--config", "missing.yaml", "--read", "x.pcap"], ["missing.yaml"]),
        (["loadgen", "pcap", "http", "/nonexistent-dir/x.pcap"], ["/nonexistent-dir/x.pcap"]),
    ],
)
def test_mistakes_are_one_line(args: list[str], words: list[str], tmp_path: Path) -> None:
    p = subprocess.run([*CELLTAP, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert_one_line(p, *words)
