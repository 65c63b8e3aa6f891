"""The incubator's `partition: dicap` (sans-IO Separator): every frame goes where the DiCAP cells'
kernel filters send it -- the numpy reference `dicap_owner_slots`, which test_dicap.py holds equal
to the kernel -- fragments at once by their own bucket, live flows pinned across membership
changes.  With the default xxh64 partition the choice is a different one."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys

import numpy as np
import pytest
import yaml
from celltap.incubator.cells import CellSet
from celltap.incubator.classify import classify
from celltap.incubator.dicap import bucket_owner_slots, dicap_buckets, dicap_owner_slots
from celltap.incubator.separator import ALL, DROP, HELD, Separator
from celltap.loadgen.fragment import ipv4_fragments, ipv6_fragments
from celltap.loadgen.packets import ACK, PSH, SYN, ethernet, hop_by_hop, ipv4, ipv6, tcp, udp

from celltap.decode import Reason, decode_batch
from celltap.pcap import read_all
from celltap.pcap.batch import LINKTYPE_RAW, FrameBatch
from celltap.pcap.writer import PcapWriter
from tests.incubator.test_dicap import traffic

MEMBERS = {"a": 1, "b": 1, "c": 1}
MAC_A, MAC_B = b"\x02" * 6, b"\x04" * 6


def reference(frames: list[bytes], members: dict[str, int], seed: int = 0, ports: bool = True) -> np.ndarray:
    """Cell slot of each frame as the DiCAP kernel filters decide (slots of CellSet(members))."""
    return dicap_owner_slots(FrameBatch.from_frames(frames), CellSet(members, seed), 14, ports)


def route_each(sep: Separator, frames: list[bytes], first_ts: int = 1) -> list[int]:
    """Route frames one batch per frame; the slots in order."""
    out = []
    for i, f in enumerate(frames):
        out += sep.route(FrameBatch.from_frames([f], [first_ts + i])).slots.tolist()
    return out


def datagram(l3: int, sport: int) -> tuple[list[bytes], bytes, bytes]:
    """(4 fragments of one UDP datagram, an unfragmented packet of its flow, the reply)."""
    if l3 == 4:
        a, b = bytes([10, 3, 0, 1]), bytes([10, 3, 0, 2])
        big = udp(a, b, sport, 7, bytes(range(200)))
        frags = [
            ethernet(MAC_A, MAC_B, 0x0800, p)
            for p in ipv4_fragments(a, b, 17, big, 77, [(0, 64), (64, 128), (128, 192), (192, len(big))])
        ]
        fwd = ethernet(MAC_A, MAC_B, 0x0800, ipv4(a, b, 17, udp(a, b, sport, 7, b"hi")))
        rev = ethernet(MAC_B, MAC_A, 0x0800, ipv4(b, a, 17, udp(b, a, 7, sport, b"ho")))
        return frags, fwd, rev
    a, b = (
        bytes.fromhex("20010db8000000000000000000000001"),
        bytes.fromhex("20010db8000000000000000000000002"),
    )
    big = udp(a, b, sport, 7, bytes(range(200)))
    frags = [
        ethernet(MAC_A, MAC_B, 0x86DD, p)
        for p in ipv6_fragments(a, b, 17, big, 99, [(0, 64), (64, 128), (128, 192), (192, len(big))])
    ]
    fwd = ethernet(MAC_A, MAC_B, 0x86DD, ipv6(a, b, 17, udp(a, b, sport, 7, b"hi")))
    rev = ethernet(MAC_B, MAC_A, 0x86DD, ipv6(b, a, 17, udp(b, a, 7, sport, b"ho")))
    return frags, fwd, rev


@pytest.mark.parametrize("ports", [True, False])
@pytest.mark.parametrize("l3", [4, 6])
def test_fragments_in_any_order_land_where_the_filter_sends_them(l3, ports):
    # A flow whose fragments hash to another cell than its unfragmented packets (with ports): the
    # xxh64 partition would keep them together, the filter does not, and we must do as the filter.
    sport = next(
        p
        for p in range(1000, 2000)
        if len(set(reference([datagram(l3, p)[0][0], datagram(l3, p)[1]], MEMBERS).tolist())) == 2
    )
    frags, fwd, rev = datagram(l3, sport)
    for perm in itertools.permutations(range(len(frags))):
        frames = [frags[i] for i in perm] + [fwd, rev]
        want = reference(frames, MEMBERS, ports=ports).tolist()
        assert len(set(want[:4])) == 1  # a datagram is never split
        assert want[4] == want[5]  # both directions together
        if not ports:
            assert len(set(want)) == 1  # addresses only: fragments stay with their flow
        else:
            assert want[0] != want[4]
        sep = Separator(MEMBERS, partition="dicap", use_ports=ports)
        r = sep.route(FrameBatch.from_frames(frames, list(range(1, 7))))
        assert r.slots.tolist() == want and r.drops == {} and r.released == []
        # One frame per batch: fragments before their first fragment are routed at once, never held.
        each = route_each(Separator(MEMBERS, partition="dicap", use_ports=ports), frames)
        assert each == want and HELD not in each


def split_flows() -> list[bytes]:
    """Frames of one flow that the filter puts into different buckets: an IPv6 extension header
    hides the ports from it; a QinQ stack the kernel does not untag hides the IP header."""
    out = []
    a, b = (
        bytes.fromhex("20010db8000000000000000000000011"),
        bytes.fromhex("20010db8000000000000000000000022"),
    )
    for sport in range(3000, 3040):
        u = udp(a, b, sport, 53, b"q")
        out.append(ethernet(MAC_A, MAC_B, 0x86DD, ipv6(a, b, 17, u)))
        out.append(ethernet(MAC_A, MAC_B, 0x86DD, ipv6(a, b, 17, u, ext=(hop_by_hop(),))))
    c, d = bytes([10, 8, 0, 1]), bytes([10, 8, 0, 2])
    for sport in range(4000, 4040):
        p = ipv4(c, d, 17, udp(c, d, sport, 53, b"q"))
        out.append(ethernet(MAC_A, MAC_B, 0x0800, p, tags=((0x8100, 10),)))
        out.append(ethernet(MAC_A, MAC_B, 0x0800, p, tags=((0x9100, 20), (0x8100, 10))))
    return out


def test_every_frame_gets_the_filters_choice_with_pins(tmp_path):
    """Live routing (pins on) over loadgen traffic: each frame on the cell of its bucket's owner."""
    frames = traffic(tmp_path, small=600)
    pairs = split_flows()
    b = FrameBatch.from_frames(pairs)
    c = classify(b)
    bk = dicap_buckets(b)
    assert (c.hashes[0::2] == c.hashes[1::2]).all()  # one flow per pair, as the incubator sees it ...
    assert (bk[0::2] != bk[1::2]).all()  # ... in two buckets, as the filter sees it
    owners = bucket_owner_slots(CellSet(MEMBERS), 14)[bk]
    assert (owners[0::2] != owners[1::2]).sum() > 20  # pins by flow alone would get these wrong
    frames += pairs
    rng = random.Random(5)
    order = list(range(len(frames)))
    rng.shuffle(order)  # flows interleaved, fragments out of order
    frames = [frames[i] for i in order]
    want = reference(frames, MEMBERS)
    status = decode_batch(FrameBatch.from_frames(frames)).status
    sep = Separator(MEMBERS, partition="dicap")
    got = np.concatenate(
        [
            sep.route(FrameBatch.from_frames(frames[i : i + 50], list(range(i + 1, i + 51)))).slots
            for i in range(0, len(frames), 50)
        ]
    )[: len(frames)]
    routed = (status == Reason.OK) | (status == Reason.NON_IP)
    assert (got[routed] == want[routed]).all(), np.flatnonzero(got[routed] != want[routed])[:5]
    assert (got[~routed] == DROP).all() and (~routed).sum() >= 4
    assert len(sep.table) > 100 and sep.frags.waiting_frames == 0


