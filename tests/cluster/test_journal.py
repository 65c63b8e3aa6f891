"""The routing journal on its own (sans sockets): entries and checkpoints survive a process, torn
tails are counted, finished segments are deleted, and a replayed router re-sends with the old identity."""

from __future__ import annotations

import numpy as np
from celltap.collector.cluster import ClusterRouter, RouterConfig
from celltap.collector.journal import HEADER, Journal
from celltap.proto import celltap_pb2 as pb

from tests.cluster.records import make_batch, make_records


def _entry(seq: int, n: int = 3) -> pb.JournalEntry:
    recs = make_records(np.random.default_rng(seq), n)
    tb, rb = make_batch(recs).to_wire()
    batch = pb.RecordBatchMsg(collector="c1@run1", sequence=seq, origin="n1", exporter="192.0.2.1", domain=1,
                              template=tb, records=rb, count=n, keys=["src"], key_mask=b"\x01" * n,
                              incarnation="i1")  # fmt: skip
    rep = pb.JournalReplica(node="n2", index=np.arange(n, dtype="<u4").tobytes(), mask=b"\x01" * n)
    return pb.JournalEntry(batch=batch, primary="n1", replicas=[rep])


def test_entries_and_the_latest_checkpoint_come_back_and_a_torn_tail_is_counted(tmp_path) -> None:
    j = Journal(tmp_path, segment_bytes=1 << 20)
    segs = [j.append(_entry(s)) for s in (1, 2)]
    j.checkpoint({"seq": [["192.0.2.1", 1, 42]]})
    j.append(_entry(3))
    j.close()
    path = tmp_path / f"{segs[0]:08d}.journal"
    with open(path, "ab") as fh:  # a crash in the middle of a write
        fh.write(HEADER.pack(1000, 1) + b"partial")
    again = Journal(tmp_path)
    entries, checkpoint = again.recover()
    assert [e.batch.sequence for _, e in entries] == [1, 2, 3]
    assert entries[0][1] == _entry(1)
    assert checkpoint == {"seq": [["192.0.2.1", 1, 42]]}
    assert again.torn == 1
    assert again.current == segs[0] + 1  # new writes never go into a recovered segment


def test_a_segment_is_deleted_once_not_current_and_released(tmp_path) -> None:
    j = Journal(tmp_path, segment_bytes=200)
    first = j.append(_entry(1, 5))
    j.retain(first)
    j.checkpoint({"k": 1})
    second = j.append(_entry(2, 5))  # past 200 bytes: a new segment, which starts with the checkpoint
    assert second == first + 1
    assert j.collect() == 0  # `first` still referenced
    j.release(first)
    assert j.collect() == 1 and not (tmp_path / f"{first:08d}.journal").exists()
    j.close()
    entries, checkpoint = Journal(tmp_path).recover()
    assert [e.batch.sequence for _, e in entries] == [2] and checkpoint == {"k": 1}


def test_a_router_holds_what_it_recovered_until_it_knows_nodes(tmp_path) -> None:
    j = Journal(tmp_path / "c1")
    j.append(_entry(7))
    j.close()
    router = ClusterRouter(RouterConfig(collector_id="c1", journal=str(tmp_path)))
    try:
        assert [e.batch.sequence for _, e in router._replay] == [7]
        out = router._outgoing_from_journal(router._replay[0][1], router._replay[0][0])
        # The old run's identity and the backup's part are kept: nodes recognise what they hold.
        assert (out.wire_id, out.seq, out.origin, out.primary) == ("c1@run1", 7, "n1", "n1")
        assert list(out.replicas) == ["n2"] and out.replicas["n2"].index.tolist() == [0, 1, 2]
        router.replay_journal()  # no nodes known yet: kept for the first membership with nodes
        assert len(router._replay) == 1
    finally:
        router.close(timeout=0.1)


def test_after_routed_waits_for_everything_accepted_before_it(tmp_path) -> None:
    # The ingest saves its sequence numbers through after_routed: the callback must not run while a
    # batch accepted before it still sits in the coalescing buffer (a crash would lose it uncounted).
    router = ClusterRouter(RouterConfig(collector_id="c1", journal=str(tmp_path), flush_interval=3600))
    router.members = {"n1": {"grpc": "127.0.0.1:1", "incarnation": "x"}}  # accepted, never connected
    calls: list[str] = []
    try:
        router.after_routed(lambda: calls.append("idle"))
        assert calls == ["idle"]  # nothing buffered: at once
        assert router.on_batch(make_batch(make_records(np.random.default_rng(1), 10)))
        router.after_routed(lambda: calls.append("after first"))
        assert calls == ["idle"]
        router.flush()
        assert calls == ["idle", "after first"]
    finally:
        router._stop.set()
