"""The store's record packing against the shared pcap writer's, on both of its routes."""

from __future__ import annotations

import numpy as np
from celltap.cell.store.records import pack_records

from celltap.pcap import read_all
from celltap.pcap.batch import FrameBatch
from celltap.pcap.writer import PcapWriter, pack_pcap_records


def _random_batch(rng: np.random.Generator, n: int) -> FrameBatch:
    lens = rng.integers(0, 2000, n)
    gaps = rng.integers(0, 40, n)  # frames scattered in their buffer, as a live source's slots
    offs = np.cumsum(gaps + np.concatenate([[0], lens[:-1]]))
    buf = rng.integers(0, 256, int(offs[-1] + lens[-1] + 5), dtype=np.uint8)
    ts = rng.integers(0, 2**62, n)
    return FrameBatch(buf, offs.astype(np.int64), lens.astype(np.int64), lens + rng.integers(0, 9, n), ts)


def test_scattered_frames_pack_like_the_writer() -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 300, 3000):
        b = _random_batch(rng, n)
        for snap in (262144, 100):
            got, rec_len = pack_records(b, snap)
            assert np.array_equal(got, pack_pcap_records(b, nanosecond=True, snaplen=snap))
            assert rec_len.sum() == got.size


def test_frames_read_from_a_pcap_take_the_one_copy_route(tmp_path) -> None:
    """A pcap file's chunk holds the records back to back: same bytes, from the slice route."""
    rng = np.random.default_rng(8)
    src = _random_batch(rng, 500)
    path = tmp_path / "x.pcap"
    with PcapWriter(str(path), nanosecond=True) as w:
        w.write_batch(src)
    (b,) = read_all(str(path))
    offs = b.offsets
    assert np.array_equal(offs[1:] - offs[:-1], b.caplens[:-1] + 16)  # the route's precondition holds
    got, _ = pack_records(b, 262144)
    assert got.tobytes() == path.read_bytes()[24:]
