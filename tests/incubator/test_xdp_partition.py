"""The kernel's flow hash and bucket equal numpy's and the xxhash package's, frame by frame.

BPF_PROG_TEST_RUN runs the loaded XDP program on a frame we give it and returns the frame it
would send.  The table is written so that each bucket's slot carries 6 bits of the bucket number
and each slot's MAC rewrite writes the slot into the destination MAC: three passes read the
kernel's whole 16-bit bucket back for every frame (and check the packed table's byte layout, and
its updates of the changed elements only).  The expected bucket is the top
16 bits of XXH64 over the canonical key built here from the frame's own fields (xxhash package);
the numpy incubator path (`classify`) must give the same hash.  Random IPv4/IPv6, TCP/UDP/SCTP/
UDP-Lite/ICMP, VLAN/QinQ tags, IPv4 options and IPv6 extension headers.
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import xxhash
from celltap.incubator.cells import TABLE_BITS, CellSet
from celltap.incubator.classify import classify
from celltap.loadgen.packets import destination_options, ethernet, hop_by_hop, ipv4, ipv6, tcp, udp

from celltap.pcap.batch import FrameBatch
from tests.conftest import require_root, require_tool

XDP_TX, XDP_REDIRECT = 3, 4


def random_frame(rng: random.Random) -> tuple[bytes, bytes]:
    """(frame, canonical key bytes built from the fields we chose)."""
    v6 = rng.random() < 0.4
    alen = 16 if v6 else 4
    src, dst = rng.randbytes(alen), rng.randbytes(alen)
    if rng.random() < 0.1:
        dst = src  # equal addresses: the ports decide the order
    proto = rng.choice((6, 17, 132, 136, 1 if not v6 else 58))
    sport, dport = rng.randrange(65536), rng.randrange(65536)
    if proto in (17, 136) and dport in (4789, 6081):
        dport += 1  # tunnels go up to Python: not this test
    if proto == 6:
        l4 = tcp(src, dst, sport, dport, rng.randrange(1 << 32), 0, 0x10, rng.randbytes(rng.randrange(20)))
    elif proto == 17:
        l4 = udp(src, dst, sport, dport, rng.randbytes(rng.randrange(20)))
    elif proto in (132, 136):
        l4 = struct.pack("!HH", sport, dport) + rng.randbytes(12)
    else:
        l4 = bytes((8, 0)) + rng.randbytes(10)
        sport = dport = 0
    if v6:
        ext = rng.choice(
            [
                (),
                (hop_by_hop(),),
                (destination_options(rng.randrange(3)),),
                (hop_by_hop(), destination_options()),
            ]
        )
        l3 = ipv6(src, dst, proto, l4, ext=ext)
        et = 0x86DD
    else:
        opts = rng.choice([b"", b"\x01\x01\x01\x00", bytes((7, 7, 4)) + bytes(5)])
        l3 = ipv4(src, dst, proto, l4, options=opts)
        et = 0x0800
    tags = rng.choice([(), ((0x8100, rng.randrange(4096)),), ((0x88A8, 5), (0x8100, 7))])
    frame = ethernet(rng.randbytes(6), rng.randbytes(6), et, l3, tags=tags)
    a, b = (src, sport), (dst, dport)
    (a1, p1), (a2, p2) = sorted([a, b])
    key = bytes((6 if v6 else 4, proto)) + a1 + p1.to_bytes(2, "big") + a2 + p2.to_bytes(2, "big")
    return frame, key


@pytest.fixture(scope="module")
def program():
    require_root()
    require_tool("clang")
    from celltap.incubator.xdp.program import KernelConfig, PartitionProgram

    p = PartitionProgram(KernelConfig(seed=7, pin_flows=False), ("xdp_incubator",), TABLE_BITS)
    yield p
    p.close()


def kernel_buckets(p, frames: list[bytes]) -> list[int]:
    """The kernel's bucket of every frame, read back in passes of 6 bits (64 live slots: a packed
    table byte names slots 0-254, so 8 bits a pass would need slot 255)."""
    import socket

    from celltap.incubator.xdp.libbpf import test_run

    cells = CellSet({f"s{i:03d}": 1 for i in range(64)})  # 64 live slots
    slots = sorted(cells.alive_slots())
    lo = socket.if_nametoindex("lo")
    macs = {s: bytes((2, 0, 0, 0, 0, s)) for s in slots}
    fd = p.obj.prog_fd("xdp_incubator")
    out = [0] * len(frames)
    for shift in range(0, TABLE_BITS, 6):
        cells.table = ((np.arange(1 << TABLE_BITS) >> shift) & 0x3F).astype(np.int32)
        p._alive = set()
        p.set_cells(cells, {s: lo for s in slots}, macs)
        for i, f in enumerate(frames):
            ret, data, _ns = test_run(fd, f)
            assert ret == XDP_REDIRECT, (i, ret, f.hex())
            assert data[:5] == b"\x02\0\0\0\0"
            out[i] |= data[5] << shift
    return out


def test_kernel_bucket_equals_numpy_and_xxhash(program):
    rng = random.Random(1234)
    pairs = [random_frame(rng) for _ in range(3000)]
    frames = [f for f, _k in pairs]
    want = [xxhash.xxh64_intdigest(k, 7) >> (64 - TABLE_BITS) for _f, k in pairs]
    c = classify(FrameBatch.from_frames(frames), seed=7)
    assert (c.status == 0).all()
    numpy_b = (c.hashes >> np.uint64(64 - TABLE_BITS)).astype(np.int64).tolist()
    assert numpy_b == want
    assert kernel_buckets(program, frames) == want


def test_kernel_counts_what_it_passes_up_by_reason(program):
    """Crafted frames of each kind the kernel leaves to Python come back XDP_PASS, counted by reason."""
    from celltap.incubator.xdp.libbpf import test_run

    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    mac = b"\x02" * 12
    cases = {
        "undecodable": mac + b"\x08\x00" + b"\x45" * 10,
        "tunnel": ethernet(mac[:6], mac[6:], 0x0800, ipv4(a, b, 47, bytes(8))),
        "l2_other": ethernet(mac[:6], mac[6:], 0x8847, bytes(40)),
        "frag_before_first": ethernet(
            mac[:6], mac[6:], 0x0800, ipv4(a, b, 17, bytes(16), ident=9, frag_offset=8)
        ),
    }
    fd = program.obj.prog_fd("xdp_incubator")
    for reason, frame in cases.items():
        before = program.counters()
        ret, _data, _ns = test_run(fd, frame)
        after = program.counters()
        assert ret == 2, reason  # XDP_PASS
        changed = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert changed == {"rx": 1, "rx_bytes": len(frame), f"up_{reason}": 1}, (reason, changed)


def test_packed_table_names_slots_0_to_254_and_refuses_255(program):
    """A bucket's byte names slots 0-254 (the top one redirects), 0xFF is "no cell" (dropped,
    counted), and the control plane refuses a slot the byte cannot name with one clear error."""
    import socket

    from celltap.incubator.xdp.libbpf import test_run
    from celltap.incubator.xdp.program import SlotLimitError

    lo = socket.if_nametoindex("lo")
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    frame = ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 1000, 53, b"x")))
    fd = program.obj.prog_fd("xdp_incubator")
    cells = CellSet({f"s{i:03d}": 1 for i in range(255)})
    slots = cells.alive_slots()
    assert max(slots) == 254
    macs = {s: bytes((2, 0, 0, 0, 0, s)) for s in slots}
    cells.table = np.full(1 << TABLE_BITS, 254, np.int32)
    program._alive = set()
    program.set_cells(cells, {s: lo for s in slots}, macs)
    ret, data, _ns = test_run(fd, frame)
    assert (ret, data[:6]) == (XDP_REDIRECT, b"\x02\0\0\0\0\xfe")

    cells.table = np.full(1 << TABLE_BITS, -1, np.int32)
    program.set_cells(cells, {s: lo for s in slots}, macs)
    before = program.counters()
    ret, _data, _ns = test_run(fd, frame)
    after = program.counters()
    assert ret == 1  # XDP_DROP
    assert after["drop_no_cell"] - before["drop_no_cell"] == 1

    too_many = CellSet({f"s{i:03d}": 1 for i in range(256)})
    with pytest.raises(SlotLimitError, match="slot 255"):
        program.set_cells(too_many, {s: lo for s in too_many.alive_slots()})


def test_dicap_filter_hands_every_frame_up_once_a_slot_is_past_the_table(tmp_path, caplog):
    """A DiCAP cell's eBPF filter: while every slot fits the packed table, another cell's frame is
    not kept; once a 256th distinct cell joins, the control plane says so in one line and the filter
    hands every frame to the Python path (counted `up_slot_limit`), which has the whole table."""
    require_root()
    require_tool("clang")
    import logging

    from celltap.incubator.engine import CellSpec, Engine
    from celltap.incubator.metrics import IncubatorMetrics
    from celltap.incubator.separator import Separator
    from celltap.incubator.xdp.datapath import OTHER_CELL_SPEC, XdpPath, dicap_open
    from celltap.incubator.xdp.libbpf import test_run
    from celltap.incubator.xdp.program import KernelConfig
    from prometheus_client import CollectorRegistry

    engine = Engine(Separator(), IncubatorMetrics(CollectorRegistry()), open_fn=dicap_open(""))
    path = XdpPath("lo", KernelConfig(), engine, engine.metrics, "dicap_filter")
    try:
        engine.after_set_cells = lambda: path.apply("c000")

        def cells(n: int) -> dict[str, CellSpec]:
            own = CellSpec("c000", f"pcap:{tmp_path}/own.pcap")
            return {"c000": own} | {f"c{i:03d}": CellSpec(f"c{i:03d}", OTHER_CELL_SPEC) for i in range(1, n)}

        a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
        frames = [
            ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 1000 + i, 53, b"x")))
            for i in range(64)
        ]
        # BPF_PROG_TEST_RUN hands a socket filter the frame past an Ethernet header it strips (an
        # AF_PACKET socket's filter sees the MAC header): a throwaway header in front of each
        frames = [bytes(12) + b"\x08\x00" + f for f in frames]
        fd = path.prog_fd()
        engine.set_cells(cells(255))
        kept = sum(test_run(fd, f)[0] == len(f) - 14 for f in frames)
        c = path.prog.counters()
        assert kept < len(frames) and c["other_cell"] == len(frames) - kept, (kept, c)
        assert c["up_slot_limit"] == 0
        with caplog.at_level(logging.WARNING, logger="celltap.incubator"):
            engine.set_cells(cells(256))
            engine.set_cells(cells(256))  # said once
        lines = [r.getMessage() for r in caplog.records if "hands every frame" in r.getMessage()]
        assert len(lines) == 1 and "256 distinct cells" in lines[0], lines
        assert all(test_run(fd, f)[0] == len(f) - 14 for f in frames)
        assert path.prog.counters()["up_slot_limit"] == len(frames)
    finally:
        path.close()
