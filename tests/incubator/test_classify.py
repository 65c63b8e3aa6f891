"""The fast lane must hash exactly like the shared decoder + flow key, on any bytes."""

from __future__ import annotations

import numpy as np
import xxhash
from celltap.incubator.classify import classify, xxh64_key14
from hypothesis import given, settings
from hypothesis import strategies as st

from celltap.decode import Reason, decode_batch
from celltap.flowkey import flow_hashes
from celltap.pcap.batch import FrameBatch


def reference(batch: FrameBatch) -> tuple[np.ndarray, np.ndarray]:
    d = decode_batch(batch)
    h = flow_hashes(d.l3, d.l4, d.src, d.sport, d.dst, d.dport)
    ok = d.status == Reason.OK
    h[~ok] = 0
    h[ok & d.is_frag & (d.frag_off != 0)] = 0
    return d.status, h


def v4_frame(rng: np.random.Generator) -> bytes:
    proto = int(rng.choice([6, 17, 1, 132]))
    l4 = bytes(rng.integers(0, 256, 20, dtype=np.uint8))
    if proto == 6:
        l4 = l4[:12] + bytes([int(rng.choice([0x50, 0x40, 0x60, 0xF0]))]) + l4[13:]
    total = 20 + len(l4)
    frag = int(rng.choice([0, 0, 0x4000, 0x2000, 0x0010]))
    ihl = int(rng.choice([0x45, 0x45, 0x46]))
    ip = (
        bytes([ihl, 0])
        + total.to_bytes(2, "big")
        + b"\x00\x01"
        + frag.to_bytes(2, "big")
        + bytes([64, proto, 0, 0])
    )
    ip += bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    et = int(rng.choice([0x0800, 0x0800, 0x86DD, 0x8100]))
    frame = bytes(12) + et.to_bytes(2, "big") + ip + l4 + bytes(int(rng.integers(0, 8)))
    cut = int(rng.choice([len(frame), len(frame), int(rng.integers(10, len(frame) + 1))]))
    return frame[:cut]


def test_fast_lane_equals_decoder_on_random_frames():
    rng = np.random.default_rng(7)
    frames = [v4_frame(rng) for _ in range(20000)]
    batch = FrameBatch.from_frames(frames)
    c = classify(batch)
    status, h = reference(batch)
    assert (c.hashes == h).all()
    assert (c.status == status).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=40), st.integers(0, 2**64 - 1))
def test_fast_lane_equals_decoder_on_arbitrary_bytes(payloads, seed):
    # Give most frames a plausible Ethernet/IPv4/TCP-or-UDP prefix so the fast lane is exercised.
    base = bytes.fromhex("020000000001020000000002" + "0800" + "4500003c0001000040060000")
    frames = [base + p if i % 3 else p for i, p in enumerate(payloads)]
    batch = FrameBatch.from_frames(frames)
    c = classify(batch, seed % (2**63))
    d = decode_batch(batch)
    h = flow_hashes(d.l3, d.l4, d.src, d.sport, d.dst, d.dport, seed % (2**63))
    ok = (d.status == Reason.OK) & ~(d.is_frag & (d.frag_off != 0))
    assert (c.hashes[ok] == h[ok]).all()
    assert (c.hashes[~ok] == 0).all()


def test_key14_matches_xxhash_package():
    rng = np.random.default_rng(1)
    n = 2000
    proto = rng.integers(0, 256, n).astype(np.uint64)
    a = rng.integers(0, 2**48, n, dtype=np.uint64)
    b = rng.integers(0, 2**48, n, dtype=np.uint64)
    for seed in (0, 12345):
        got = xxh64_key14(proto, a, b, seed)
        for i in range(0, n, 97):
            key = bytes([4, int(proto[i])]) + int(a[i]).to_bytes(6, "big") + int(b[i]).to_bytes(6, "big")
            assert int(got[i]) == xxhash.xxh64_intdigest(key, seed)


def test_tunnels_hash_by_their_inner_flow():
    """VXLAN, GRE and Geneve (crafted) go by the inner flow; with decapsulation off by the outer one."""
    from celltap.decode import DecodeOptions
    from tests.core import frames as fr

    inner = fr.ipv4("192.168.1.1", "192.168.2.2", 6, fr.tcp(41000, 8080, data=b"x"))
    frames = [
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 17, fr.vxlan(fr.ether_inner(inner), sport=50000))),
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 47, fr.gre(inner, 0x0800))),
        fr.eth(fr.ipv4("10.1.0.1", "10.1.0.2", 17, fr.geneve(fr.ether_inner(inner), sport=50001))),
    ]
    batch = FrameBatch.from_frames(frames)

    def h(l4: int, src: bytes, sport: int, dst: bytes, dport: int) -> int:
        pad = np.zeros((1, 16), np.uint8)
        s, d = pad.copy(), pad.copy()
        s[0, :4], d[0, :4] = list(src), list(dst)
        one = np.ones(1, np.uint8)
        return int(flow_hashes(one * 4, one * l4, s, np.array([sport]), d, np.array([dport]), 9)[0])

    want_inner = h(6, bytes([192, 168, 1, 1]), 41000, bytes([192, 168, 2, 2]), 8080)
    assert classify(batch, 9).hashes.tolist() == [want_inner] * 3
    outer = classify(batch, 9, DecodeOptions(decapsulate=False)).hashes.tolist()
    a, b = bytes([10, 1, 0, 1]), bytes([10, 1, 0, 2])
    assert outer == [h(17, a, 50000, b, 4789), h(47, a, 0, b, 0), h(17, a, 50001, b, 6081)]
