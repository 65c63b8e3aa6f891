"""Fragment tracking through the separator: any arrival order, duplicates, bounded waiting room,
expiry and overflow counted by reason."""

from __future__ import annotations

import random

import numpy as np
from celltap.incubator.fragments import (
    DATAGRAM_OVERHEAD,
    EXPIRED,
    FRAME_OVERHEAD,
    OVERFLOW_BYTES,
    OVERFLOW_DATAGRAMS,
    FragmentTracker,
)
from celltap.incubator.separator import HELD, Separator
from celltap.loadgen.packets import ethernet, fragment_header, ipv4, ipv6, udp

from celltap.pcap.batch import FrameBatch
from tests.memory_probe import kept_bytes

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6, B6 = bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002")
MAC = b"\x02" * 6 + b"\x04" * 6
S = 1_000_000_000


def v4_fragments(ident: int, sport: int, size: int = 3000) -> list[bytes]:
    dgram = udp(A4, B4, sport, 53, bytes(size))
    out = []
    for off in range(0, len(dgram), 1480):
        piece = dgram[off : off + 1480]
        more = off + 1480 < len(dgram)
        out.append(
            MAC + b"\x08\x00" + ipv4(A4, B4, 17, piece, ident=ident, more_fragments=more, frag_offset=off)
        )
    return out


def v6_fragments(ident: int, sport: int, size: int = 3000) -> list[bytes]:
    dgram = udp(A6, B6, sport, 53, bytes(size))
    out = []
    for off in range(0, len(dgram), 1448):
        piece = dgram[off : off + 1448]
        fh = fragment_header(ident, off, off + 1448 < len(dgram))
        out.append(ethernet(b"\x02" * 6, b"\x04" * 6, 0x86DD, ipv6(A6, B6, 17, piece, ext=[fh])))
    return out


def test_any_order_and_duplicates_land_on_the_flows_cell():
    rng = random.Random(2)
    sep = Separator({"a": 1, "b": 1, "c": 1})
    frames, flow_of = [], []
    for i in range(200):
        fr = v4_fragments(i, 40000 + i) if i % 2 else v6_fragments(i, 40000 + i)
        fr += [fr[1]]  # a duplicate
        rng.shuffle(fr)
        frames += fr
        flow_of += [i] * len(fr)
    # Whole (unfragmented) packets of each flow tell us the flow's cell.
    whole = [
        MAC + b"\x08\x00" + ipv4(A4, B4, 17, udp(A4, B4, 40000 + i, 53, b"x"))
        if i % 2
        else ethernet(b"\x02" * 6, b"\x04" * 6, 0x86DD, ipv6(A6, B6, 17, udp(A6, B6, 40000 + i, 53, b"x")))
        for i in range(200)
    ]
    flow_cell = sep.route(FrameBatch.from_frames(whole, [0] * 200)).slots
    cell_of_frame: dict[int, int] = {}
    pos = 0
    for chunk in range(0, len(frames), 97):  # batches cut across datagrams
        part = frames[chunk : chunk + 97]
        r = sep.route(FrameBatch.from_frames(part, list(range(chunk, chunk + len(part)))))
        for j, slot in enumerate(r.slots.tolist()):
            if slot != HELD:
                cell_of_frame[pos + j] = slot
        for rel in r.released:
            for ts, _frame in rel.frames:
                cell_of_frame[ts] = rel.slot
        assert r.drops == {}
        pos += len(part)
    assert len(cell_of_frame) == len(frames)
    for k, i in enumerate(flow_of):
        assert cell_of_frame[k] == flow_cell[i], (k, i)
    assert sep.frags.waiting_frames == 0


def test_waiting_fragments_expire_and_are_counted():
    sep = Separator({"a": 1}, fragments=FragmentTracker(timeout_s=5))
    later = v4_fragments(7, 1234)[1:]
    r = sep.route(FrameBatch.from_frames(later, [0, 0]))
    assert (r.slots == HELD).all()
    r = sep.route(FrameBatch.from_frames(v4_fragments(8, 1235)[:1], [6 * S]))
    assert r.drops == {EXPIRED: 2}
    assert sep.frags.waiting_frames == 0


