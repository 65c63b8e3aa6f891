"""DiCAP mode: per-cell classic BPF socket filters in the kernel split a mirror exactly like the
numpy reference of the partition, and exactly like the incubator's own `--partition dicap` split;
the kernel is the oracle (real sockets on a veth)."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from celltap.incubator.capture.afpacket import AfPacketCapture
from celltap.incubator.cells import CellSet
from celltap.incubator.dicap import (
    MAX_BUCKETS_LOG2,
    MAX_INSNS,
    bucket_owner_slots,
    cell_filter,
    dicap_buckets,
    dicap_owner_slots,
)

from celltap.decode import Reason, decode_batch
from celltap.pcap import read_all
from celltap.pcap.batch import FrameBatch
from celltap.pcap.writer import PcapWriter
from tests.conftest import require_root
from tests.incubator.live_helpers import NetNS, no_offloads, quiet

MEMBERS = {"a": 1, "b": 1, "c": 2}
CELLTAP = [sys.executable, "-m", "celltap.cli"]


def frames_of(path: str) -> list[bytes]:
    return [b.frame(i) for b in read_all(path) for i in range(len(b))]


def damaged_frames() -> list[bytes]:
    """Short, truncated, malformed and non-IP frames: the decoder drops some, the filter still
    routes every one of them."""
    from celltap.loadgen.packets import ethernet, ipv4, tcp, udp

    mac = b"\x02" * 6 + b"\x04" * 6
    a, b = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
    bad_doff = bytearray(
        ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 6, tcp(a, b, 4000, 80, 1, 0, 0x10)))
    )
    bad_doff[14 + 20 + 12] = 0x20  # TCP data offset 8 bytes
    short_l4 = bytearray(
        ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 5000, 53, b"q")))
    )
    short_l4[16:18] = (20 + 4).to_bytes(2, "big")  # IP length ends inside the UDP header
    bad_version = bytearray(
        ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 5001, 53, b"v")))
    )
    bad_version[14] = 0x65
    return [
        bytes(12) + b"\x08\x00" + b"\x45" * 10,  # IPv4 header cut short
        bytes(12) + b"\x86\xdd" + bytes(30),  # IPv6 header cut short
        bytes(12) + b"\x08\x06" + bytes(28),  # ARP
        mac + b"\x81\x00\x00\x0a\x08\x00" + b"\x45" * 12,  # tagged, IPv4 cut short
        mac + b"\x08\x00" + bytes.fromhex("4500001c0001000040110000") + bytes(2),  # no addresses
        bytes(bad_doff),
        bytes(short_l4),
        bytes(bad_version),
    ]


def traffic(tmp_path, small: int = 3000) -> list[bytes]:
    """loadgen mixed (VLAN, QinQ, IPv6 extension headers), frag (IPv4/IPv6 fragments out of
    order, duplicated, overlapping), ipv6, vlan and many small flows, plus damaged frames."""
    frames = []
    for scenario, count in (
        ("mixed", "60"),
        ("frag", "30"),
        ("ipv6", "12"),
        ("vlan", "12"),
        ("small", str(small)),
    ):
        path = str(tmp_path / f"{scenario}.pcap")
        subprocess.run([*CELLTAP, "loadgen", "pcap", scenario, path, "--count", count], check=True)
        frames += frames_of(path)
    return frames + damaged_frames()


def kernel_split(
    frames: list[bytes],
    members: dict[str, int],
    seed: int = 0,
    buckets_log2: int = 14,
    use_ports: bool = True,
) -> dict[str, list[bytes]]:
    """Send `frames` onto a veth; one AF_PACKET socket per cell with that cell's filter attached.

    Returns what each cell's socket received; asserts that together they received every frame once.
    """
    with NetNS("dicap") as ns:
        quiet(ns)
        ns.veth("m0", "m1")
        no_offloads(ns, "m0")
        no_offloads(ns, "m1")
        caps = {
            cell: ns.call(
                lambda cell=cell: AfPacketCapture(
                    "m1",
                    block_size=1 << 20,
                    block_nr=8,
                    bpf=cell_filter(members, cell, seed, buckets_log2, use_ports),
                )
            )
            for cell in members
        }
        tx = ns.call(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
        tx.bind(("m0", 0))
        got: dict[str, list[bytes]] = {c: [] for c in members}

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
    return got


def test_partition_properties():
    """Both directions share a bucket; every fragment of a datagram goes with its first fragment."""
    from celltap.loadgen.packets import ethernet, ipv4, udp

    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    fwd = ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 1234, 53, b"x")))
    rev = ethernet(b"\x04" * 6, b"\x02" * 6, 0x0800, ipv4(b, a, 17, udp(b, a, 53, 1234, b"y")))
    f0 = ethernet(
        b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, udp(a, b, 1234, 53, b"z" * 16), more_fragments=True)
    )
    f1 = ethernet(b"\x02" * 6, b"\x04" * 6, 0x0800, ipv4(a, b, 17, b"q" * 16, frag_offset=24))
    bk = dicap_buckets(FrameBatch.from_frames([fwd, rev, f0, f1]))
    assert bk[0] == bk[1] and bk[2] == bk[3]
    owners = bucket_owner_slots(CellSet(MEMBERS), 14)
    share = np.bincount(owners, minlength=3) / owners.size
    assert abs(share[CellSet(MEMBERS).slot_of["c"]] - 0.5) < 0.03  # weight 2 of 4


def test_filters_fit_the_kernel_instruction_limit_for_any_membership():
    """The bitmap search stays under BPF_MAXINSNS from the smallest to the largest bucket count and
    membership (the program grows with both; the largest pair is its worst case)."""
    for b in (1, 6, MAX_BUCKETS_LOG2):
        for n in (1, 5, 64):
            members = {f"c{i}": 1 + i % 3 for i in range(n)}
            for cell in list(members)[:3]:
                for ports in (True, False):
                    assert len(cell_filter(members, cell, 0, b, ports)) // 8 <= MAX_INSNS


@pytest.mark.parametrize(("buckets_log2", "use_ports", "seed"), [(14, True, 0), (10, False, 3), (3, True, 0)])
def test_kernel_filters_split_the_mirror_like_the_reference(tmp_path, buckets_log2, use_ports, seed):
    require_root()
    frames = traffic(tmp_path)
    got = kernel_split(frames, MEMBERS, seed, buckets_log2, use_ports)
    # Each cell kept exactly the frames the numpy reference assigns to it.
    cells = CellSet(MEMBERS, seed)
    for cell, fs in got.items():
        owners = dicap_owner_slots(FrameBatch.from_frames(fs), cells, buckets_log2, use_ports)
        bad = [fs[i][:20].hex() for i in np.flatnonzero(owners != cells.slot_of[cell])]
        assert not bad, (cell, bad[:5])
    sizes = {c: len(v) for c, v in got.items()}
    if buckets_log2 >= 10:
        assert min(sizes.values()) > len(frames) / 8, sizes


@pytest.mark.parametrize(("buckets_log2", "ports", "seed"), [(14, True, 0), (9, False, 5)])
def test_incubator_dicap_split_keeps_exactly_what_the_kernel_filters_keep(
    tmp_path, buckets_log2, ports, seed
):
    """`celltap incubator --partition dicap` writes, per cell, the very frames that cell's kernel
    filter accepts from the same mirror; the only difference is the frames the incubator drops as
    undecodable, each counted under its decode reason."""
    require_root()
    frames = traffic(tmp_path, small=1500)
    src = str(tmp_path / "in.pcap")
    with PcapWriter(src) as w:
        for i, f in enumerate(frames):
            w.write(1_700_000_000_000_000_000 + i * 1000, f)
    out = str(tmp_path / "split")
    n = 4
    p = subprocess.run(
        [
            *CELLTAP,
            "incubator",
            "--read",
            src,
            "--cells",
            str(n),
            "--write-dir",
            out,
            "--json",
            "--seed",
            str(seed),
            "--partition",
            "dicap",
            "--dicap-buckets-log2",
            str(buckets_log2),
            "--dicap-ports" if ports else "--no-dicap-ports",
        ],
        capture_output=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr.decode()
    summary = json.loads(p.stdout)
    wrote = {f"cell-{i}": frames_of(os.path.join(out, f"cell-{i}.pcap")) for i in range(n)}
    kept = kernel_split(frames, {f"cell-{i}": 1 for i in range(n)}, seed, buckets_log2, ports)

    # What the decoder rejects (the incubator's drop reasons), computed independently of the split.
    status = decode_batch(FrameBatch.from_frames(frames)).status
    undecodable = collections.Counter(
        f for f, s in zip(frames, status.tolist(), strict=True) if s not in (Reason.OK, Reason.NON_IP)
    )
    reasons = collections.Counter(
        Reason(s).label for s in status.tolist() if s not in (Reason.OK, Reason.NON_IP)
    )
    assert len(reasons) >= 4  # the damaged frames are in the mirror, several kinds
    assert summary["dropped"] == dict(reasons)
    assert summary["received"] == len(frames)
    assert summary["forwarded"] == len(frames) - sum(reasons.values())

    dropped_by_cell = collections.Counter()
    for cell in kept:
        k, w = collections.Counter(kept[cell]), collections.Counter(wrote[cell])
        assert not w - k, (cell, [f[:20].hex() for f in w - k][:5])  # nothing the filter would not keep
        missing = k - w  # kept by the filter, not written: must be undecodable frames only
        assert not missing - undecodable, (cell, [f[:20].hex() for f in missing - undecodable][:5])
        dropped_by_cell += missing
        assert summary["cells"][cell] == len(wrote[cell])
    assert dropped_by_cell == undecodable  # every drop accounted for, none silently lost
    assert min(len(v) for v in wrote.values()) > len(frames) / 8
