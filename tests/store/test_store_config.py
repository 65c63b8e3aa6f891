"""A mistake in the store's configuration is one line naming it; a stalled writer never stalls the cell.

The stall is real: the store's first file name is made a FIFO with no reader, so the writer
thread's open() blocks in the kernel, as on a hung disk. Traffic is loadgen's `cps` (crafted).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from celltap.defaults import default_file
from celltap.launcher.ports import free_port
from tests.store.live import StoreCell
from tests.store.oracle import CELLTAP, read_pcap
from tests.store.test_store_retention import crafted_frames


def _cell(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*CELLTAP, "cell", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("section", "word"),
    [
        ("store: {dirr: /tmp/x}", "store.dirr: unknown key"),
        ("store: {file_bytes: 100}", "store.dir: missing"),
        ("store: {dir: /tmp/x, file_bytes: 1048576, max_bytes: 1048576}", "store.max_bytes"),
        ("store: {dir: /tmp/x, listen: '127.0.0.1:9'}", "store.token_file"),
        ("store: {dir: /tmp/x, max_age: soon}", "store.max_age"),
        ("store: [1, 2]", "store: expected a map"),
        (
            "store: {dir: /tmp/x, tls: {cert: /nonexistent.crt, key: /nonexistent.key}}",
            "store.tls.cert: no such file",
        ),
        ("store: {dir: /tmp/x, tls: {bogus: 1}}", "store.tls: unknown key"),
    ],
)
def test_bad_store_section_is_one_line(tmp_path: Path, section: str, word: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"tcp_default: {{if: default}}\n{section}\n")
    proc = _cell(["--config", str(cfg), "--home", str(tmp_path / "h"), "--read", "/dev/null"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and word in proc.stderr, proc.stderr


def test_flag_mistakes_are_one_line(tmp_path: Path) -> None:
    """--store-* without a store, and a store endpoint whose port is taken."""
    base = ["--config", str(default_file("sftap.yaml")), "--home", str(tmp_path / "h"), "--read", "/dev/null"]
    proc = _cell([*base, "--store-max-bytes", "1000000"])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--store" in proc.stderr, proc.stderr
    token = tmp_path / "t"
    token.write_text("x\n")
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", free_port()))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        proc = _cell([*base, "--store", str(tmp_path / "s"), "--store-listen", f"127.0.0.1:{port}",
                      "--store-token-file", str(token)])  # fmt: skip
    finally:
        busy.close()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (
        proc.stderr
    )


def test_stalled_writer_drops_from_the_store_only_crafted(tmp_path: Path) -> None:
    """The writer hangs in open(); the cell takes every frame, the store counts queue_full drops."""
    frames = crafted_frames(tmp_path, 200)
    store = tmp_path / "store"
    store.mkdir()
    cell = StoreCell(tmp_path, {"dir": str(store), "queue_bytes": 65536})
    fifo = store / "cell0-00000000.pcap"
    os.mkfifo(fifo)  # the writer's first open() blocks until someone reads it
    drained = bytearray()
    try:
        for i in range(0, len(frames), 100):
            cell.send(frames[i : i + 100])
            # one chunk at a time: a loaded host must not hand the cell one huge batch, which an
            # empty queue would take whole (the bound holds from the second batch on)
            until = time.monotonic() + 10
            while cell.metrics()['celltap_cell_packets_total{cell="0"}'] < 0.9 * (i + 100):
                assert time.monotonic() < until, "the cell stopped taking frames"
                time.sleep(0.01)
        deadline = time.monotonic() + 20
        while True:
            m = cell.metrics()
            got = m['celltap_cell_packets_total{cell="0"}']
            if got >= 0.95 * len(frames) and m == cell.metrics():
                break
            assert time.monotonic() < deadline, f"the cell took {got} of {len(frames)} frames"
            time.sleep(0.2)
        dropped = m['celltap_cell_store_dropped_frames_total{cell="0",reason="queue_full"}']
        assert m['celltap_cell_store_written_frames_total{cell="0"}'] == 0
        assert dropped > 0.5 * got  # most frames found the queue full ...
        assert m['celltap_cell_store_queue_bytes{cell="0"}'] <= 65536 + 32768  # ... and it stayed bounded
        # a reader appears: the writer unblocks and writes what was queued
        reader = threading.Thread(target=lambda: drained.extend(fifo.read_bytes()), daemon=True)
        reader.start()
        deadline = time.monotonic() + 20
        while True:
            m = cell.metrics()
            written = m['celltap_cell_store_written_frames_total{cell="0"}']
            if written + dropped == got:
                break
            assert time.monotonic() < deadline, (written, dropped, got)
            time.sleep(0.2)
    finally:
        assert cell.stop() == 0, cell.log.read_text()
    reader.join(10)
    (tmp_path / "drained.pcap").write_bytes(bytes(drained))
    assert len(read_pcap(tmp_path / "drained.pcap")[1]) == written  # the FIFO got exactly those records