def test_waiting_room_overflow_is_counted_by_reason():
    # Later fragments are 1514 + 82 bytes per datagram; max_bytes is real memory: the room holds the
    # first datagram's two and the second's 1514-byte one, not its 82-byte one
    held = 2 * DATAGRAM_OVERHEAD + 1514 + 82 + 1514 + 3 * FRAME_OVERHEAD
    tr = FragmentTracker(max_bytes=held + 81 + FRAME_OVERHEAD, max_datagrams=2)
    sep = Separator({"a": 1}, fragments=tr)
    later = [f for i in range(3) for f in v4_fragments(100 + i, 2000 + i)[1:]]
    r = sep.route(FrameBatch.from_frames(later, [0] * len(later)))
    assert r.drops == {OVERFLOW_BYTES: 1, OVERFLOW_DATAGRAMS: 2}
    assert int((r.slots == HELD).sum()) == 3
    assert tr.waiting_bytes == 1514 + 82 + 1514 and tr.waiting_mem == held
    end = sep.flush()
    assert end.drops == {EXPIRED: 3}


def test_fragment_counters_keep_conservation():
    from celltap.incubator.engine import CellSpec, Engine
    from celltap.incubator.metrics import IncubatorMetrics
    from prometheus_client import CollectorRegistry

    e = Engine(
        Separator(fragments=FragmentTracker(max_datagrams=1)),
        IncubatorMetrics(CollectorRegistry()),
        lambda s: _Null(),
    )
    e.set_cells({"a": CellSpec("a", "null")})
    frames = v4_fragments(1, 1)[1:] + v4_fragments(2, 2)[1:] + v4_fragments(1, 1)[:1]
    e.process(FrameBatch.from_frames(frames, [0] * len(frames)))
    assert e.conservation()[0] == e.conservation()[1] == len(frames)
    assert e.dropped == {OVERFLOW_DATAGRAMS: 2}
    assert e.forwarded == 3
    assert np.isclose(e.metrics.registry.get_sample_value("celltap_incubator_forwarded_frames_total"), 3)


class _Null:
    def send(self, batch):
        return len(batch), batch.nbytes, {}

    def close(self) -> None:
        pass


def _tiny_later_fragments(n: int) -> list[bytes]:
    """`n` datagrams of which only the last fragment arrives: 8 bytes of payload at offset 8 (42-byte
    frames), each datagram its own id and source (crafted)."""
    out = []
    for i in range(n):
        src = bytes([10, 1 + (i >> 16) % 200, (i >> 8) & 0xFF, i & 0xFF])
        out.append(MAC + b"\x08\x00" + ipv4(src, B4, 17, bytes(8), ident=i & 0xFFFF, frag_offset=8))
    return out


def test_waiting_room_counts_real_memory_crafted():
    """20,000 tiny lone fragments: the tracker's count of its memory is at least what tracemalloc sees
    it keep (main counted their 840 KB of frames, about a quarter), and at most twice."""
    frames = _tiny_later_fragments(20_000)
    batch = FrameBatch.from_frames(frames, [0] * len(frames))
    tr = FragmentTracker(max_bytes=1 << 40, max_datagrams=1 << 30)
    sep = Separator({"a": 1}, fragments=tr)
    kept = kept_bytes(lambda: sep.route(batch))
    assert tr.waiting_frames == 20_000 and tr.waiting_bytes == 42 * 20_000
    assert kept <= tr.waiting_mem <= 2 * kept, (kept, tr.waiting_mem)


def test_waiting_room_cap_bounds_real_memory_crafted():
    """The same flood under max_bytes = 512 KiB: what stays allocated is within the cap, the rest of
    the fragments are refused and counted."""
    cap = 512 << 10
    frames = _tiny_later_fragments(20_000)
    batch = FrameBatch.from_frames(frames, [0] * len(frames))
    tr = FragmentTracker(max_bytes=cap, max_datagrams=1 << 30)
    sep = Separator({"a": 1}, fragments=tr)
    out = []
    kept = kept_bytes(lambda: out.append(sep.route(batch).drops))  # the routing's slot array goes
    drops = out[0]
    assert drops[OVERFLOW_BYTES] == 20_000 - tr.waiting_frames > 0
    assert kept <= cap + (32 << 10), kept
