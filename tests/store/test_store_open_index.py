"""The open file's index, as the writer holds it, answers like a walk of the file (crafted traffic).

The cell's own endpoint queries the file being written through the writer's index snapshot
instead of walking and decoding that file: both must give the same frames for every flow.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from celltap.cell.inputs import pcap_batches
from celltap.cell.store.config import StoreConfig
from celltap.cell.store.query import Query, query_dir
from celltap.cell.store.writer import PacketStore

from celltap.decode import DecodeOptions, decode_batch
from tests.store.oracle import CELLTAP


def test_snapshot_of_the_open_file_equals_a_walk(tmp_path: Path) -> None:
    pcap = tmp_path / "mixed.pcap"
    subprocess.run([*CELLTAP, "loadgen", "pcap", "mixed", str(pcap), "--count", "150"], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    store = PacketStore(StoreConfig(dir=str(tmp_path / "s"), file_bytes=1 << 30, max_bytes=1 << 31), 0)
    store.block = True
    try:
        for b in pcap_batches(str(pcap)):
            store.submit(decode_batch(b, DecodeOptions()))
        while store.queued_bytes:
            store.cond.acquire()
            store.cond.wait(0.1)
            store.cond.release()
        live = store.open_index()
        assert live is not None and live[1].meta_value("frames") > 1000
        idx = live[1]
        keys = [idx.key[i][: 14 if idx.key[i][0] == 4 else 38].tobytes() for i in range(len(idx.hash))]
        assert len(keys) >= 100
        for key in keys:
            with_snapshot = query_dir(str(tmp_path / "s"), Query(key=key), live)
            walked = query_dir(str(tmp_path / "s"), Query(key=key))
            assert with_snapshot is not None and walked is not None
            for col in ("caplens", "wirelens", "ts_ns"):
                assert np.array_equal(getattr(with_snapshot, col), getattr(walked, col))
            assert with_snapshot.frames_bytes() == walked.frames_bytes()
    finally:
        store.close()
