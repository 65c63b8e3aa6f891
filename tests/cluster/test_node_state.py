"""The node's exactly-once bookkeeping, driven message by message (sans-IO): replicas held as
shadows, promoted when their primary leaves, duplicates of re-sent batches dropped."""

from __future__ import annotations

import numpy as np
from celltap.collector.apps.base import make_app
from celltap.collector.node_state import NodeState, SeenSet
from celltap.proto import celltap_pb2 as pb

from tests.cluster.records import make_batch, make_records


def _msg(
    recs: np.ndarray,
    seq: int,
    origin: str,
    replica_of: str = "",
    collector: str = "c1",
    incarnation: str = "1",
) -> pb.RecordBatchMsg:
    tb, rb = make_batch(recs).to_wire()
    return pb.RecordBatchMsg(
        collector=collector, sequence=seq, origin=origin, replica_of=replica_of, exporter="192.0.2.1",
        domain=1, template=tb, records=rb, count=len(recs), keys=["src"], delivery=seq,
        replica_incarnation=incarnation if replica_of else "",
    )  # fmt: skip


def _node(nid: str) -> NodeState:
    return NodeState(nid, [make_app("volume", {"kind": "volume", "key": "src"})])


def _total(state: NodeState) -> int:
    return sum(v[0] for v in state.live.apps[0].totals.values())


MEMBERS = {m: {"incarnation": "1"} for m in ("a", "b")}


def test_replica_is_promoted_when_its_primary_leaves_and_resends_are_dropped() -> None:
    recs = make_records(np.random.default_rng(1), 500)
    bytes_sent = int(recs["octetDeltaCount"].sum())
    b = _node("b")
    b.set_members(MEMBERS)
    ack = b.handle(_msg(recs, 7, origin="a", replica_of="a"))
    assert not ack.duplicate and not ack.error
    assert _total(b) == 0  # held for a, not counted as b's own
    assert b.set_members({"b": MEMBERS["b"]}) == ["a"]
    assert _total(b) == bytes_sent
    # The collector re-sends a's unacknowledged batch to its new owner b: same identity, dropped.
    again = b.handle(_msg(recs, 7, origin="a"))
    assert again.duplicate and _total(b) == bytes_sent
    # A late replica for a primary known to be gone counts as b's own at once.
    late = make_records(np.random.default_rng(2), 100)
    b.handle(_msg(late, 8, origin="a", replica_of="a"))
    assert _total(b) == bytes_sent + int(late["octetDeltaCount"].sum())


def test_resend_reaching_the_backup_before_it_sees_the_primary_leave_is_not_counted_twice() -> None:
    recs = make_records(np.random.default_rng(3), 300)
    b = _node("b")
    b.set_members(MEMBERS)
    b.handle(_msg(recs, 1, origin="a", replica_of="a"))
    assert b.handle(_msg(recs, 1, origin="a")).duplicate  # in a's shadow already
    b.set_members({"b": MEMBERS["b"]})
    assert _total(b) == int(recs["octetDeltaCount"].sum())


def test_same_sequence_from_another_collector_or_origin_is_not_a_duplicate() -> None:
    recs = make_records(np.random.default_rng(4), 50)
    b = _node("b")
    b.set_members(MEMBERS)
    assert not b.handle(_msg(recs, 1, origin="b")).duplicate
    assert not b.handle(_msg(recs, 1, origin="b", collector="c2")).duplicate
    assert b.handle(_msg(recs, 1, origin="b")).duplicate
    assert _total(b) == 2 * int(recs["octetDeltaCount"].sum())


def test_restarted_primary_counts_as_having_left() -> None:
    recs = make_records(np.random.default_rng(5), 80)
    b = _node("b")
    b.set_members(MEMBERS)
    b.handle(_msg(recs, 1, origin="a", replica_of="a"))
    assert b.set_members({**MEMBERS, "a": {"incarnation": "2"}}) == ["a"]
    assert _total(b) == int(recs["octetDeltaCount"].sum())


def test_malformed_batch_is_rejected_and_counted() -> None:
    recs = make_records(np.random.default_rng(6), 10)
    b = _node("b")
    bad = _msg(recs, 1, origin="b")
    bad.count = 11
    ack = b.handle(bad)
    # The batch holds 10 records and claims 11: 10 are rejected, the claim's excess is counted apart.
    counts = b.status()["counts"]
    assert ack.error and counts["rejected_records"] == 10 and counts["overclaimed_records"] == 1
    assert _total(b) == 0
    worse = _msg(recs, 2, origin="b")
    worse.template = b"\x00\x02\x00\x05\x01"
    assert b.handle(worse).error


def test_seen_set_is_bounded() -> None:
    s = SeenSet(limit=3)
    for i in range(5):
        s.add(("c", "o", i))
    assert ("c", "o", 4) in s and ("c", "o", 1) not in s and len(s) == 3


def test_seen_set_forgets_the_oldest_stream_first() -> None:
    s = SeenSet(limit=10, max_streams=2)
    s.add(("c@1", "o", 1))
    s.add(("c@2", "o", 1))
    s.add(("c@3", "o", 1))
    assert ("c@1", "o", 1) not in s and ("c@2", "o", 1) in s and ("c@3", "o", 1) in s


def test_replica_for_a_restarted_primary_is_not_taken_for_its_predecessor() -> None:
    """b saw a@1 leave; a@2 (same id, new process) gets records, and b their replicas, before b
    has seen a@2 join: those replicas belong in a@2's shadow, not in b's live state."""
    recs = make_records(np.random.default_rng(7), 60)
    b = _node("b")
    b.set_members(MEMBERS)
    b.set_members({"b": MEMBERS["b"]})  # a@1 left
    b.handle(_msg(recs, 1, origin="a", replica_of="a", incarnation="2"))
    assert _total(b) == 0
    b.set_members({**MEMBERS, "a": {"incarnation": "2"}})
    assert _total(b) == 0  # a@2 is alive and holds them
    b.set_members({"b": MEMBERS["b"]})  # a@2 leaves too: now they are b's
    assert _total(b) == int(recs["octetDeltaCount"].sum())


def test_batches_for_an_earlier_incarnation_are_fenced_after_a_reset() -> None:
    # A paused node's sockets still hold batches routed to its previous life; after its lease
    # expired and it came back as a new incarnation, they must not be applied (the collector
    # re-routed them to the node's backups, which applied them already).
    recs = make_records(np.random.default_rng(9), 200)
    n = NodeState("n", [make_app("volume", {"kind": "volume", "key": "src"})], incarnation="i0")
    first = _msg(recs, 1, origin="n")
    first.incarnation = "i0"
    assert not n.handle(first).fenced and _total(n) == int(recs["octetDeltaCount"].sum())
    n.reset("i1")
    assert _total(n) == 0
    stale = _msg(recs, 2, origin="n")
    stale.incarnation = "i0"
    ack = n.handle(stale)
    assert ack.fenced and not ack.duplicate and _total(n) == 0
    assert n.counts["fenced_records"] == len(recs)
    fresh = _msg(recs, 3, origin="n")
    fresh.incarnation = "i1"
    assert not n.handle(fresh).fenced and _total(n) == int(recs["octetDeltaCount"].sum())
    unchecked = _msg(recs, 4, origin="n")  # from a collector that names no incarnation
    assert not n.handle(unchecked).fenced