def tcp_segment(i: int, from_client: bool, flags: int) -> bytes:
    c, s = bytes([10, 1, i >> 8, i & 255]), bytes([10, 2, 0, 1 + i % 5])
    if from_client:
        return ethernet(MAC_A, MAC_B, 0x0800, ipv4(c, s, 6, tcp(c, s, 20000 + i, 80, 1, 0, flags)))
    return ethernet(MAC_B, MAC_A, 0x0800, ipv4(s, c, 6, tcp(s, c, 80, 20000 + i, 1, 2, flags)))


def owner_ids(frames: list[bytes], members: dict[str, int]) -> np.ndarray:
    """Cell id of each frame as the DiCAP kernel filters of `members` decide."""
    return np.asarray(CellSet(members).ids)[reference(frames, members)]


def test_membership_change_keeps_live_flows_new_flows_follow_the_filter():
    """Between membership changes the choice is the filter's; after one, live flows stay pinned
    (DiCAP cells re-filter at once, so these are the documented difference) until they end."""
    two, three, ac = {"a": 1, "b": 1}, {"a": 1, "b": 1, "c": 1}, {"a": 1, "c": 1}
    sep = Separator(two, partition="dicap")

    def route(frames: list[bytes], ts: int) -> np.ndarray:
        slots = sep.route(FrameBatch.from_frames(frames, [ts] * len(frames))).slots
        return np.asarray(sep.cells.ids)[slots]

    old = [tcp_segment(i, True, SYN) for i in range(300)]
    first = route(old, 1)
    assert (first == owner_ids(old, two)).all()
    sep.set_cells(three)
    later = [tcp_segment(i, False, SYN | ACK) for i in range(300)]
    assert (route(later, 2) == first).all()  # pinned: not one live flow moved
    assert (owner_ids(later, three) != first).sum() > 50  # ... though the new filters move these
    new = [tcp_segment(i, True, SYN) for i in range(300, 600)]
    new_at = route(new, 3)
    assert (new_at == owner_ids(new, three)).all()
    # b leaves: its flows re-home to the filter's choice for the new membership, the rest stay.
    _joined, _left, rehomed = sep.set_cells(ac)
    assert rehomed == (first == "b").sum() + (new_at == "b").sum() > 0
    data = [tcp_segment(i, True, PSH | ACK) for i in range(300)]
    now = route(data, 4)
    gone = first == "b"
    assert (now[gone] == owner_ids(data, ac)[gone]).all()
    assert (now[~gone] == first[~gone]).all()


