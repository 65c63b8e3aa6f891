"""Cell outputs against real receivers: a Linux vxlan device decapsulates our VXLAN; a plain UDP
socket sees the RFC 7348 header; raw iface output with a destination MAC rewrite."""

from __future__ import annotations

import collections
import socket
import struct

import pytest

from celltap.pcap import read_all
from celltap.pcap.batch import FrameBatch
from incubator.outputs import OutputSpecError, VxlanOutput, open_output, vxlan_header
from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import NetNS, Tcpdump, no_offloads, quiet


def frames_of(path: str) -> list[bytes]:
    return [b.frame(i) for b in read_all(path) for i in range(len(b))]


def sample_frames(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        src = bytes([0x02, 0, 0, 0, i >> 8, i & 255])
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 28 + 10, i, 0, 64, 17, 0, b"\x0a\x05\x00\x01", b"\x0a\x05\x00\x02"
        )
        udp = struct.pack("!HHHH", 1000 + i, 53, 18, 0) + bytes([i & 255]) * 10
        out.append(b"\x02\x00\x00\x00\x00\xfe" + src + b"\x08\x00" + ip + udp)
    return out


def test_vxlan_header_is_rfc7348():
    h = vxlan_header(0x123456)
    assert h == bytes([0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0])
    with pytest.raises(OutputSpecError):
        vxlan_header(1 << 24)


def test_vxlan_datagrams_on_a_udp_socket():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    out = open_output(f"vxlan://127.0.0.1:{port}?vni=7")
    assert isinstance(out, VxlanOutput)
    frames = sample_frames(50)
    sent, nbytes, drops = out.send(FrameBatch.from_frames(frames))
    assert (sent, nbytes, drops) == (50, sum(map(len, frames)), {})
    got = [rx.recv(65536) for _ in range(50)]
    assert all(g[:8] == bytes([8, 0, 0, 0, 0, 0, 7, 0]) for g in got)
    assert [g[8:] for g in got] == frames
    out.close()
    rx.close()


@pytest.mark.parametrize(
    "spec", ["bogus:x", "vxlan://", "vxlan://h:1?vni=x", "vxlan://h?foo=1", "pcap:", "iface:"]
)
def test_bad_output_specs_are_clear_errors(spec):
    with pytest.raises(OutputSpecError, match=r"output|VNI|vxlan|iface|pcap"):
        open_output(spec)


def test_linux_vxlan_device_decapsulates_our_frames(tmp_path):
    require_root()
    require_tool("tcpdump")
    require_tool("ethtool")
    with NetNS("vxs") as snd, NetNS("vxr") as rcv:
        quiet(snd)
        quiet(rcv)
        snd.veth("u0", "u1", rcv)
        no_offloads(snd, "u0")
        no_offloads(rcv, "u1")
        snd.ip("addr", "add", "10.7.0.1/24", "dev", "u0")
        rcv.ip("addr", "add", "10.7.0.2/24", "dev", "u1")
        rcv.ip(
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "42",
            "dstport",
            "4789",
            "local",
            "10.7.0.2",
            "dev",
            "u1",
        )
        rcv.ip("link", "set", "vx0", "up")
        assert snd.run("ping", "-c", "1", "-W", "2", "10.7.0.2").returncode == 0  # neighbour resolved first
        # A plain packet socket on the vxlan device: what Linux decapsulated, nothing of ours involved.
        rx = rcv.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind(("vx0", 3))
        rx.settimeout(5)
        out = snd.call(lambda: open_output("vxlan://10.7.0.2:4789?vni=42"))
        frames = sample_frames(200)
        sent, _nbytes, drops = out.send(FrameBatch.from_frames(frames))
        out.close()
        got = [rx.recv(65536) for _ in range(200)]
        rx.close()
    assert sent == 200 and drops == {}
    assert collections.Counter(got) == collections.Counter(frames)


def test_iface_output_rewrites_destination_mac(tmp_path):
    require_root()
    require_tool("tcpdump")
    with NetNS("ifo") as ns:
        quiet(ns)
        ns.veth("o0", "o1")
        dump = Tcpdump(ns, "o1", str(tmp_path / "o1.pcap"))
        out = ns.call(lambda: open_output("iface:o0@02:aa:bb:cc:dd:ee"))
        frames = sample_frames(20)
        sent, _n, drops = out.send(FrameBatch.from_frames(frames))
        out.close()
        path = dump.stop()
    assert sent == 20 and drops == {}
    assert frames_of(path) == [bytes.fromhex("02aabbccddee") + f[6:] for f in frames]
