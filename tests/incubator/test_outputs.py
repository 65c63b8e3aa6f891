"""Cell outputs against real receivers: a Linux vxlan device decapsulates our VXLAN; a plain UDP
socket sees the RFC 7348 header; raw iface output with a destination MAC rewrite."""

from __future__ import annotations

import collections
import os
import socket
import struct

import pytest
from celltap.incubator.outputs import IfaceOutput, OutputSpecError, VxlanOutput, open_output, vxlan_header

from celltap.pcap import read_all
from celltap.pcap.batch import FrameBatch
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


SO_RCVBUFFORCE = 33


def varied_frames(n: int, big: set[int] = frozenset(), big_len: int = 2000) -> list[bytes]:
    """n distinct frames of 60..1500 bytes (index i at bytes 14..15); those in `big` are big_len."""
    out = []
    for i in range(n):
        length = big_len if i in big else 60 + (i * 37) % 1441
        head = b"\x02\x00\x00\x00\x00\xfe\x02\x00\x00\x00\x00\x01\x88\xb5" + i.to_bytes(2, "big")
        out.append(head + bytes([i & 255]) * (length - len(head)))
    return out


def packet_receiver(ns: NetNS, ifname: str) -> socket.socket:
    """A plain packet socket on `ifname` with room for every frame of a test burst."""
    rx = ns.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)))
    rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    rx.bind((ifname, 3))
    rx.settimeout(0.5)
    return rx


def receive_all(rx: socket.socket, limit: int) -> list[bytes]:
    got = []
    while len(got) < limit:
        try:
            got.append(rx.recv(65536))
        except TimeoutError:
            break
    return got


@pytest.mark.parametrize("mac", [None, "02:aa:bb:cc:dd:ee"])
def test_iface_batches_arrive_complete_in_order_through_sendmmsg(mac):
    """Hundreds of frames per batch, several batches on one output (buffers grow and are reused):
    the peer sees every frame byte for byte, in order."""
    require_root()
    with NetNS("ifb") as ns:
        quiet(ns)
        ns.veth("b0", "b1")
        no_offloads(ns, "b0")
        no_offloads(ns, "b1")
        rx = packet_receiver(ns, "b1")
        out = ns.call(lambda: open_output("iface:b0" + (f"@{mac}" if mac else "")))
        assert out._batched is not None  # libc has sendmmsg here: the batched path runs
        sizes = (20, 700, 20, 500)
        frames = varied_frames(sum(sizes))
        results, at = [], 0
        for k in sizes:
            results.append(out.send(FrameBatch.from_frames(frames[at : at + k])))
            at += k
        capacity = out._batched.msgs.capacity
        out.close()
        got = receive_all(rx, len(frames) + 1)
        rx.close()
    assert results == [
        (k, sum(map(len, frames[a : a + k])), {}) for a, k in zip((0, 20, 720, 740), sizes, strict=True)
    ]
    assert capacity >= 700
    want = frames if mac is None else [bytes.fromhex(mac.replace(":", "")) + f[6:] for f in frames]
    assert got == want


@pytest.mark.parametrize("batched", [True, False])
def test_iface_error_mid_batch_is_one_counted_drop_and_the_rest_is_sent(batched):
    """Frames longer than the MTU fail with EMSGSIZE (first, middle and last of a batch): each is
    one drop under `output_emsgsize`, every other frame goes out, in order, and bytes add up."""
    require_root()
    big = {0, 10, 11, 150, 299}
    frames = varied_frames(300, big)
    with NetNS("ife") as ns:
        quiet(ns)
        ns.veth("e0", "e1")  # MTU 1500: the 2000-byte frames do not fit
        ns.run("ethtool", "-K", "e0", "tso", "off", "gso", "off", "tx", "off")
        rx = packet_receiver(ns, "e1")
        out = ns.call(lambda: IfaceOutput("e0", batched=batched))
        assert (out._batched is not None) == batched
        sent, nbytes, drops = out.send(FrameBatch.from_frames(frames))
        out.close()
        got = receive_all(rx, len(frames))
        rx.close()
    fit = [f for i, f in enumerate(frames) if i not in big]
    assert (sent, nbytes, drops) == (len(fit), sum(map(len, fit)), {"output_emsgsize": len(big)})
    assert got == fit


@pytest.mark.parametrize("batched", [True, False])
def test_vxlan_batch_on_a_udp_socket_with_a_datagram_too_big(batched):
    """500 frames in one batch on loopback UDP, one of them too big for a UDP datagram: that one
    is an `output_emsgsize` drop, the other 499 arrive in order with the RFC 7348 header."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if os.geteuid() == 0:
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(0.5)
    out = VxlanOutput("127.0.0.1", rx.getsockname()[1], vni=0xABCDEF, batched=batched)
    assert (out._batched is not None) == batched
    n = 500 if os.geteuid() == 0 else 60  # without root the receive buffer holds fewer
    frames = varied_frames(n, {n // 2}, big_len=65530)
    sent, nbytes, drops = out.send(FrameBatch.from_frames(frames))
    out.close()
    got = receive_all(rx, n)
    rx.close()
    fit = frames[: n // 2] + frames[n // 2 + 1 :]
    assert (sent, nbytes, drops) == (n - 1, sum(map(len, fit)), {"output_emsgsize": 1})
    assert [g[:8] for g in got] == [bytes([8, 0, 0, 0, 0xAB, 0xCD, 0xEF, 0])] * (n - 1)
    assert [g[8:] for g in got] == fit


def test_linux_vxlan_device_decapsulates_a_batch_of_hundreds():
    """One sendmmsg batch of 600 VXLAN datagrams: a Linux vxlan device decapsulates them all,
    byte for byte, in order."""
    require_root()
    with NetNS("vbs") as snd, NetNS("vbr") as rcv:
        quiet(snd)
        quiet(rcv)
        snd.veth("w0", "w1", rcv)
        no_offloads(snd, "w0")
        no_offloads(rcv, "w1")
        snd.ip("addr", "add", "10.8.0.1/24", "dev", "w0")
        rcv.ip("addr", "add", "10.8.0.2/24", "dev", "w1")
        rcv.ip(
            "link",
            "add",
            "vx1",
            "type",
            "vxlan",
            "id",
            "43",
            "dstport",
            "4789",
            "local",
            "10.8.0.2",
            "dev",
            "w1",
        )
        rcv.ip("link", "set", "vx1", "mtu", "8900", "up")
        assert snd.run("ping", "-c", "1", "-W", "2", "10.8.0.2").returncode == 0  # neighbour resolved first
        rx = packet_receiver(rcv, "vx1")
        out = snd.call(lambda: open_output("vxlan://10.8.0.2:4789?vni=43"))
        assert out._batched is not None
        frames = varied_frames(600)
        result = out.send(FrameBatch.from_frames(frames))
        out.close()
        got = receive_all(rx, 601)
        rx.close()
    assert result == (600, sum(map(len, frames)), {})
    assert got == frames
