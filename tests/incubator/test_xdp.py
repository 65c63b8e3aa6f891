"""The XDP incubator on real veths: per-cell output equal to the offline numpy split, frame for
frame; what the kernel could not decide counted by reason; pins survive a membership change.

Topology (one namespace per test, unique names): tap -> tap-in (XDP attached by the incubator)
-> DEVMAP redirect -> cell-i -> cell-i-rx, where tcpdump writes what each cell got.  A veth only
takes XDP-redirected frames when its peer runs an XDP program, so the test attaches `xdp_pass` to
every cell-i-rx (as an operator does for veth cells).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys

import pytest

from celltap.pcap import read_all
from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import IncubatorProcess, NetNS, Tcpdump, conservation, quiet, sum_metric

CELLTAP = [sys.executable, "-m", "celltap.cli"]
CELLS = ("cell-0", "cell-1", "cell-2")


def frames_of(path: str) -> list[bytes]:
    return [b.frame(i) for b in read_all(path) for i in range(len(b))]


def links(ns: NetNS, names: list[str]) -> None:
    """Wire-like veths (no offloads); MTU 1600 (room for tags; XDP on veths needs < ~3.5 kB)."""
    for n in names:
        ns.run("ethtool", "-K", n, "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off")
        ns.ip("link", "set", n, "mtu", "1600")


def attach_pass(ns: NetNS, ifnames: list[str]):
    """xdp_pass on the cells' receiving ends (kept alive by the returned object)."""
    import socket

    from celltap.incubator.xdp.build import build_object
    from celltap.incubator.xdp.libbpf import BpfObject

    def go():
        obj = BpfObject(str(build_object()), programs=("xdp_pass",))
        for n in ifnames:
            obj.attach_xdp("xdp_pass", socket.if_nametoindex(n))
        return obj

    return ns.call(go)


def replay(ns: NetNS, pcap: str, ifname: str, pps: int = 20000) -> None:
    p = ns.run(*CELLTAP, "loadgen", "replay", pcap, ifname, "--pps", str(pps), timeout=120)
    assert p.returncode == 0, p.stderr


@pytest.fixture
def xdp_ns():
    require_root()
    for tool in ("tcpdump", "ethtool", "clang", "tshark"):
        require_tool(tool)
    with NetNS("xdp") as ns:
        quiet(ns)
        ns.veth("tap", "tap-in")
        for c in CELLS:
            ns.veth(c, f"{c}-rx")
        links(ns, ["tap", "tap-in", *CELLS, *(f"{c}-rx" for c in CELLS)])
        keep = attach_pass(ns, [f"{c}-rx" for c in CELLS])
        try:
            yield ns
        finally:
            keep.close()


def settled(inc: IncubatorProcess, n: int, timeout: float = 20) -> dict[str, float]:
    """Metrics once the incubator took in n frames and accounted for all of them (the kernel counts
    a frame it passes up before the Python path has handled it)."""
    import time

    m = inc.wait_received(n)
    deadline = time.time() + timeout
    while time.time() < deadline:
        received, accounted = conservation(m)
        if received == accounted:
            break
        time.sleep(0.3)
        m = inc.metrics()
    return m


