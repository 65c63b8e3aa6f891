"""DiCAP mode: per-cell classic BPF socket filters in the kernel split a mirror exactly like the
numpy reference of the partition; the kernel is the oracle (real sockets on a veth)."""

from __future__ import annotations

import collections
import socket
import subprocess
import sys
import time

import numpy as np

from celltap.pcap import read_all
from celltap.pcap.batch import FrameBatch
from incubator.capture.afpacket import AfPacketCapture
from incubator.cells import CellSet
from incubator.dicap import bucket_owner_slots, cell_filter, dicap_buckets, dicap_owner_slots
from tests.conftest import require_root
from tests.incubator.live_helpers import NetNS, no_offloads, quiet

MEMBERS = {"a": 1, "b": 1, "c": 2}


def traffic(tmp_path) -> list[bytes]:
    frames = []
    for scenario, count in (("mixed", "60"), ("frag", "30"), ("small", "3000")):
        path = str(tmp_path / f"{scenario}.pcap")
        subprocess.run(
            [sys.executable, "-m", "celltap.cli", "loadgen", "pcap", scenario, path, "--count", count],
            check=True,
        )
        frames += [b.frame(i) for b in read_all(path) for i in range(len(b))]
    # Damaged and odd frames: short, truncated headers, non-IP.
    frames += [bytes(12) + b"\x08\x00" + b"\x45" * 10, bytes(12) + b"\x86\xdd" + bytes(30)]
    frames += [bytes(12) + b"\x08\x06" + bytes(28)]
    return frames


def test_partition_properties():
    """Both directions share a bucket; every fragment of a datagram goes with its first fragment."""
    from loadgen.packets import ethernet, ipv4, udp

    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    fwd = ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 1234, 53, b"x")))
    rev = ethernet(b"\x04" * 6, b"\x02" * 6, 0x0800, ipv4(b, a, 17, udp(b, a, 53, 1234, b"y")))
    f0 = ethernet(
        b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 1234, 53, b"z" * 16), more_fragments=True)
    )
    f1 = ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, b"q" * 16, frag_offset=24))
    bk = dicap_buckets(FrameBatch.from_frames([fwd, rev, f0, f1]))
    assert bk[0] == bk[1] and bk[2] == bk[3]
    owners = bucket_owner_slots(CellSet(MEMBERS), 10)
    share = np.bincount(owners, minlength=3) / owners.size
    assert abs(share[CellSet(MEMBERS).slot_of["c"]] - 0.5) < 0.08  # weight 2 of 4


def test_kernel_filters_split_the_mirror_like_the_reference(tmp_path):
    require_root()
    frames = traffic(tmp_path)
    with NetNS("dicap") as ns:
        quiet(ns)
        ns.veth("m0", "m1")
        no_offloads(ns, "m0")
        no_offloads(ns, "m1")
        caps = {
            cell: ns.call(
                lambda cell=cell: AfPacketCapture(
                    "m1", block_size=1 << 20, block_nr=8, bpf=cell_filter(MEMBERS, cell)
                )
            )
            for cell in MEMBERS
        }
        tx = ns.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
        tx.bind(("m0", 0))
        got: dict[str, list[bytes]] = {c: [] for c in MEMBERS}

        def drain() -> None:
            for cell, cap in caps.items():
                b = cap.read_batch()
                if b is not None:
                    got[cell] += [b.frame(i) for i in range(len(b))]
                    cap.release()

        # Read while sending, as a DiCAP cell does: ring blocks retire on a timer, so a ring
        # nobody reads fills up however few frames each block holds.
        for i, f in enumerate(frames):
            tx.send(f)
            if i % 100 == 99:
                drain()
        deadline = time.time() + 10
        while sum(map(len, got.values())) < len(frames) and time.time() < deadline:
            time.sleep(0.02)
            drain()
        time.sleep(0.2)
        stats = {}
        for cell, cap in caps.items():
            b = cap.read_batch()
            if b is not None:
                got[cell] += [b.frame(i) for i in range(len(b))]
            stats[cell] = cap.stats()
            cap.close()
        link = ns.run("ip", "-s", "link", "show", "m1").stdout
        tx.close()
    # Disjoint and complete: every frame reached exactly one cell.
    union = collections.Counter(f for fs in got.values() for f in fs)
    assert sum(union.values()) == len(frames), (stats, link, {c: len(v) for c, v in got.items()})
    assert union == collections.Counter(frames)
    # And each cell kept exactly the frames the numpy reference assigns to it.
    cells = CellSet(MEMBERS)
    for cell, fs in got.items():
        owners = dicap_owner_slots(FrameBatch.from_frames(fs), cells)
        bad = [fs[i][:20].hex() for i in np.flatnonzero(owners != cells.slot_of[cell])]
        assert not bad, (cell, bad[:5])
    sizes = {c: len(v) for c, v in got.items()}
    assert min(sizes.values()) > len(frames) / 8, sizes
