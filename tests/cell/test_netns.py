"""Live inputs for real: frames replayed onto a veth (iface:) and through a Linux vxlan device (vxlan://).

Two network namespaces made for the test: `a` replays a capture (tcpreplay) onto its veth end, or
onto a vxlan device whose remote is `b`; the cell runs inside `b`. Readers connect over the
filesystem (UNIX sockets are not namespaced) and must see the same streams as an offline run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celltap.cell.abstractor import Abstractor
from celltap.cell.sftap_config import load_config

from celltap.pcap import PcapWriter, read_all
from tests.cell.runner import RawReader, wait_for, write_config
from tests.cell.wire import parse_text, streams
from tests.conftest import require_root, require_tool

pytestmark = pytest.mark.netns

CONFIG = """
tcp_default:
  if: default
  proto: TCP
http:
  up:     '^[-a-zA-Z]+ .+ HTTP/1\\.(0\\r?\\n|1\\r?\\n([-a-zA-Z]+: .+\\r?\\n)+)'
  down:   '^HTTP/1\\.[01] [1-9][0-9]{2} .+\\r?\\n'
  proto:  TCP
  if:     http
"""


def sh(*args: str) -> None:
    """Run a command, failing the test with its stderr."""
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"


@pytest.fixture
def netns():
    require_root()
    require_tool("ip")
    tag = f"ct{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh(
            "ip",
            "link",
            "add",
            f"{tag}va",
            "netns",
            a,
            "type",
            "veth",
            "peer",
            "name",
            f"{tag}vb",
            "netns",
            b,
        )
        for ns, dev, ip in ((a, f"{tag}va", "10.201.0.1/24"), (b, f"{tag}vb", "10.201.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield tag, a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)


def _capture(path: Path) -> Path:
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    with PcapWriter(str(path)) as w:
        for ts, frame in get("http").generate(4, 20):
            w.write(ts, frame)
    return path


def _expected(cfg: Path, pcap: Path) -> dict:
    a = Abstractor(load_config(cfg))
    for batch in read_all(str(pcap)):
        a.process_frames(batch)
    a.finish()
    return streams(parse_text(b"".join(a.sinks["tcp/http"].parts)))


@pytest.mark.parametrize("kind", ["iface", "vxlan"])
def test_live_input_in_namespaces(tmp_path, netns, kind):
    tcpreplay = require_tool("tcpreplay")
    tag, ns_a, ns_b = netns
    pcap = _capture(tmp_path / "http.pcap")
    home = tmp_path / "home"
    cfg = write_config(tmp_path / "c.yaml", home, CONFIG)
    if kind == "vxlan":
        # room for full-size inner frames plus the 50 bytes of VXLAN encapsulation
        sh("ip", "-n", ns_a, "link", "set", f"{tag}va", "mtu", "9100")
        sh("ip", "-n", ns_b, "link", "set", f"{tag}vb", "mtu", "9100")
        sh(
            "ip",
            "-n",
            ns_a,
            "link",
            "add",
            f"{tag}x",
            "type",
            "vxlan",
            "id",
            "42",
            "remote",
            "10.201.0.2",
            "dstport",
            "4789",
            "dev",
            f"{tag}va",
        )
        sh("ip", "-n", ns_a, "link", "set", f"{tag}x", "mtu", "9000", "up")
        spec, out_dev = "vxlan://10.201.0.2:4789?vni=42", f"{tag}x"
    else:
        spec, out_dev = f"iface:{tag}vb", f"{tag}va"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    cell = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns_b,
            sys.executable,
            "-m",
            "celltap.cli",
            "cell",
            "--config",
            str(cfg),
            "--input",
            spec,
            "--wait-readers",
            "tcp/http",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        reader = RawReader(home / "tcp/http")
        reader.start()
        assert reader.connected.wait(20), "the cell never opened tcp/http"
        sh("ip", "netns", "exec", ns_a, tcpreplay, "-q", "--pps", "3000", "-i", out_dev, str(pcap))
        expected = _expected(cfg, pcap)

        def complete() -> bool:
            return sum(e.event == "DESTROYED" for e in parse_text(bytes(reader.data))) == len(expected)

        wait_for(complete, timeout=20, what="all flows through the live input")
        assert streams(parse_text(bytes(reader.data))) == expected
    finally:
        cell.terminate()
        _, err = cell.communicate(timeout=20)
    assert cell.returncode == 0, err
