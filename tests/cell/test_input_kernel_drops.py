"""What the kernel drops at a cell's live input is counted: every datagram sent is delivered or counted.

The cell is stopped (SIGSTOP) while a sender keeps sending, so the kernel's buffer in front of the
input really fills and really drops: the AF_PACKET ring of an `iface:` input (its frames count as
`capture_ring_full`), the UDP socket of a `vxlan://` input (`buffer_full`, from /proc/net/udp).
After SIGCONT the cell reads what the kernel kept; at SIGTERM it names its input drops on stderr.
Checked: drops happened (the stop really overflowed the buffer), and the DATA events a reader got
plus the counted drops equal the number of datagrams sent (the sender's own count).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cell.runner import RawReader, wait_for
from tests.cell.test_capture_time_live import CELL_CONFIG  # UDP to udp/default, long timeouts
from tests.cell.wire import parse_text
from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import NetNS, no_offloads, quiet

pytestmark = pytest.mark.netns

PROBE_PORT = 3999  # warm-up datagrams (their own flow) until the cell is seen reading its input
TEST_PORT = 4000

# Sends `n` datagrams from 10.78.0.1 to 10.78.0.2:5000, one every `gap` seconds (busy-waited).
IFACE_SENDER = textwrap.dedent(
    """
    import socket, sys, time
    sport, n, gap = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("10.78.0.1", sport))
    t = time.perf_counter()
    for i in range(n):
        t += gap
        while time.perf_counter() < t:
            pass
        s.sendto(b"n=%06d " % i + b"z" * 200, ("10.78.0.2", 5000))
    """
)


class LiveCell:
    """`celltap cell --input SPEC` in a namespace, with a reader on udp/default."""

    def __init__(self, ns: NetNS, tmp: Path, spec: str) -> None:
        self.home = tmp / "home"
        cfg = tmp / "cell.yaml"
        cfg.write_text(CELL_CONFIG.format(home=self.home))
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
        self.err_path = tmp / "cell.err"
        self.err = open(self.err_path, "wb")
        self.proc = ns.exec(
            sys.executable, "-m", "celltap.cli", "cell", "--config", str(cfg), "--input", spec,
            stderr=self.err, env=env,
        )  # fmt: skip
        self.reader = RawReader(self.home / "udp/default")
        self.reader.start()

    def datagrams(self, sport: int) -> int:
        """DATA events of the flow from source port `sport` so far; -1 while an event is half read."""
        try:
            events = parse_text(bytes(self.reader.data))
        except (ValueError, AssertionError):
            return -1
        return sum(1 for e in events if e.event == "DATA" and sport in (e.flow[1], e.flow[3]))

    def stop(self) -> dict[str, int]:
        """SIGTERM; the input drops it names on stderr at exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        self.proc.wait(timeout=30)
        self.err.close()
        text = self.err_path.read_text()
        m = re.search(r"live inputs dropped frames: (\{.*\})", text)
        return json.loads(m.group(1)) if m else {}


def _settled(count, stable_s: float = 1.0, timeout: float = 30) -> int:
    """The value of count() once it stopped changing for stable_s."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= stable_s:
            return now
    raise AssertionError(f"count never settled (last {last})")


def test_a_full_capture_ring_is_counted_frame_for_frame(tmp_path):
    require_root()
    require_tool("ethtool")
    with NetNS("kds") as snd, NetNS("kdi") as ns:
        quiet(snd)
        quiet(ns)
        snd.veth("kd-out", "kd-in", other=ns)
        no_offloads(snd, "kd-out")
        no_offloads(ns, "kd-in")
        snd.ip("addr", "add", "10.78.0.1/24", "dev", "kd-out")
        snd.ip("neigh", "add", "10.78.0.2", "lladdr", "02:00:00:00:78:02", "dev", "kd-out")
        cell = LiveCell(ns, tmp_path, "iface:kd-in")
        try:
            assert cell.reader.connected.wait(20), "the cell never opened udp/default"

            def probe() -> bool:
                snd.run(sys.executable, "-c", IFACE_SENDER, str(PROBE_PORT), "1", "0")
                time.sleep(0.2)
                return cell.datagrams(PROBE_PORT) > 0

            wait_for(probe, timeout=30, what="the cell reading its interface")
            cell.proc.send_signal(signal.SIGSTOP)
            # one datagram a millisecond for 3 s: each 10 ms block of the ring holds ~10, and its
            # 128 blocks fill after ~1.3 s, so the kernel must drop the rest while the cell is stopped
            sent = 3000
            p = snd.run(sys.executable, "-c", IFACE_SENDER, str(TEST_PORT), str(sent), "0.001", timeout=60)
            assert p.returncode == 0, p.stderr
            cell.proc.send_signal(signal.SIGCONT)
            got = _settled(lambda: cell.datagrams(TEST_PORT))
        finally:
            drops = cell.stop()
    print(f"iface: sent {sent}, delivered {got}, dropped {drops}")
    assert drops.get("capture_ring_full", 0) > 0, f"the stop did not overflow the ring: got {got} of {sent}"
    assert got + drops["capture_ring_full"] == sent, (got, drops)


def _vxlan(i: int) -> bytes:
    """A VXLAN datagram (VNI 1) around an Ethernet frame holding a UDP datagram 10.79.0.1:4000 ->
    10.79.0.2:5000 whose payload names i."""
    payload = b"n=%06d " % i + b"v" * 100
    udp = struct.pack("!HHHH", TEST_PORT, 5000, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
        socket.inet_aton("10.79.0.1"), socket.inet_aton("10.79.0.2"),
    )  # fmt: skip
    csum = sum(struct.unpack("!10H", ip))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    ip = ip[:10] + struct.pack("!H", csum) + ip[12:]
    eth = b"\x02\x00\x00\x00\x79\x02" + b"\x02\x00\x00\x00\x79\x01" + b"\x08\x00"
    return b"\x08\x00\x00\x00\x00\x00\x01\x00" + eth + ip + udp


def test_a_full_tunnel_socket_is_counted_datagram_for_datagram(tmp_path):
    require_root()
    with NetNS("kdv") as ns:
        cell = LiveCell(ns, tmp_path, "vxlan://127.0.0.1:14789")
        sender = ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            assert cell.reader.connected.wait(20), "the cell never opened udp/default"
            dst = ("127.0.0.1", 14789)

            def probe() -> bool:
                # until the cell's socket is bound, a send is refused (OSError: not yet)
                sender.sendto(_vxlan(0), dst)
                time.sleep(0.2)
                return cell.datagrams(TEST_PORT) > 0

            wait_for(probe, timeout=30, what="the cell reading its socket")
            first = _settled(lambda: cell.datagrams(TEST_PORT))
            cell.proc.send_signal(signal.SIGSTOP)
            # far more than the socket's receive buffer holds while nobody reads it
            sent = 20_000
            for i in range(1, sent + 1):
                sender.sendto(_vxlan(i), dst)
            cell.proc.send_signal(signal.SIGCONT)
            got = _settled(lambda: cell.datagrams(TEST_PORT)) - first
        finally:
            sender.close()
            drops = cell.stop()
    print(f"vxlan: sent {sent}, delivered {got}, dropped {drops}")
    assert drops.get("buffer_full", 0) > 0, f"the stop did not overflow the socket: got {got} of {sent}"
    assert got + drops["buffer_full"] == sent, (got, drops)
