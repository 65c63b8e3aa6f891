"""The incubator captures a mirror port with NET_RAW alone (what the chart and compose grant it).

The real `celltap incubator` runs in a namespace under setpriv with a capability bounding set of
NET_RAW only (root otherwise, as in the chart); its own /proc status shows the capabilities it really
had. A mirror port's frames are addressed to other hosts, so the capture must make the interface
promiscuous itself: the kernel's promiscuity count of the port (`ip -d link`) is 1 while the
incubator runs and 0 after it stops. Frames with a foreign destination MAC sent into the port come
out of the cell's VXLAN output unchanged (compared with the frames the test built). Without NET_RAW
the incubator stops at once with one line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import NetNS, quiet

CAP_NET_RAW = 13
FOREIGN_MAC = bytes.fromhex("02aabbccdd99")  # not the port's own address


def frames(n: int) -> list[bytes]:
    """UDP/IPv4 frames to a host that is not the capturing one (as a SPAN port delivers them)."""
    out = []
    for i in range(n):
        ip = bytes.fromhex("4500002e") + i.to_bytes(2, "big") + bytes.fromhex("00004011 0000 0a000001")
        ip += bytes([10, 2, 0, 1 + i % 200])
        udp = (2000 + i).to_bytes(2, "big") + b"\x00\x35\x00\x1a\x00\x00" + bytes(18)
        out.append(FOREIGN_MAC + bytes.fromhex("020000000001") + b"\x08\x00" + ip + udp)
    return out


def promiscuity(ns: NetNS, ifname: str) -> int:
    """The kernel's count of promiscuous users of an interface."""
    m = re.search(r"promiscuity (\d+)", ns.ip("-d", "link", "show", ifname))
    assert m is not None
    return int(m.group(1))


def start_incubator(ns: NetNS, tmp: Path, caps: str, port: int, metrics: int) -> subprocess.Popen[bytes]:
    """`celltap incubator` on m1 in mirror mode, one cell (VXLAN to 127.0.0.1:port), bounding set `caps`."""
    cfg = {
        "mode": "mirror",
        "capture": "afpacket:m1",
        "metrics_port": metrics,
        "cells": [{"id": "0", "output": f"vxlan://127.0.0.1:{port}"}],
    }
    (tmp / "incubator.yaml").write_text(yaml.safe_dump(cfg))
    cmd = ["setpriv", "--bounding-set", caps, "--inh-caps", "-all", sys.executable, "-m", "celltap.cli"]
    return ns.exec(*cmd, "incubator", "--config", str(tmp / "incubator.yaml"), stderr=subprocess.PIPE)


def wait_cells(ns: NetNS, port: int, n: int, timeout: float = 20) -> None:
    """Until the incubator's /metrics (inside the namespace) says n cells are set up."""

    def cells() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            m = re.search(r"^celltap_incubator_cells (\S+)$", r.read().decode(), re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ns.call(cells) == n:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the incubator did not set up {n} cells in {timeout} s")


def effective_caps(pid: int) -> int:
    """CapEff of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)  # type: ignore[union-attr]


def test_incubator_captures_a_mirror_port_with_net_raw_alone(tmp_path: Path) -> None:
    require_root()
    require_tool("setpriv")
    sent = frames(200)
    with NetNS("cap") as ns:
        quiet(ns)
        ns.veth("m0", "m1")
        ns.ip("link", "set", "lo", "up")
        rx = ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(10)
        port = rx.getsockname()[1]
        assert promiscuity(ns, "m1") == 0
        inc = start_incubator(ns, tmp_path, "-all,+net_raw", port, 9471)
        try:
            deadline = time.monotonic() + 20
            while promiscuity(ns, "m1") == 0 and inc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert inc.poll() is None, inc.stderr.read().decode() if inc.stderr else ""
            assert effective_caps(inc.pid) == 1 << CAP_NET_RAW
            assert promiscuity(ns, "m1") == 1
            wait_cells(ns, 9471, 1)  # its cell's output open: no frame may find it missing
            tx = ns.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
            tx.bind(("m0", 0))
            for f in sent:
                tx.send(f)
            tx.close()
            got = []
            while len(got) < len(sent):
                got.append(rx.recv(65535)[8:])  # the VXLAN header is 8 bytes
            assert got == sent
        finally:
            inc.send_signal(signal.SIGTERM)
            inc.wait(15)
            rx.close()
        assert promiscuity(ns, "m1") == 0


def test_incubator_without_net_raw_stops_with_one_line(tmp_path: Path) -> None:
    require_root()
    require_tool("setpriv")
    with NetNS("nocap") as ns:
        ns.veth("m0", "m1")
        inc = start_incubator(ns, tmp_path, "-all", 4789, 9471)
        _out, err = inc.communicate(timeout=30)
    lines = err.decode().strip().splitlines()
    assert inc.returncode != 0 and len(lines) == 1, lines
    assert "permission denied" in lines[0] and "afpacket:m1" in lines[0], lines
