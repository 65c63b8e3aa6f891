"""Real tunnel traffic: the kernel's VXLAN devices, captured by tcpdump on the underlay, decoded.

Two network namespaces joined by a veth pair (the underlay) each get a VXLAN device over IPv4
(VNI 42) and one over IPv6 (VNI 43).  A TCP connection, UDP datagrams and pings run across the
overlay; tcpdump captures the outer frames on the underlay veth (Ethernet) and everything on
`any` (Linux cooked v1 and v2: the underlay frames and the overlay devices' inner frames).  Both
decode paths must equal tshark's innermost IP layer and ports, frame for frame; the inner TCP flow
must be the one the client's own socket reports; and a cell fed the underlay capture must see the
inner connection's bytes, or only the outer UDP flow with `decapsulate: no`.

This kernel has no GRE / ERSPAN / MPLS-routing / PPP support (CONFIG_NET_IPGRE_DEMUX,
CONFIG_MPLS_ROUTING and CONFIG_PPP unset), so those are covered by crafted captures only
(test_decode_linktypes_tshark.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from celltap.cell.abstractor import Abstractor
from celltap.cell.sftap_config import parse_config

from celltap.decode import DecodeOptions, Reason, decode_batch, decode_frame
from celltap.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, read_all
from tests.cell.wire import parse_text
from tests.conftest import require_root, require_tool
from tests.core.test_decode_linktypes_tshark import _check, _expected_stop, _innermost_non_ip, tshark_rows
from tests.incubator.netns import NetNS

SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.168.77.2", 7000)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
data = b""
while not data.endswith(b"END"):
    more = c.recv(65536)
    if not more:
        break
    data += more
c.sendall(b"got " + str(len(data)).encode())
c.close()
"""
CLIENT = """
import socket
c = socket.create_connection(("192.168.77.2", 7000))
print(c.getsockname()[1], flush=True)
c.sendall(b"hello through vxlan " * 200 + b"END")
print(c.recv(100).decode(), flush=True)
c.close()
"""

UDP6 = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for i in range(3):
    s.sendto(b"dgram %d" % i, ("fd78::2", 5353))
