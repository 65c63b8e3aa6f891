"""The out-of-order buffer against a model: any segments of one true stream, in any order, with
overlaps and duplicates, come out as that stream with its holes skipped, and the memory accounting
returns to zero. Segments are generated (hypothesis); the expectation is computed from them alone."""

from __future__ import annotations

from sys import getsizeof

from celltap.cell.flow_table import Flow
from celltap.cell.run_buffer import BUFFER_BASE, RUN_SLOT, RunBuffer
from celltap.cell.tcp_reassembly import ACK, SYN, TcpStats, segment, skip_gaps
from hypothesis import given, settings
from hypothesis import strategies as st

ISN = 0xFFFFF000  # the stream wraps 2**32 after 4 KiB


def _truth(n: int) -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n))


SPREAD = st.lists(st.tuples(st.integers(0, 6000), st.integers(1, 700)), min_size=1, max_size=60)
DENSE = st.lists(st.tuples(st.integers(0, 120), st.integers(1, 30)), min_size=1, max_size=40)  # ends collide


@settings(max_examples=300, deadline=None)
@given(st.one_of(SPREAD, DENSE))
def test_any_segments_give_the_stream_with_holes_skipped(segs):
    """No cap: nothing is skipped before the end, so the model is the union of the segments."""
    truth = _truth(7000)
    out: list[bytes] = []
    st_ = TcpStats()
    f = Flow(1, 1, 4, 6, b"\1\1\1\1", 1, b"\2\2\2\2", 2, 0, 0)
    deliver = lambda _f, _d, data, _t: out.append(data)  # noqa: E731
    segment(f, 1, SYN, ISN, b"", 0, deliver, st_, 1 << 40)
    covered = [False] * 7000
    for off, n in segs:
        end = min(off + n, 7000)
        segment(f, 1, ACK, (ISN + 1 + off) & 0xFFFFFFFF, truth[off:end], 0, deliver, st_, 1 << 40, 1 << 40)
        for i in range(off, end):
            covered[i] = True
    skip_gaps(f, 1, 0, deliver, st_)
    last = max(i for i in range(7000) if covered[i]) + 1
    assert b"".join(out) == bytes(truth[i] for i in range(last) if covered[i])
    assert st_.gap_bytes == sum(1 for i in range(last) if not covered[i])
    assert f.nxt1 == (ISN + 1 + last) & 0xFFFFFFFF
    assert st_.ooo_bytes == 0 and st_.ooo_mem == 0 and f.ooo1 is None


def test_overlapping_runs_that_end_alike():
    """Found by review (a KeyError): [10, 15) then [12, 15) are two runs with one end."""
    out: list[bytes] = []
    st_ = TcpStats()
    f = Flow(1, 1, 4, 6, b"\1\1\1\1", 1, b"\2\2\2\2", 2, 0, 0)
    deliver = lambda _f, _d, data, _t: out.append(data)  # noqa: E731
    segment(f, 1, SYN, 0, b"", 0, deliver, st_, 1 << 40)
    segment(f, 1, ACK, 11, b"ABCDE", 0, deliver, st_, 1 << 40, 1 << 40)
    segment(f, 1, ACK, 13, b"CDE", 0, deliver, st_, 1 << 40, 1 << 40)
    segment(f, 1, ACK, 16, b"F", 0, deliver, st_, 1 << 40, 1 << 40)  # continues both
    skip_gaps(f, 1, 0, deliver, st_)
    assert b"".join(out) == b"ABCDEF" and st_.gap_bytes == 10 and st_.ooo_mem == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(1, 80), st.integers(0, 255)), min_size=1, max_size=40)
)
def test_run_buffer_is_first_wins_with_exact_accounting(pieces):
    """The defragmenter's RunBuffer against a byte-array model: bytes held first are never replaced,
    runs stay sorted and disjoint, `add` says how many bytes were new, and `mem` is the sum of what
    the runs allocate (their sys.getsizeof plus RUN_SLOT) over the empty buffer's."""
    held: dict[int, int] = {}
    b = RunBuffer()
    for start, n, fill in pieces:
        data = bytes((fill + k) & 0xFF for k in range(n))
        new = sum(1 for k in range(start, start + n) if k not in held)
        for k in range(start, start + n):
            held.setdefault(k, data[k - start])
        assert b.add(start, data) == new
        starts, runs = b.starts[b.head :], b.runs[b.head :]
        assert starts == sorted(starts)
        assert all(starts[i] + len(runs[i]) <= starts[i + 1] for i in range(len(starts) - 1))
        assert {s + k: v for s, r in zip(starts, runs, strict=True) for k, v in enumerate(r)} == held
        assert b.payload == len(held)
        assert b.mem == BUFFER_BASE + sum(getsizeof(r) + RUN_SLOT for r in runs)
    while len(b):
        b.pop_first()
    assert b.payload == 0 and b.mem == BUFFER_BASE
