"""pcap / pcapng reading and writing, checked against tcpdump and tshark as independent readers."""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celltap.pcap import CaptureFormatError, PcapngWriter, PcapWriter, open_capture, read_all
from celltap.pcap.walk import walk_records
from tests.conftest import require_tool
from tests.core.frames import eth, ipv4, udp


def _frames(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = rng.choice([60, 60, 60, rng.randint(60, 1514)])
        body = udp(1000 + i % 500, 53, bytes(rng.getrandbits(8) for _ in range(max(0, size - 42))))
        out.append(eth(ipv4("10.0.0.1", "10.0.0.2", 17, body, ident=i & 0xFFFF)))
    return out


def _write(writer_cls: type, frames: list[bytes], nanosecond: bool) -> bytes:
    buf = io.BytesIO()
    w = writer_cls(buf, nanosecond=nanosecond)
    for i, f in enumerate(frames):
        w.write(1_700_000_000_000_000_000 + i * 1_234_567, f)
    return buf.getvalue()


@pytest.mark.parametrize("writer_cls", [PcapWriter, PcapngWriter])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_round_trip(writer_cls: type, nanosecond: bool) -> None:
    frames = _frames(3000)
    data = _write(writer_cls, frames, nanosecond)
    batches = read_all(data)
    got = [b.frame(i) for b in batches for i in range(len(b))]
    assert got == frames
    ts = np.concatenate([b.ts_ns for b in batches])
    want = 1_700_000_000_000_000_000 + np.arange(3000, dtype=np.int64) * 1_234_567
    if not nanosecond:
        want = want // 1000 * 1000
    assert np.array_equal(ts, want)


def test_small_chunks_stream_like_a_large_file() -> None:
    frames = _frames(5000, seed=2)
    data = _write(PcapWriter, frames, False)
    with open_capture(io.BytesIO(data), chunk_size=1 << 16) as reader:
        batches = list(reader)
    assert len(batches) > 5
    assert [b.frame(i) for b in batches for i in range(len(b))] == frames


def test_big_endian_pcap() -> None:
    frame = _frames(1)[0]
    data = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    data += struct.pack(">IIII", 5, 6, len(frame), len(frame)) + frame
    (batch,) = read_all(data)
    assert batch.frame(0) == frame and int(batch.ts_ns[0]) == 5_000_006_000


def test_batch_writer_matches_frame_writer() -> None:
    frames = _frames(2000, seed=3)
    data = _write(PcapWriter, frames, True)
    out = io.BytesIO()
    w = PcapWriter(out, nanosecond=True)
    for b in read_all(data):
        w.write_batch(b)
    assert out.getvalue() == data


def test_corrupt_and_truncated_input_raise_clear_errors() -> None:
    data = _write(PcapWriter, _frames(10), False)
    with pytest.raises(CaptureFormatError, match="ends inside a record"):
        read_all(data[:-5])
    bogus = bytearray(data)
    bogus[24 + 8 : 24 + 12] = struct.pack("<I", 0x7FFFFFFF)
    with pytest.raises(CaptureFormatError, match="claims"):
        read_all(bytes(bogus))
    with pytest.raises(CaptureFormatError, match="magic"):
        read_all(b"not a capture at all")


def test_stdin_streaming(tmp_path) -> None:
    frames = _frames(500, seed=4)
    path = tmp_path / "in.pcap"
    path.write_bytes(_write(PcapWriter, frames, False))
    code = "from celltap.pcap import open_capture\nprint(sum(len(b) for b in open_capture('-')))\n"
    with path.open("rb") as fh:
        out = subprocess.run(
            [sys.executable, "-c", code], stdin=fh, capture_output=True, check=True, text=True
        )
    assert out.stdout.strip() == "500"


@pytest.mark.parametrize(
    "writer_cls,nanosecond", [(PcapWriter, False), (PcapWriter, True), (PcapngWriter, True)]
)
def test_tcpdump_and_tshark_read_what_we_write(tmp_path, writer_cls: type, nanosecond: bool) -> None:
    tshark = require_tool("tshark")
    frames = _frames(200, seed=5)
    path = tmp_path / "out.cap"
    path.write_bytes(_write(writer_cls, frames, nanosecond))
    out = subprocess.run(
        [tshark, "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "frame.time_epoch", "-e", "ip.id"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [len(f) for f in frames]
    assert [int(r[2], 16) if r[2].startswith("0x") else int(r[2]) for r in rows] == list(range(200))
    first = 1_700_000_000_000_000_000
    assert abs(float(rows[1][1]) - (first + 1_234_567) / 1e9) < 1e-6
    if writer_cls is PcapWriter:
        tcpdump = require_tool("tcpdump")
        dump = subprocess.run([tcpdump, "-nn", "-r", str(path)], capture_output=True, text=True, check=True)
        assert len(dump.stdout.splitlines()) == 200


def test_we_read_what_tcpdump_writes(tmp_path) -> None:
    tcpdump = require_tool("tcpdump")
    frames = _frames(300, seed=6)
    src = tmp_path / "src.pcap"
    src.write_bytes(_write(PcapWriter, frames, False))
    dst = tmp_path / "dst.pcap"
    subprocess.run([tcpdump, "-r", str(src), "-w", str(dst), "udp"], check=True, capture_output=True)
    got = [b.frame(i) for b in read_all(str(dst)) for i in range(len(b))]
    assert got == frames
    editcap = require_tool("editcap")
    ng = tmp_path / "dst.pcapng"
    subprocess.run(
        [editcap, "-F", "pcapng", "--set-tsprec", "9", str(src), str(ng)], check=False, capture_output=True
    )
    if not ng.exists() or ng.stat().st_size == 0:
        subprocess.run([editcap, "-F", "pcapng", str(src), str(ng)], check=True, capture_output=True)
    got_ng = [b.frame(i) for b in read_all(str(ng)) for i in range(len(b))]
    assert got_ng == frames


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 400)), min_size=1, max_size=40))
def test_walk_matches_a_plain_loop_on_runs_and_mixtures(runs: list[tuple[int, int]]) -> None:
    lengths = [length for length, count in runs for _ in range(count)]
    buf = bytearray()
    want = []
    for i, length in enumerate(lengths):
        want.append(len(buf))
        buf += struct.pack("<IIII", i, 0, length, length) + bytes(length)
    arr = np.frombuffer(bytes(buf), dtype=np.uint8)
    offs, stop = walk_records(arr, 0, len(buf), 16, 8, False, 1 << 20)
    assert offs.tolist() == want and stop == len(buf)
    # A cut inside the last record stops the walk before it.
    offs, stop = walk_records(arr, 0, len(buf) - 1, 16, 8, False, 1 << 20)
    assert offs.tolist() == want[:-1] and stop == want[-1]


@pytest.mark.parametrize("writer_cls", [PcapWriter, PcapngWriter])
def test_mapped_files_chunked_truncated_and_oversized(tmp_path, writer_cls: type) -> None:
    # Regular files are mapped: windows smaller than a record must grow, and truncation is an error.
    frames = [bytes([i % 256]) * size for i, size in enumerate([60, 70_000, 60, 150_000, 1514] * 20)]
    path = tmp_path / "big.cap"
    path.write_bytes(_write(writer_cls, frames, True))
    with open_capture(str(path), chunk_size=1 << 16) as reader:
        got = [b.frame(i) for b in reader for i in range(len(b))]
    assert got == frames
    short = tmp_path / "short.cap"
    short.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(CaptureFormatError, match="ends inside a record"):
        read_all(str(short))