"""
PAYLOAD = b"hello through vxlan " * 200 + b"END"


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Captures of real VXLAN traffic, and what the client reported about its connection."""
    require_root()
    tcpdump = require_tool("tcpdump")
    tmp = tmp_path_factory.mktemp("vxlan")
    with NetNS("vxa") as a, NetNS("vxb") as b:
        a.veth("und0", "und1", b)
        for ns, me, peer in ((a, "1", "2"), (b, "2", "1")):
            dev = "und0" if ns is a else "und1"
            ns.ip("addr", "add", f"10.77.0.{me}/24", "dev", dev)
            ns.ip("-6", "addr", "add", f"fd77::{me}/64", "dev", dev, "nodad")
            ns.ip("link", "add", "vx4", "type", "vxlan", "id", "42", "dstport", "4789",
                  "local", f"10.77.0.{me}", "remote", f"10.77.0.{peer}", "dev", dev)  # fmt: skip
            ns.ip("link", "add", "vx6", "type", "vxlan", "id", "43", "dstport", "4789",
                  "local", f"fd77::{me}", "remote", f"fd77::{peer}", "dev", dev)  # fmt: skip
            ns.ip("addr", "add", f"192.168.77.{me}/24", "dev", "vx4")
            ns.ip("-6", "addr", "add", f"fd78::{me}/64", "dev", "vx6", "nodad")
            ns.ip("link", "set", "vx4", "up")
            ns.ip("link", "set", "vx6", "up")
        caps = {
            "underlay": (tmp / "underlay.pcap", ["-i", "und0"]),
            "any-sll": (tmp / "any.pcap", ["-i", "any", "-y", "LINUX_SLL"]),
            "any-sll2": (tmp / "any2.pcap", ["-i", "any", "-y", "LINUX_SLL2"]),
        }
        dumps: list[subprocess.Popen] = []
        server = None
        try:
            for path, args in caps.values():
                p = a.exec(tcpdump, "-U", "-n", *args, "-w", str(path), stderr=subprocess.PIPE, text=True)
                dumps.append(p)
                lines = [p.stderr.readline()]
                while lines[-1] and "listening" not in lines[-1]:  # `-y` prints the link type first
                    lines.append(p.stderr.readline())
                assert "listening" in lines[-1], lines
            server = b.exec(sys.executable, "-c", SERVER, stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            client = a.run(sys.executable, "-c", CLIENT)
            assert client.returncode == 0, client.stderr
            port, answer = client.stdout.split()[0], client.stdout.split("\n")[1]
            server.wait(timeout=20)
            assert answer == f"got {len(PAYLOAD)}"
            for target in ("192.168.77.2", "fd78::2"):
                ping = a.run("ping", "-c", "2", "-i", "0.2", "-W", "2", target)
                assert ping.returncode == 0, ping.stdout + ping.stderr
            udp = a.run(sys.executable, "-c", UDP6)
            assert udp.returncode == 0, udp.stderr
            time.sleep(0.5)
        finally:
            if server is not None:
                if server.poll() is None:  # the client failed: the server still waits in accept()
                    server.kill()
                server.wait(timeout=20)
                server.stdout.close()
            for p in dumps:
                os.kill(p.pid, signal.SIGINT)  # the `ip netns exec` wrapper execs tcpdump itself
                p.wait(timeout=20)
                p.stderr.close()
    yield {"pcaps": {k: v[0] for k, v in caps.items()}, "client_port": int(port)}


@pytest.mark.parametrize("capture", ["underlay", "any-sll", "any-sll2"])
@pytest.mark.parametrize("decapsulate", [True, False], ids=["decap", "outer"])
def test_real_vxlan_equals_tshark(overlay: dict, capture: str, decapsulate: bool) -> None:
    tshark = require_tool("tshark")
    pcap = overlay["pcaps"][capture]
    rows = tshark_rows(tshark, pcap)
    batches = read_all(str(pcap))
    want_lt = {"underlay": LINKTYPE_ETHERNET, "any-sll": LINKTYPE_LINUX_SLL, "any-sll2": LINKTYPE_LINUX_SLL2}
    assert {b.linktype for b in batches} == {want_lt[capture]}
    opts = DecodeOptions(decapsulate=decapsulate)
    cols = [decode_batch(b, opts) for b in batches]
    pairs = [(c, i) for c in cols for i in range(len(c))]
    assert len(pairs) == len(rows) > 20
    seen = {"ports": 0, "ip": 0, "non-ip": 0, "vxlan": 0}
    inner_client = False
    for (c, i), row in zip(pairs, rows, strict=True):
        if decapsulate and _innermost_non_ip(row["protos"]):
            assert int(c.status[i]) == Reason.NON_IP, row["protos"]
            seen["non-ip"] += 1
        elif _expected_stop(row, decapsulate) < 0:
            assert int(c.l3[i]) == 0 and int(c.status[i]) == Reason.NON_IP, row["protos"]
            seen["non-ip"] += 1
        else:
            seen[_check(c, i, row, decapsulate)] += 1
        seen["vxlan"] += "vxlan" in row["protos"]
        d = decode_frame(c.batch.frame(i), c.batch.linktype, int(c.batch.wirelens[i]), opts)
        for name in ("status", "l3", "l4", "sport", "dport", "payload_off", "payload_len", "encap"):
            assert int(getattr(d, name)) == int(getattr(c, name)[i]), (name, row["protos"])
        if int(c.sport[i]) == overlay["client_port"] and c.src[i, :4].tobytes() == bytes([192, 168, 77, 1]):
            inner_client = True
    assert seen["vxlan"] > 10 and seen["ports"] > 10, seen
    # the client's own view of its connection is a flow we report -- unless we stop at the outer UDP
    assert inner_client == (decapsulate or capture != "underlay"), seen


def test_cell_sees_the_inner_connection(overlay: dict) -> None:
    """A cell fed the underlay capture delivers the connection's bytes (decapsulate is the default)."""
    (batch,) = read_all(str(overlay["pcaps"]["underlay"]))
    doc = {"tcp_default": {"if": "default", "proto": "TCP"}, "udp_default": {"if": "udpdef", "proto": "UDP"}}
    cell = Abstractor(parse_config(doc))
    cell.process_frames(batch)
    cell.finish()
    evs = parse_text(b"".join(cell.sinks["tcp/default"].parts))
    port = overlay["client_port"]
    mine = [e for e in evs if port in (e.flow[1], e.flow[3]) and "192.168.77.1" in (e.flow[0], e.flow[2])]
    data = b"".join(e.data for e in mine if e.event == "DATA")
    assert PAYLOAD in data and f"got {len(PAYLOAD)}".encode() in data, data[:80]
    assert [e.reason for e in mine if e.event == "DESTROYED"] == ["NORMAL"]
    outer = Abstractor(parse_config({"global": {"decapsulate": "no"}, **doc}))
    outer.process_frames(batch)
    outer.finish()
    assert not outer.sinks["tcp/default"].parts, "decapsulate: no -- no inner TCP flow"
    udp = parse_text(b"".join(outer.sinks["udp/udpdef"].parts))
    assert any(4789 in (e.flow[1], e.flow[3]) for e in udp), "the outer VXLAN flow instead"
