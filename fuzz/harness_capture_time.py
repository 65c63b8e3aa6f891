"""Fuzz harness: the cell's tunnel parsers (Geneve with its option walk, VXLAN) and the Arista timestamp
header strip, on arbitrary bytes.

The input is cut into up to 8 datagrams (first byte: how many; then 2-byte lengths), laid out as the
receive slots are (zero-padded rows), and parsed as Geneve and as VXLAN; the same pieces, as frames
of one batch, go through `strip_arista`.  Invariants checked: a kept datagram's inner frame lies
inside it, every dropped datagram is counted once, and stripping never makes a frame longer.
"""

from __future__ import annotations

import numpy as np
from celltap.cell.inputs import geneve_inner, vxlan_inner

from celltap.capture_time import arista_headers, geneve_headers, strip_arista
from celltap.pcap.batch import FrameBatch

# Vectorised code compares numpy arrays: fuzz/run.py keeps those comparisons out of atheris's hook,
# which leaks on each (kilobytes per input here, an out-of-memory within a long run).
ARRAY_COMPARES = True


def _pieces(data: bytes) -> list[bytes]:
    if not data:
        return []
    count = 1 + data[0] % 8
    pos, out = 1, []
    for _ in range(count):
        if pos + 2 > len(data):
            break
        ln = int.from_bytes(data[pos : pos + 2], "big") % 600
        pos += 2
        out.append(data[pos : pos + ln])
        pos += ln
    return out


def test_one_input(data: bytes) -> None:
    """Parse the pieces every way; raise only on a broken invariant or a crash."""
    pieces = _pieces(data)
    if not pieces:
        return
    width = max(64, max(map(len, pieces)))
    rows = np.zeros((len(pieces), width), np.uint8)
    for i, p in enumerate(pieces):
        rows[i, : len(p)] = np.frombuffer(p, np.uint8)
    lens = np.array([len(p) for p in pieces], np.int64)
    for parse in (geneve_inner, vxlan_inner):
        for vni in (None, 7):
            drops: dict[str, int] = {}
            keep, start, ts = parse(rows, lens, vni, drops)
            assert keep.shape == start.shape == ts.shape == lens.shape
            assert np.all(start[keep] + 14 <= lens[keep])
            assert sum(drops.values()) == int((~keep).sum())
            assert np.all(ts >= 0)
    batch = FrameBatch.from_frames(pieces, list(range(len(pieces))))
    out, count = strip_arista(batch)
    assert len(out) == len(batch) and 0 <= count <= len(batch)
    assert np.all(out.caplens <= batch.caplens)


def seeds() -> list[bytes]:
    """Datagrams and frames as celltap writes them, framed as `_pieces` reads them."""
    frame = bytes(12) + b"\x08\x00" + bytes(range(46))
    ts = np.array([1_796_000_000_123_456_789], np.int64)
    gen = geneve_headers(ts, 7)[0].tobytes() + frame
    vx = bytes([8, 0, 0, 0, 0, 0, 7, 0]) + frame
    stamped = frame[:12] + arista_headers(ts)[0].tobytes() + frame[12:]

    def framed(*ps: bytes) -> bytes:
        return bytes([len(ps) - 1]) + b"".join(len(p).to_bytes(2, "big") + p for p in ps)

    return [framed(gen), framed(vx), framed(stamped), framed(gen, vx, stamped, frame), framed(gen[:21])]
