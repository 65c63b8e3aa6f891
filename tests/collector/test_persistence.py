"""State kept across restarts: the sequence-state files and the write-behind template store."""

from __future__ import annotations

import os
import threading
import time

from celltap.collector.seq_state import SequenceState, read_file
from celltap.collector.template_store import InMemoryTemplateStore, SnapshotTemplateStore, WriteBehindStore


def test_sequence_state_survives_and_the_newest_entry_wins(tmp_path):
    a = SequenceState(tmp_path, 0, capacity=8)
    assert a.load(now=1000.0) == {}
    a.save([("192.0.2.1", 5, 1200, "records", 1000.0), ("2001:db8::1", 7, 33, "packets", 1000.0)])
    a.save([("192.0.2.1", 5, 1300, "records", 1001.0)])  # the same slot moves on
    b = SequenceState(tmp_path, 1, capacity=8)
    b.load(now=1001.0)
    b.save([("192.0.2.1", 5, 1500, "records", 1002.0)])  # SO_REUSEPORT moved the exporter to worker 1
    # Neither was closed (as after SIGKILL): what they stored is in the files.
    merged = SequenceState(tmp_path, 0, capacity=8).load(now=1003.0)
    assert merged == {
        ("192.0.2.1", 5): (1500, "records", 1002.0),
        ("2001:db8::1", 7): (33, "packets", 1000.0),
    }
    assert read_file(tmp_path / "seq-0.bin") == merged  # worker 0 rewrote its file with what it took


def test_sequence_state_drops_old_entries_and_bounds_its_slots(tmp_path):
    s = SequenceState(tmp_path, 0, capacity=4, max_age=100.0)
    s.load(now=0.0)
    s.save([(f"192.0.2.{i}", 1, i, "records", float(i)) for i in range(10)])  # more than its 4 slots
    assert os.path.getsize(tmp_path / "seq-0.bin") == 16 + 4 * 40
    kept = read_file(tmp_path / "seq-0.bin")
    assert sorted(k[0] for k in kept) == [f"192.0.2.{i}" for i in range(6, 10)]  # the least recent gave way
    s.forget("192.0.2.9", 1)
    assert ("192.0.2.9", 1) not in read_file(tmp_path / "seq-0.bin")
    assert SequenceState(tmp_path, 0, capacity=4, max_age=100.0).load(now=107.5) == {
        ("192.0.2.8", 1): (8, "records", 8.0)
    }  # 192.0.2.6/.7 are older than max_age


class CountingStore(InMemoryTemplateStore):
    """A backend that counts the writes it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def put(self, exporter, domain, template_id, data):
        self.writes += 1
        super().put(exporter, domain, template_id, data)


def test_write_behind_coalesces_and_never_blocks():
    backend = CountingStore()
    store = WriteBehindStore(backend, interval=0.2)
    t0 = time.monotonic()
    for i in range(5000):
        store.put("192.0.2.1", 1, 256 + i % 10, b"t%d" % i)  # 10 templates refreshed 500 times each
    assert time.monotonic() - t0 < 1.0
    assert store.get("192.0.2.1", 1, 256) == b"t4990"  # visible before it is written
    store.delete("192.0.2.1", 1, 257)
    assert store.get("192.0.2.1", 1, 257) is None
    store.close()
    assert backend.writes <= 10 + 10  # once per template and flush, not once per refresh
    assert backend.get("192.0.2.1", 1, 259) == b"t4993" and backend.get("192.0.2.1", 1, 257) is None


def test_snapshots_are_one_file_per_worker_and_shared(tmp_path):
    w0 = WriteBehindStore(SnapshotTemplateStore(tmp_path, 0), interval=0.1)
    for i in range(3000):
        w0.put(f"192.0.2.{i % 50}", i % 7, 256 + i, bytes(40))
    w0.close()
    assert sorted(os.listdir(tmp_path)) == ["templates-0.bin"]
    w1 = SnapshotTemplateStore(tmp_path, 1)
    assert w1.get("192.0.2.3", 3 % 7, 256 + 3) == bytes(40)  # worker 1 finds worker 0's template
    w1.flush()
    assert sorted(os.listdir(tmp_path)) == ["templates-0.bin", "templates-1.bin"]
    again = SnapshotTemplateStore(tmp_path, 0)
    assert len(again) == 3000


def test_close_is_bounded_when_the_backend_hangs():
    """A registry that does not answer must not hold a stop: close gives up after close_timeout."""
    release = threading.Event()

    class Hanging(InMemoryTemplateStore):
        def put(self, exporter, domain, template_id, data):
            release.wait(30)

    store = WriteBehindStore(Hanging(), interval=0.05, close_timeout=0.5)
    for i in range(100):
        store.put("192.0.2.1", 1, 256 + i, b"x")
    time.sleep(0.2)
    t0 = time.monotonic()
    store.close()
    took = time.monotonic() - t0
    release.set()
    assert took < 3.0, took
    assert store.drops["stop_timeout"] > 0  # what was given up is counted
