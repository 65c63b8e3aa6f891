"""Fuzz harness: what an analysis node does with a RecordBatchMsg from a collector (gRPC).

The input is a serialised `celltap.RecordBatchMsg` (protobuf): the node parses it, rebuilds the
RecordBatch from its template set and packed records, checks count and key mask, and applies it to
its apps (NodeState.handle).  A finding is any exception out of `handle`, an Ack that accepts a batch
whose count disagrees with its records, or a rejected-record count above what the message held.
"""

from __future__ import annotations

import logging

import numpy as np
from celltap.collector.apps.base import make_app
from celltap.collector.node_state import NodeState
from celltap.proto import celltap_pb2 as pb
from google.protobuf.message import DecodeError

from celltap.ipfix import template_from_names
from celltap.ipfix.records import RecordBatch

logging.getLogger("celltap.node").setLevel(logging.CRITICAL)  # rejections are logged by design


def _node() -> NodeState:
    apps = [
        make_app("volume", {"kind": "volume", "key": "src"}),
        make_app("mix", {"kind": "app_mix", "key": "flow"}),
        make_app("talkers", {"kind": "top_talkers", "key": "src"}),
        make_app("scan", {"kind": "port_scan"}),
    ]
    return NodeState("n1", apps)


def test_one_input(data: bytes) -> None:
    """Parse and apply one message; raises only for a finding."""
    msg = pb.RecordBatchMsg()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return  # the gRPC layer rejects what does not parse as the message
    node = _node()
    ack = node.handle(msg)
    counts = node.status()["counts"]
    if (
        not ack.error
        and counts["records_primary"] + counts["records_replica"] + counts["duplicate_records"]
        > len(msg.records) * 8 + 8
    ):
        raise AssertionError("accepted more records than the message could hold")
    if counts["rejected_records"] > len(msg.records):
        raise AssertionError(
            f"rejected {counts['rejected_records']} records of a {len(msg.records)}-byte batch"
        )


def seeds() -> list[bytes]:
    """Batches as the collector's router builds them (fixed and variable-length templates)."""
    out = []
    fixed = template_from_names(
        300,
        [("sourceIPv4Address", None), ("destinationIPv4Address", None), ("octetDeltaCount", None),
         ("packetDeltaCount", None), ("protocolIdentifier", None)],
    )  # fmt: skip
    n = 4
    recs = np.zeros(n, dtype=fixed.out_dtype)
    recs["sourceIPv4Address"] = np.arange(n) + 0x0A000001
    recs["octetDeltaCount"] = 100
    recs["packetDeltaCount"] = 1
    var = template_from_names(301, [("sourceIPv4Address", None), ("applicationName", None)])
    vrecs = np.zeros(2, dtype=var.out_dtype)
    vrecs["sourceIPv4Address"] = [1, 2]
    vrecs["applicationName"] = np.array(["http", "dns"], dtype=object)
    for seq, (t, r) in enumerate(((fixed, recs), (var, vrecs))):
        tb, rb = RecordBatch("192.0.2.1", 1, t.template_id, t, r).to_wire()
        msg = pb.RecordBatchMsg(
            collector="c1", sequence=seq, origin="n1", exporter="192.0.2.1", domain=1, template=tb,
            records=rb, count=len(r), keys=["src", "flow"], key_mask=bytes([3] * len(r)), delivery=seq,
        )  # fmt: skip
        out.append(msg.SerializeToString())
    return out
