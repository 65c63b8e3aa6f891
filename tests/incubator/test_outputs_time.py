"""The capture time in what the incubator sends, decoded by tshark and by a Linux geneve device.

* `geneve://`: datagrams caught by tcpdump in a namespace; tshark decodes RFC 8926 (VNI, the option's
  class, type, length and data) and the inner frame; the data is each frame's capture time.
* `iface:...?ts=arista`: tcpdump on the veth's peer; tshark's Arista dissector (`avsp`) reads the
  seconds and nanoseconds of each frame's capture time, and the frame after the header is the one
  sent (batched sendmmsg and the per-frame fallback, with and without a MAC rewrite).
* A Linux geneve device decapsulates our datagrams (the option is not critical) and the cell's
  `strip_arista` turns stamped frames back into the original ones.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from celltap.incubator.outputs import open_output

from celltap.capture_time import strip_arista
from celltap.pcap.batch import FrameBatch
from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import NetNS, Tcpdump, no_offloads, quiet
from tests.incubator.test_outputs import frames_of, sample_frames, varied_frames

T0 = 1_796_000_000_123_456_789


def _udp_sink(addr: tuple[str, int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(addr)
    return s


def _fields(tshark: str, pcap: str, fields: list[str], *extra: str) -> list[list[str]]:
    cmd = [tshark, "-r", pcap, *extra, "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def test_geneve_output_carries_capture_times_tshark_decodes(tmp_path):
    require_root()
    tshark = require_tool("tshark")
    require_tool("tcpdump")
    frames = varied_frames(300)
    times = [T0 + i * 1_234_567 for i in range(len(frames))]
    with NetNS("gnv") as ns, NetNS("gnw") as rcv:
        quiet(ns)
        quiet(rcv)
        ns.veth("g0", "g1", other=rcv)
        no_offloads(ns, "g0")
        no_offloads(rcv, "g1")
        ns.ip("addr", "add", "10.9.0.1/24", "dev", "g0")
        rcv.ip("addr", "add", "10.9.0.2/24", "dev", "g1")
        sink = rcv.call(lambda: _udp_sink(("10.9.0.2", 6081)))  # no ICMP unreachable back
        dump = Tcpdump(rcv, "g1", str(tmp_path / "g.pcap"), extra=("udp port 6081",))
        out = ns.call(lambda: open_output("geneve://10.9.0.2?vni=4242"))
        sent, nbytes, drops = out.send(FrameBatch.from_frames(frames, times))
        out.close()
        path = dump.stop()
        sink.close()
    assert (sent, nbytes, drops) == (300, sum(map(len, frames)), {})
    rows = _fields(tshark, path, ["geneve.vni", "geneve.flags.critical", "geneve.option.class",
                                  "geneve.option.type", "geneve.option.length",
                                  "geneve.option.unknown.data", "eth.type"])  # fmt: skip
    assert len(rows) == 300
    for row, ts in zip(rows, times, strict=True):
        vni, critical, cls, typ, length, data, etype = row
        assert int(vni, 0) == 4242 and critical in ("0", "False")
        # tshark shows the options' total length and the option's own (4 + 8 bytes), both 12
        assert int(cls, 0) == 0xFF01 and int(typ, 0) == 1 and length.split(",") == ["12", "12"]
        assert int(data.replace(":", ""), 16) == ts
        assert etype.split(",")[-1] == "0x88b5"  # the inner frame's EtherType
    # the inner frames are the frames sent, in order (tcpdump's bytes, past 14 + 20 + 8 + 20)
    assert [f[62:] for f in frames_of(path)] == frames


def test_linux_geneve_device_decapsulates_stamped_frames(tmp_path):
    require_root()
    require_tool("tcpdump")
    frames = sample_frames(40)
    with NetNS("gnd") as snd, NetNS("gnr") as rcv:
        quiet(snd)
        quiet(rcv)
        snd.veth("gd0", "gd1", other=rcv)
        snd.ip("addr", "add", "10.10.0.1/24", "dev", "gd0")
        rcv.ip("addr", "add", "10.10.0.2/24", "dev", "gd1")
        try:
            rcv.ip("link", "add", "gnv0", "type", "geneve", "id", "77", "remote", "10.10.0.1")
        except RuntimeError as exc:
            if "Unknown device type" in str(exc):
                pytest.skip("this kernel has no geneve device (CONFIG_GENEVE unset): no peer to test with")
            raise
        rcv.ip("link", "set", "gnv0", "up")
        dump = Tcpdump(rcv, "gnv0", str(tmp_path / "inner.pcap"))
        out = snd.call(lambda: open_output("geneve://10.10.0.2:6081?vni=77"))
        sent, _n, drops = out.send(FrameBatch.from_frames(frames, [T0] * len(frames)))
        out.close()
        path = dump.stop()
    assert sent == 40 and drops == {}
    assert frames_of(path) == frames


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("mac", [None, "02:aa:bb:cc:dd:ee"])
def test_iface_output_arista_headers_tshark_decodes(tmp_path, batched, mac):
    require_root()
    tshark = require_tool("tshark")
    require_tool("tcpdump")
    frames = varied_frames(120)
    times = [T0 + i * 987_654_321 for i in range(len(frames))]
    with NetNS("ari") as ns:
        quiet(ns)
        ns.veth("a0", "a1")
        no_offloads(ns, "a0")
        no_offloads(ns, "a1")
        dump = Tcpdump(ns, "a1", str(tmp_path / "a.pcap"))
        spec = "iface:a0" + (f"@{mac}" if mac else "") + "?ts=arista"
        out = ns.call(lambda: open_output(spec))
        if not batched:
            out._batched = None  # the per-frame fallback (libc without sendmmsg)
        sent, _n, drops = out.send(FrameBatch.from_frames(frames, times))
        out.close()
        path = dump.stop()
    assert sent == len(frames) and drops == {}
    rows = _fields(tshark, path, ["avsp.sub_type", "avsp.ver", "avsp.64sec", "avsp.64ns", "avsp.etype"])
    assert len(rows) == len(frames)
    for row, ts in zip(rows, times, strict=True):
        assert [int(x, 0) for x in row] == [1, 0x0110, ts // 10**9, ts % 10**9, 0x88B5]
    got = frames_of(path)
    expect = [(bytes.fromhex(mac.replace(":", "")) + f[6:]) if mac else f for f in frames]
    # the cell takes the headers out again and gets the times back
    batch = FrameBatch.from_frames(got, [0] * len(got))
    stripped, count = strip_arista(batch)
    assert count == len(frames)
    assert [stripped.frame(i) for i in range(len(stripped))] == expect
    assert stripped.ts_ns.tolist() == times
