"""The routing journal on its own (sans sockets): entries and checkpoints survive a process, torn
tails are counted, finished segments are deleted, and a replayed router re-sends with the old identity."""

from __future__ import annotations

import numpy as np
from celltap.collector.cluster import ClusterRouter, RouterConfig
from celltap.collector.journal import Journal
from celltap.proto import celltap_pb2 as pb
from prometheus_client import REGISTRY

from tests.cluster.records import make_batch, make_records


def _entry(seq: int, n: int = 3) -> pb.JournalEntry:
    recs = make_records(np.random.default_rng(seq), n)
    tb, rb = make_batch(recs).to_wire()
    batch = pb.RecordBatchMsg(collector="c1@run1", sequence=seq, origin="n1", exporter="192.0.2.1", domain=1,
                              template=tb, records=rb, count=n, keys=["src"], key_mask=b"\x01" * n,
                              incarnation="i1")  # fmt: skip
    rep = pb.JournalReplica(node="n2", index=np.arange(n, dtype="<u4").tobytes(), mask=b"\x01" * n)
    return pb.JournalEntry(batch=batch, primary="n1", replicas=[rep])


def test_groups_and_their_sequence_state_come_back_and_a_torn_group_leaves_nothing(tmp_path) -> None:
    j = Journal(tmp_path, segment_bytes=1 << 20)
    seg = j.append_group([_entry(1), _entry(2)], {"192.0.2.1|1": [42, "records", 1.0]})
    j.append_group([_entry(3)], {"192.0.2.1|1": [45, "records", 2.0], "192.0.2.2|7": [9, "packets", 2.0]})
    j.close()
    path = tmp_path / f"{seg:08d}.journal"
    # A kill in the middle of the next group's write: its messages and its sequence entry are cut.
    whole = tmp_path / "whole"
    Journal(whole).append_group([_entry(4), _entry(5)], {"192.0.2.1|1": [51, "records", 3.0]})
    record = next(whole.glob("*.journal")).read_bytes()
    with open(path, "ab") as fh:
        fh.write(record[: len(record) // 2])
    again = Journal(tmp_path)
    entries, sequences = again.recover()
    assert [e.batch.sequence for _, e in entries] == [1, 2, 3]
    assert entries[0][1] == _entry(1)
    assert sequences == {"192.0.2.1|1": [45, "records", 2.0], "192.0.2.2|7": [9, "packets", 2.0]}
    assert again.torn == 1
    assert again.current == seg + 1  # new writes never go into a recovered segment


def test_a_segment_is_deleted_once_not_current_and_released_and_the_sequences_live_on(tmp_path) -> None:
    j = Journal(tmp_path, segment_bytes=200)
    first = j.append_group([_entry(1, 5)], {"192.0.2.1|1": [5, "records", 1.0]})
    j.retain(first)
    second = j.append_group([_entry(2, 5)])  # past 200 bytes: a new segment, which starts with the state
    assert second == first + 1
    assert j.collect() == 0  # `first` still referenced
    j.release(first)
    assert j.collect() == 1 and not (tmp_path / f"{first:08d}.journal").exists()
    j.close()
    entries, sequences = Journal(tmp_path).recover()
    assert [e.batch.sequence for _, e in entries] == [2] and sequences == {"192.0.2.1|1": [5, "records", 1.0]}


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


def test_a_domains_sequence_state_is_journaled_with_its_records_and_saved_after(tmp_path) -> None:
    # The ingest hands its sequence state with the batches; the router may save it only once every
    # record it covers is journaled (a crash in between would lose those records uncounted), and it
    # journals it in the same record as those messages (a crash after the write must not count them
    # lost: the journal re-delivers them).
    router = ClusterRouter(RouterConfig(collector_id="c1", journal=str(tmp_path), flush_interval=3600))
    apps = [{"key": "src"}, {"key": "dst"}]  # nodes that never answer: everything stays pending
    router.set_members(
        {n: {"grpc": "127.0.0.1:1", "incarnation": "x", "apps": apps} for n in ("n1", "n2", "n3")}
    )
    saved: list[list] = []
    router.bind_sequences(saved.append, lambda _: None)
    rng = np.random.default_rng(1)
    try:
        first = make_batch(make_records(rng, 300))
        router.route_with_sequence([first], [(first.exporter, first.domain, 300, "records", 1.0)])
        assert saved == []  # the records still wait in the coalescing buffer
        other = make_batch(make_records(rng, 5))
        other.exporter = "192.0.2.99"
        router.route_with_sequence([], [(other.exporter, 3, 17, "packets", 1.0)])
        assert saved == [[(other.exporter, 3, 17, "packets", 1.0)]]  # nothing of it waits: at once
        router.flush()
        assert saved[-1] == [(first.exporter, first.domain, 300, "records", 1.0)]
    finally:
        router._stop.set()
        for sender in router.senders.values():
            sender.stop()
        router.journal.close()
    again = Journal(tmp_path / "c1")
    entries, sequences = again.recover()
    # One message per owner, all in one record with the sequence entry: every record of the batch is
    # there for each partition key exactly once.
    masks = {}
    for _, e in entries:
        for k, key in enumerate(e.batch.keys):
            bits = np.frombuffer(e.batch.key_mask, dtype=np.uint8) & (1 << k)
            masks[key] = masks.get(key, 0) + int(np.count_nonzero(bits))
    assert masks == {"dst": 300, "src": 300} and len(entries) >= 2
    assert sequences == {f"{first.exporter}|{first.domain}": [300, "records", 1.0]}


def test_a_router_started_over_a_torn_record_counts_it_in_its_metrics(tmp_path) -> None:
    j = Journal(tmp_path / "c9")
    seg = j.append(_entry(1))
    j.close()
    whole = tmp_path / "whole"
    Journal(whole).append(_entry(2))
    record = next(whole.glob("*.journal")).read_bytes()
    with open(tmp_path / "c9" / f"{seg:08d}.journal", "ab") as fh:
        fh.write(record[:-3])  # a kill three bytes before the record's end
    metric = ("celltap_collector_cluster_journal_torn_total", {"collector": "c9"})
    before = REGISTRY.get_sample_value(*metric) or 0
    router = ClusterRouter(RouterConfig(collector_id="c9", journal=str(tmp_path)))
    try:
        assert [e.batch.sequence for _, e in router._replay] == [1]
        assert REGISTRY.get_sample_value(*metric) == before + 1
    finally:
        router.close(timeout=0.1)