def offline_split(pcap: str, out_dir, cells: int) -> tuple[dict[str, list[bytes]], dict]:
    p = subprocess.run(
        [*CELLTAP, "incubator", "--read", pcap, "--cells", str(cells), "--write-dir", str(out_dir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    split = {f"cell-{i}": frames_of(str(out_dir / f"cell-{i}.pcap")) for i in range(cells)}
    return split, json.loads(p.stdout)


def frag_before_first(pcap: str) -> int:
    """Non-first IP fragments sent before their datagram's first fragment, by tshark's decoding."""
    fields = [
        "ip.src",
        "ip.dst",
        "ip.proto",
        "ip.id",
        "ip.frag_offset",
        "ip.flags.mf",
        "ipv6.src",
        "ipv6.dst",
        "ipv6.fraghdr.ident",
        "ipv6.fraghdr.offset",
    ]
    cmd = ["tshark", "-r", pcap, "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    seen_first: set[tuple] = set()
    early = 0
    for line in out.splitlines():
        v = (line.split("\t") + [""] * len(fields))[: len(fields)]
        # innermost header wins when tunnels nest; take the last value of multi-valued fields
        v = [x.split(",")[-1] for x in v]
        if v[8]:  # IPv6 fragment header
            key, off = ("6", v[6], v[7], v[8]), int(v[9] or 0)
        elif v[0] and (v[5] in ("1", "True") or (v[4] and int(v[4]) > 0)):
            key, off = ("4", v[0], v[1], v[2], v[3]), int(v[4] or 0)
        else:
            continue
        if off == 0:
            seen_first.add(key)
        elif key not in seen_first:
            early += 1
    return early


def test_xdp_split_equals_offline_numpy_split(xdp_ns, tmp_path):
    from tests.incubator.test_dicap import traffic

    ns = xdp_ns
    sent = traffic(tmp_path, small=1500)
    pcap = str(tmp_path / "all.pcap")
    from celltap.pcap.writer import PcapWriter

    with PcapWriter(pcap) as w:
        for f in sent:
            w.write(0, f)
    want, summary = offline_split(pcap, tmp_path / "split", len(CELLS))
    cfg = {
        "mode": "mirror",
        "capture": "xdp:tap-in",
        "cells": [{"id": c, "output": f"iface:{c}"} for c in CELLS],
        "non_ip": "cell0",
        "metrics_port": 9471,
    }
    dumps = {c: Tcpdump(ns, f"{c}-rx", str(tmp_path / f"{c}.pcap")) for c in CELLS}
    inc = IncubatorProcess(ns, cfg, str(tmp_path))
    try:
        inc.wait_ready(len(CELLS))
        replay(ns, pcap, "tap", pps=10000)
        m = settled(inc, len(sent))
    finally:
        rc = inc.stop()
        files = {c: d.stop() for c, d in dumps.items()}
    log = open(inc.log.name, encoding="utf-8", errors="replace").read()
    assert rc == 0, log
    assert "Python incubator separates instead" not in log, log
    got = {c: frames_of(f) for c, f in files.items()}
    for c in CELLS:
        assert collections.Counter(got[c]) == collections.Counter(want[c]), (
            c,
            len(got[c]),
            len(want[c]),
            m,
        )
    # The kernel did the bulk of the work, and everything it passed up is counted by reason.
    passed = {
        k.split('reason="')[1].rstrip('"}'): v
        for k, v in m.items()
        if k.startswith("celltap_incubator_xdp_passed_frames_total")
    }
    assert sum(passed.values()) < len(sent) / 4, passed  # the kernel redirected the rest
    damaged = sum(summary["dropped"].values())
    assert passed.get("undecodable", 0) == damaged, (passed, summary)
    early = frag_before_first(pcap)
    assert early > 0  # the input really has fragments ahead of their first one
    assert passed.get("frag_before_first", 0) == early, passed
    received, accounted = conservation(m)
    assert received == len(sent) == accounted, m
    assert sum_metric(m, "celltap_incubator_out_frames_total") == sum(len(v) for v in want.values())


def test_dicap_cells_with_ebpf_filters_keep_exactly_the_incubators_choice(tmp_path):
    """Three `mode: dicap` processes see the whole mirror; each keeps (eBPF filter + Python for
    what the filter passes up) exactly the frames the central incubator's offline split gives it."""
    from tests.incubator.test_dicap import traffic

    require_root()
    for tool in ("ethtool", "clang"):
        require_tool(tool)
    sent = traffic(tmp_path, small=1500)
    pcap = str(tmp_path / "all.pcap")
    from celltap.pcap.writer import PcapWriter

    with PcapWriter(pcap) as w:
        for f in sent:
            w.write(0, f)
    want, _summary = offline_split(pcap, tmp_path / "split", len(CELLS))
    with NetNS("dcp") as ns:
        quiet(ns)
        ns.veth("m0", "m1")
        links(ns, ["m0", "m1"])
        procs = {}
        try:
            for i, c in enumerate(CELLS):
                d = tmp_path / c
                d.mkdir()
                cfg = {
                    "mode": "dicap",
                    "capture": "afpacket:m1",
                    "cells": [{"id": x, "output": f"iface:{x}-unused"} for x in CELLS],
                    "dicap": {"cell": c, "output": f"pcap:{d / 'mine.pcap'}"},
                    "metrics_port": 9472 + i,
                }
                procs[c] = IncubatorProcess(ns, cfg, str(d))
            for p in procs.values():
                p.wait_ready(len(CELLS))
            replay(ns, pcap, "m0", pps=10000)
            metrics = {c: settled(p, len(sent)) for c, p in procs.items()}
        finally:
            rcs = {c: p.stop() for c, p in procs.items()}
    assert set(rcs.values()) == {0}, rcs
    for c in CELLS:
        got = frames_of(str(tmp_path / c / "mine.pcap"))
        assert collections.Counter(got) == collections.Counter(want[c]), (c, len(got), len(want[c]))
        m = metrics[c]
        received, accounted = conservation(m)
        assert received == len(sent) == accounted, m
        # the kernel itself turned away most of the other cells' frames
        kernel_other = m.get('celltap_incubator_dropped_frames_total{reason="dicap_other_cell"}', 0)
        assert kernel_other > len(sent) / 3, m


def test_xdp_adding_a_cell_during_traffic_moves_no_live_flow(tmp_path):
    """Cells come from a registry; a fourth joins between the openings and the rest of 400 TCP
    connections: every frame of those stays on its first cell (kernel pins), while new connections
    follow the 4-cell table -- checked against DESIGN.md's rule recomputed with the xxhash package."""
    import time
    import uuid

    from celltap.incubator.cells import WEIGHT_SCALE

    from celltap.pcap.writer import PcapWriter
    from celltap.registry import Membership, open_registry
    from celltap.ring import Ring
    from tests.incubator.oracle import expected_owner
    from tests.incubator.test_membership import Conn

    require_root()
    require_tool("clang")
    cells4 = ("c0", "c1", "c2", "c3")
    url, cluster = f"file://{tmp_path}/reg", f"x{uuid.uuid4().hex[:8]}"
    reg = open_registry(url)
    members = Membership(reg, cluster, ttl=30.0, retry_initial=0.05)
    old = [Conn(i) for i in range(400)]
    new = [Conn(i) for i in range(1000, 1400)]

    def write(name: str, frames: list[bytes]) -> str:
        path = str(tmp_path / name)
        with PcapWriter(path) as w:
            for f in frames:
                w.write(0, f)
        return path

    phase1 = write("p1.pcap", [f for c in old for f in c.opening()])
    phase2 = write(
        "p2.pcap",
        [f for c in old for f in c.data() + c.closing()] + [f for c in new for f in c.opening() + c.data()],
    )
    with NetNS("xmb") as ns:
        quiet(ns)
        ns.veth("tap", "tap-in")
        for c in cells4:
            ns.veth(c, f"{c}-rx")
        links(ns, ["tap", "tap-in", *cells4, *(f"{c}-rx" for c in cells4)])
        keep = attach_pass(ns, [f"{c}-rx" for c in cells4])
        dumps = {c: Tcpdump(ns, f"{c}-rx", str(tmp_path / f"{c}.pcap")) for c in cells4}
        for c in cells4[:3]:
            members.register("cells", c, {"input": f"iface:{c}", "weight": 1})
        cfg = {
            "mode": "mirror",
            "capture": "xdp:tap-in",
            "registry": {"url": url, "cluster": cluster},
            "metrics_port": 9476,
        }
        inc = IncubatorProcess(ns, cfg, str(tmp_path))
        try:
            inc.wait_ready(3)
            replay(ns, phase1, "tap", pps=5000)
            inc.wait_received(3 * len(old))
            members.register("cells", "c3", {"input": "iface:c3", "weight": 1})
            inc.wait_ready(4, timeout=60)  # a registry poll away; slow only on a loaded machine
            time.sleep(0.3)
            replay(ns, phase2, "tap", pps=5000)
            m = inc.wait_received(3 * len(old) + 5 * len(old) + 5 * len(new))
        finally:
            rc = inc.stop()
            files = {c: d.stop() for c, d in dumps.items()}
            keep.close()
            members.close()
    assert rc == 0
    where = {f: c for c, p in files.items() for f in frames_of(p)}
    ring3 = Ring({c: WEIGHT_SCALE for c in cells4[:3]})
    ring4 = Ring({c: WEIGHT_SCALE for c in cells4})

    def owner(ring: Ring, c: Conn) -> str:
        return expected_owner(ring, 4, 6, ".".join(map(str, c.c)), c.sport, ".".join(map(str, c.s)), c.dport)

    moved_by_table = 0
    for c in old:
        want = owner(ring3, c)
        c.seq, c.ack = 1000, 5000
        for f in c.opening() + c.data() + c.closing():
            assert where.get(f) == want, (m, where.get(f), want)
        moved_by_table += owner(ring4, c) != want
    assert moved_by_table > 40  # without pins these would have moved to c3
    for c in new:
        c.seq, c.ack = 1000, 5000
        for f in c.opening() + c.data():
            assert where.get(f) == owner(ring4, c)
    assert sum_metric(m, "celltap_incubator_xdp_passed_frames_total") == 0, m


def _run_python_fallback(ns, tmp_path, cells: list[dict], metrics_port: int):
    """Replay 20 frames into an `xdp:` incubator over `cells` that must fall back to Python: (the
    capture, its fallback log lines, the whole log, the metrics once every frame was received)."""
    traffic = str(tmp_path / "in.pcap")
    subprocess.run([*CELLTAP, "loadgen", "pcap", "mixed", traffic, "--count", "20"], check=True)
    cfg = {"mode": "mirror", "capture": "xdp:tap-in", "cells": cells, "metrics_port": metrics_port}
    inc = IncubatorProcess(ns, cfg, str(tmp_path))
    try:
        inc.wait_ready(len(cells), timeout=60)
        replay(ns, traffic, "tap")
        m = inc.wait_received(len(frames_of(traffic)))
    finally:
        assert inc.stop() == 0
    log = open(inc.log.name, encoding="utf-8", errors="replace").read()
    lines = [ln for ln in log.splitlines() if "the Python incubator separates instead" in ln]
    return traffic, lines, log, m


def test_xdp_falls_back_to_the_python_incubator_with_one_log_line(xdp_ns, tmp_path):
    """A cell output XDP cannot redirect to (a pcap file) keeps the Python path, and says why once."""
    cells = [{"id": f"cell-{i}", "output": f"pcap:{tmp_path}/out-{i}.pcap"} for i in range(2)]
    traffic, lines, log, _ = _run_python_fallback(xdp_ns, tmp_path, cells, 9477)
    assert len(lines) == 1 and "is not an interface" in lines[0], log
    want, _ = offline_split(traffic, tmp_path / "split", 2)
    for i in range(2):
        got = frames_of(f"{tmp_path}/out-{i}.pcap")
        assert collections.Counter(got) == collections.Counter(want[f"cell-{i}"])


def test_xdp_more_cells_than_the_kernel_table_names_keeps_the_python_path(xdp_ns, tmp_path):
    """256 cells: the kernel's packed table names slots 0-254, so the incubator says so in one line
    and separates in Python (every frame accounted for), instead of failing at the 256th slot."""
    cells = [{"id": f"c{i:03d}", "output": f"iface:{CELLS[i % len(CELLS)]}"} for i in range(256)]
    traffic, lines, log, m = _run_python_fallback(xdp_ns, tmp_path, cells, 9487)
    assert len(lines) == 1 and "partition table names 255" in lines[0], log
    received, accounted = conservation(m)
    assert received >= len(frames_of(traffic)) and accounted == received, m
    assert sum_metric(m, "celltap_incubator_xdp_passed_frames_total") == 0, m


def test_xdp_inline_bridges_ping_and_tcp_and_separates_every_frame(tmp_path):
    """Inline: the kernel bridges both ways (DEVMAP broadcast, an egress program keeps the peer's
    copy and the cell's copy) while separating; ping and a 300 kB TCP echo cross, and every frame
    seen on host A's link reached exactly one cell, the one DESIGN.md's table names."""
    import time

    from celltap.incubator.cells import WEIGHT_SCALE

    from celltap.ring import Ring
    from tests.incubator.oracle import expected_owner, tshark_packets
    from tests.incubator.test_live_inline import CLIENT, SERVER

    require_root()
    for tool in ("tcpdump", "ethtool", "tshark", "ping", "clang"):
        require_tool(tool)
    cells = ("c0", "c1")
    with NetNS("xa") as a, NetNS("xb") as b, NetNS("xbr") as br:
        for ns in (a, b, br):
            quiet(ns)
        a.veth("a0", "ia", br)
        b.veth("b0", "ib", br)
        for c in cells:
            br.veth(c, f"{c}-rx")
        links(a, ["a0"])
        links(b, ["b0"])
        links(br, ["ia", "ib", *cells, *(f"{c}-rx" for c in cells)])
        a.ip("addr", "add", "10.9.0.1/24", "dev", "a0")
        b.ip("addr", "add", "10.9.0.2/24", "dev", "b0")
        keep = [attach_pass(a, ["a0"]), attach_pass(b, ["b0"]), attach_pass(br, [f"{c}-rx" for c in cells])]
        cfg = {
            "mode": "inline",
            "capture": "xdp:ia",
            "peer": "xdp:ib",
            "cells": [{"id": c, "output": f"iface:{c}"} for c in cells],
            "non_ip": "cell0",
            "metrics_port": 9478,
        }
        wire = Tcpdump(a, "a0", str(tmp_path / "a0.pcap"), direction_in=False)
        dumps = {c: Tcpdump(br, f"{c}-rx", str(tmp_path / f"{c}.pcap")) for c in cells}
        inc = IncubatorProcess(br, cfg, str(tmp_path))
        try:
            inc.wait_ready(len(cells))
            ping_ab = a.run("ping", "-c", "4", "-i", "0.2", "-W", "2", "10.9.0.2")
            ping_ba = b.run("ping", "-c", "4", "-i", "0.2", "-W", "2", "10.9.0.1")
            size = 300_000
            server = b.exec(sys.executable, "-c", SERVER, str(size), stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
            client = a.run(sys.executable, "-c", CLIENT, str(size))
            server.wait(timeout=20)
            time.sleep(1.5)
            m = inc.metrics()
        finally:
            rc = inc.stop()
            files = {c: d.stop() for c, d in dumps.items()}
            wire_path = wire.stop()
            for k in keep:
                k.close()
    log = open(inc.log.name, encoding="utf-8", errors="replace").read()
    assert "Python incubator separates instead" not in log, log
    assert ping_ab.returncode == 0, ping_ab.stdout + ping_ab.stderr
    assert ping_ba.returncode == 0, ping_ba.stdout + ping_ba.stderr
    assert client.stdout.strip() == "ok", client.stderr
    assert rc == 0, log
    crossed = collections.Counter(frames_of(wire_path))
    got = {c: frames_of(p) for c, p in files.items()}
    union = collections.Counter(f for fs in got.values() for f in fs)
    assert union == crossed
    assert sum(crossed.values()) > 60
    received, accounted = conservation(m)
    assert received == sum(crossed.values()) == accounted, m
    assert sum_metric(m, "celltap_incubator_bridged_frames_total") == sum(crossed.values()), m
    # every copy reached its target: the copies xdp_egress dropped on purpose (the other cells')
    # are not transmit failures
    assert sum_metric(m, "celltap_incubator_bridge_dropped_frames_total") == 0, m
    assert m.get('celltap_incubator_dropped_frames_total{reason="output_xdp_xmit"}', 0) == 0, m
    ring = Ring({c: WEIGHT_SCALE for c in cells})
    tshark = require_tool("tshark")
    for c, path in files.items():
        for p in tshark_packets(path, tshark):
            assert expected_owner(ring, p.l3, p.proto, p.src, p.sport, p.dst, p.dport) == c, p


def test_dicap_ebpf_cells_keep_live_flows_when_a_cell_joins(tmp_path):
    """Four `mode: dicap` processes watch the mirror from the start; the registry lists three cells,
    then a fourth (whose process was already filtering, so its kernel pins know the live flows).
    Together they keep every frame once; old connections stay whole on their first cell, new ones
    follow the 4-cell table -- as the central incubator does (DESIGN.md's rule, xxhash package)."""
    import time
    import uuid

    from celltap.incubator.cells import WEIGHT_SCALE

    from celltap.pcap.writer import PcapWriter
    from celltap.registry import Membership, open_registry
    from celltap.ring import Ring
    from tests.incubator.oracle import expected_owner
    from tests.incubator.test_membership import Conn

    require_root()
    require_tool("clang")
    cells4 = ("c0", "c1", "c2", "c3")
    url, cluster = f"file://{tmp_path}/reg", f"d{uuid.uuid4().hex[:8]}"
    members = Membership(open_registry(url), cluster, ttl=30.0, retry_initial=0.05)
    old = [Conn(i) for i in range(400)]
    new = [Conn(i) for i in range(1000, 1400)]

    def write(name: str, frames: list[bytes]) -> str:
        path = str(tmp_path / name)
        with PcapWriter(path) as w:
            for f in frames:
                w.write(0, f)
        return path

    phase1 = write("p1.pcap", [f for c in old for f in c.opening()])
    phase2 = write(
        "p2.pcap",
        [f for c in old for f in c.data() + c.closing()] + [f for c in new for f in c.opening() + c.data()],
    )
    for c in cells4[:3]:
        members.register("cells", c, {"input": f"iface:{c}-unused", "weight": 1})
    with NetNS("dpn") as ns:
        quiet(ns)
        ns.veth("m0", "m1")
        links(ns, ["m0", "m1"])
        procs = {}
        try:
            for i, c in enumerate(cells4):
                d = tmp_path / c
                d.mkdir()
                cfg = {
                    "mode": "dicap",
                    "capture": "afpacket:m1",
                    "registry": {"url": url, "cluster": cluster, "id": f"dicap-{c}"},
                    "dicap": {"cell": c, "output": f"pcap:{d / 'mine.pcap'}"},
                    "metrics_port": 9480 + i,
                }
                procs[c] = IncubatorProcess(ns, cfg, str(d))
            for p in procs.values():
                p.wait_ready(3)
            replay(ns, phase1, "m0", pps=5000)
            for p in procs.values():
                p.wait_received(3 * len(old))
            members.register("cells", "c3", {"input": "iface:c3-unused", "weight": 1})
            for p in procs.values():
                p.wait_ready(4, timeout=60)
            time.sleep(0.3)
            replay(ns, phase2, "m0", pps=5000)
            total = 3 * len(old) + 5 * len(old) + 5 * len(new)
            for p in procs.values():
                p.wait_received(total)
        finally:
            rcs = {c: p.stop() for c, p in procs.items()}
            members.close()
    assert set(rcs.values()) == {0}, rcs
    where: dict[bytes, list[str]] = collections.defaultdict(list)
    for c in cells4:
        for f in frames_of(str(tmp_path / c / "mine.pcap")):
            where[f].append(c)
    ring3 = Ring({c: WEIGHT_SCALE for c in cells4[:3]})
    ring4 = Ring({c: WEIGHT_SCALE for c in cells4})

    def owner(ring: Ring, c: Conn) -> str:
        return expected_owner(ring, 4, 6, ".".join(map(str, c.c)), c.sport, ".".join(map(str, c.s)), c.dport)

    moved = 0
    for c in old:
        want = owner(ring3, c)
        c.seq, c.ack = 1000, 5000
        for f in c.opening() + c.data() + c.closing():
            assert where.get(f) == [want], (where.get(f), want)
        moved += owner(ring4, c) != want
    assert moved > 40  # without pins these would have changed cell
    for c in new:
        c.seq, c.ack = 1000, 5000
        for f in c.opening() + c.data():
            assert where.get(f) == [owner(ring4, c)]


def test_xdp_transmit_failures_are_counted_not_lost(tmp_path):
    """A cell whose veth cannot take XDP frames (its peer runs no XDP program: the kernel refuses
    every frame redirected to it) is a real fault: each of its frames is counted as
    `dropped_frames_total{reason="output_xdp_redirect"}` (from the xdp_redirect_err tracepoint),
    the other cell still gets exactly its share, and conservation holds."""
    require_root()
    for tool in ("tcpdump", "ethtool", "clang"):
        require_tool(tool)
    traffic = str(tmp_path / "in.pcap")
    subprocess.run([*CELLTAP, "loadgen", "pcap", "small", traffic, "--count", "400"], check=True)
    sent = frames_of(traffic)
    want, _ = offline_split(traffic, tmp_path / "split", 2)
    with NetNS("xtx") as ns:
        quiet(ns)
        ns.veth("tap", "tap-in")
        for c in ("cell-0", "cell-1"):
            ns.veth(c, f"{c}-rx")
        links(ns, ["tap", "tap-in", "cell-0", "cell-1", "cell-0-rx", "cell-1-rx"])
        keep = attach_pass(ns, ["cell-0-rx"])  # cell-1-rx: none, so cell-1 refuses XDP frames
        cfg = {
            "mode": "mirror",
            "capture": "xdp:tap-in",
            "cells": [{"id": c, "output": f"iface:{c}"} for c in ("cell-0", "cell-1")],
            "metrics_port": 9485,
        }
        dump = Tcpdump(ns, "cell-0-rx", str(tmp_path / "cell-0.pcap"))
        inc = IncubatorProcess(ns, cfg, str(tmp_path))
        try:
            inc.wait_ready(2)
            replay(ns, traffic, "tap", pps=5000)
            m = inc.wait_received(len(sent))
            import time

            time.sleep(1.5)  # one more metrics sync after the last transmit attempt
            m = inc.metrics()
        finally:
            assert inc.stop() == 0
            got = frames_of(dump.stop())
            keep.close()
    assert collections.Counter(got) == collections.Counter(want["cell-0"])
    assert m.get('celltap_incubator_dropped_frames_total{reason="output_xdp_redirect"}') == len(
        want["cell-1"]
    ), m
    assert m.get('celltap_incubator_out_frames_total{cell="cell-1"}', 0) == 0, m
    received, accounted = conservation(m)
    assert received == len(sent) == accounted, m
