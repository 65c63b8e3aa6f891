"""Retention while traffic goes on, and a full disk: the store keeps its bounds and its counts.

Crafted traffic: loadgen's `cps` scenario (TCP connections, no real tool made it), sent over VXLAN
to a live cell, or read offline. What is checked is the store's bookkeeping, against the files on
disk and the cell's own frame counter, not the traffic's content.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.cell.runner import run_cell, write_config
from tests.conftest import require_root
from tests.store.live import StoreCell, dir_bytes
from tests.store.oracle import CELLTAP, read_pcap

FILE_BYTES = 65536
MAX_BYTES = 4 * FILE_BYTES


def crafted_frames(tmp: Path, count: int) -> list[bytes]:
    """Frames of loadgen's cps scenario (crafted)."""
    out = tmp / "cps.pcap"
    subprocess.run([*CELLTAP, "loadgen", "pcap", "cps", str(out), "--count", str(count)], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    return [f[2] for f in read_pcap(out)[1]]


def _stream(cell: StoreCell, frames: list[bytes], loops: int, watch: callable) -> None:
    for _ in range(loops):
        for i in range(0, len(frames), 200):
            cell.send(frames[i : i + 200])
            time.sleep(0.004)  # a pace the cell keeps up with (socket drops are not under test here)
            watch()


def test_size_retention_holds_the_bound_while_traffic_continues_crafted(tmp_path: Path) -> None:
    """Never more than max_bytes on disk; the oldest files go first; every frame written or counted."""
    frames = crafted_frames(tmp_path, 300)
    store = tmp_path / "store"
    cell = StoreCell(tmp_path, {"dir": str(store), "file_bytes": FILE_BYTES, "max_bytes": MAX_BYTES})
    peak = [0]
    seen: set[str] = set()

    def watch() -> None:
        if store.exists():
            peak[0] = max(peak[0], dir_bytes(store))
            names = {f.name for f in store.glob("*.pcap")}
            seen.update(names)
            if names:  # what is left is always the newest files: removal is oldest first
                assert min(names) >= max(sorted(seen)[: len(seen) - len(names)], default="")

    try:
        _stream(cell, frames, 6, watch)
        deadline = time.monotonic() + 20
        last = -1.0
        while True:  # until the cell has taken every datagram and the store has accounted for it
            m = cell.metrics()
            want = m['celltap_cell_packets_total{cell="0"}']
            stored = sum(
                v
                for k, v in m.items()
                if k.startswith(
                    ("celltap_cell_store_written_frames_total", "celltap_cell_store_dropped_frames_total")
                )
            )
            if stored == want == last:
                break
            last = want
            assert time.monotonic() < deadline, "store counters never caught up with the cell's frames"
            time.sleep(0.3)
    finally:
        assert cell.stop() == 0, cell.log.read_text()
    assert peak[0] <= MAX_BYTES, peak[0]
    assert dir_bytes(store) <= MAX_BYTES
    assert want >= 5 * len(frames)  # the cell got most of what was sent (loopback UDP may lose some)
    assert m['celltap_cell_store_removed_files_total{cell="0",reason="size"}'] >= 10
    # after the stop: the files left are the newest ones, and created - removed of them
    summary = re.search(r"(\d+) files created, (\d+) files removed \(size: (\d+)\)", cell.log.read_text())
    assert summary, cell.log.read_text()
    created, removed = int(summary.group(1)), int(summary.group(2))
    left = sorted(store.glob("*.pcap"))
    assert len(left) == created - removed and removed == int(summary.group(3))
    assert [p.name for p in left] == sorted(seen | {p.name for p in left})[-len(left) :]
    assert all(p.with_suffix(".idx").exists() for p in left)
    written = m['celltap_cell_store_written_frames_total{cell="0"}']
    dropped = sum(v for k, v in m.items() if k.startswith("celltap_cell_store_dropped_frames_total"))
    assert written + dropped == want


def test_age_retention_removes_old_files_crafted(tmp_path: Path) -> None:
    """Files closed longer ago than max_age are removed (reason age), the newest stay."""
    frames = crafted_frames(tmp_path, 100)
    store = tmp_path / "store"
    cell = StoreCell(tmp_path, {"dir": str(store), "file_seconds": 0.3, "max_age": 1.0})
    try:
        _stream(cell, frames, 1, lambda: None)
        time.sleep(0.5)
        _stream(cell, frames, 1, lambda: None)
        deadline = time.monotonic() + 10
        while cell.total('celltap_cell_store_removed_files_total{cell="0",reason="age"}') < 1:
            assert time.monotonic() < deadline, "no file was removed for its age"
            time.sleep(0.1)
        time.sleep(2.5)  # no traffic: every closed file ages out
        m = cell.metrics()
    finally:
        assert cell.stop() == 0, cell.log.read_text()
    assert m['celltap_cell_store_removed_files_total{cell="0",reason="age"}'] >= 2
    assert m['celltap_cell_store_removed_files_total{cell="0",reason="size"}'] == 0
    # only the file open at the scrape can remain (closed by the stop, then indexed)
    assert m['celltap_cell_store_files{cell="0"}'] <= 1


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs mounted for this test only."""
    require_root()
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_drops_from_the_store_only_crafted(tmp_path: Path, small_disk: Path) -> None:
    """Storing 3x the disk's size: drops counted as disk_full, the cell's events byte-identical."""
    pcap = tmp_path / "cps.pcap"
    subprocess.run([*CELLTAP, "loadgen", "pcap", "cps", str(pcap), "--count", "2000"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    frames = len(read_pcap(pcap)[1])
    assert pcap.stat().st_size > 3 * (2 << 20)
    outputs = {}
    for name, extra in (("plain", []), ("stored", ["--store", str(small_disk / "store"),
                                                   "--store-file-bytes", "262144"])):  # fmt: skip
        home = tmp_path / f"home-{name}"
        cfg = write_config(tmp_path / f"{name}.yaml", home, "tcp_default:\n  if: default\n")
        proc, got = run_cell(cfg, pcap, home, ["tcp/default"], extra)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        outputs[name] = (proc, got["tcp/default"])
    assert outputs["stored"][1] == outputs["plain"][1]  # the events did not notice the full disk
    assert len(outputs["plain"][1]) > 1 << 20
    m = re.search(
        r"packet store: (\d+) frames written, (\d+) dropped \(([^)]*)\)", outputs["stored"][0].stderr
    )
    assert m, outputs["stored"][0].stderr
    written, dropped, reasons = int(m.group(1)), int(m.group(2)), m.group(3)
    assert written + dropped == frames
    assert dropped > 0 and reasons.startswith("disk_full")
    left = sorted((small_disk / "store").glob("*.pcap"))
    assert left and sum(len(read_pcap(p)[1]) for p in left) <= written  # whole records only
    assert os.statvfs(small_disk).f_blocks * os.statvfs(small_disk).f_frsize <= 2 << 20