def random_udp_flows(n: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    frames = []
    for _ in range(n):
        a = bytes([10, rng.randrange(256), rng.randrange(256), rng.randrange(1, 255)])
        b = bytes([192, 168, rng.randrange(256), rng.randrange(1, 255)])
        sp, dp = rng.randrange(1024, 65535), rng.choice([53, 80, 443, rng.randrange(1024, 65535)])
        frames.append(ethernet(MAC_A, MAC_B, 0x0800, ipv4(a, b, 17, udp(a, b, sp, dp, b"x"))))
    return frames


def test_dicap_shares_are_balanced_and_differ_from_the_xxh64_choice():
    """12 000 flows over 4 cells: DiCAP shares within 10 % (16384 buckets), and the default xxh64
    partition puts most flows on another cell than the DiCAP filters would."""
    members = {f"cell-{i}": 1 for i in range(4)}
    batch = FrameBatch.from_frames(random_udp_flows(12000))
    dicap = Separator(members, pin_flows=False, partition="dicap").route(batch).slots
    xxh = Separator(members, pin_flows=False).route(batch).slots
    for slots in (dicap, xxh):
        counts = np.bincount(slots, minlength=4)
        assert counts.max() / counts.min() <= 1.10, counts
    assert dicap.tolist() == reference([batch.frame(i) for i in range(len(batch))], members).tolist()
    assert (dicap != xxh).mean() > 0.6  # independent choices: about 3 in 4 differ


def test_non_ip_frames_follow_bucket_zero_like_the_filter():
    arp = b"\xff" * 6 + MAC_A + b"\x08\x06" + bytes.fromhex("0001080006040001") + bytes(20)
    lldp = bytes.fromhex("0180c200000e") + MAC_A + b"\x88\xcc" + bytes(30)
    # A membership where bucket 0's owner is not the first cell by id (the xxh64 partition's cell 0).
    members = next(
        m
        for m in ({f"c{i}": 1 for i in range(k)} for k in range(2, 10))
        if bucket_owner_slots(CellSet(m), 14)[0] != CellSet(m).first_slot()
    )
    cells = CellSet(members)
    b0 = int(bucket_owner_slots(cells, 14)[0])
    frames = FrameBatch.from_frames([arp, lldp])
    assert Separator(members, partition="dicap").route(frames).slots.tolist() == [b0, b0]
    assert reference([arp, lldp], members).tolist() == [b0, b0]
    assert Separator(members, partition="dicap", nonip_policy="all").route(frames).slots.tolist() == [
        ALL,
        ALL,
    ]
    r = Separator(members, partition="dicap", nonip_policy="bridge").route(frames)
    assert r.slots.tolist() == [DROP, DROP] and r.drops == {"non_ip_policy": 2}


def test_dicap_partition_needs_ethernet_frames_and_counts_others():
    raw = FrameBatch.from_frames([bytes(40)], linktype=LINKTYPE_RAW)
    r = Separator(MEMBERS, partition="dicap").route(raw)
    assert r.slots.tolist() == [DROP] and r.drops == {"not_ethernet": 1}
    with pytest.raises(ValueError, match="partition"):
        Separator(MEMBERS, partition="ring")
    with pytest.raises(ValueError, match="buckets_log2"):
        Separator(MEMBERS, partition="dicap", buckets_log2=15)


def test_live_config_and_offline_split_make_the_same_dicap_choice(tmp_path):
    """`partition: dicap` with its `dicap:` parameters in a live config (pcap source, pins on) and
    `--partition dicap` offline write the same frames, in order, to every cell: the reference's."""
    frames = traffic(tmp_path, small=300)
    src = str(tmp_path / "in.pcap")
    with PcapWriter(src) as w:
        for i, f in enumerate(frames):
            w.write(1_700_000_000_000_000_000 + i * 1000, f)
    cli = [sys.executable, "-m", "celltap.cli", "incubator"]
    ids = [f"cell-{i}" for i in range(3)]
    cfg = {
        "capture": f"pcap:{src}",
        "cells": [{"id": c, "output": f"pcap:{tmp_path}/live/{c}.pcap"} for c in ids],
        "partition": "dicap",
        "hash_seed": 9,
        "dicap": {"buckets_log2": 8, "ports": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run(
        [*cli, "--config", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0 and "conservation ok" in p.stderr, p.stderr
    off = str(tmp_path / "off")
    args = ["--read", src, "--cells", "3", "--write-dir", off, "--seed", "9", "--partition", "dicap"]
    p = subprocess.run(
        [*cli, *args, "--dicap-buckets-log2", "8", "--no-dicap-ports"], capture_output=True, timeout=120
    )
    assert p.returncode == 0, p.stderr

    def cell_frames(path: str) -> list[bytes]:
        return [b.frame(i) for b in read_all(path) for i in range(len(b))]

    cells = CellSet(dict.fromkeys(ids, 1), 9)
    want = dicap_owner_slots(FrameBatch.from_frames(frames), cells, 8, False)
    ok = np.isin(decode_batch(FrameBatch.from_frames(frames)).status, (Reason.OK, Reason.NON_IP))
    for c in ids:
        live = cell_frames(f"{tmp_path}/live/{c}.pcap")
        assert live == cell_frames(f"{off}/{c}.pcap")
        assert live == [f for f, s, k in zip(frames, want, ok, strict=True) if k and s == cells.slot_of[c]]
