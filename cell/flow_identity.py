"""The identity of a cell's flow as every output names it: canonical key bytes, flowId and uid.

A flow's uid (celltap.flowid) is a pure function of its canonical key and the microsecond of its
first packet, so it is computed when the flow leaves the table, never on the per-packet path. Two
consumers need it: the conn.log writer (cell.analyze.conn_log, one flow at a time) and the IPFIX
exporter (cell.flow_export, a batch of flows at once, vectorised with numpy). This module serves both
without either depending on the other.
"""

from __future__ import annotations

import struct

import numpy as np
from celltap.cell.flow_table import Flow

from celltap.flowhash import xxh64_rows
from celltap.flowid import flow_id_from_key, uid_from_flow_id

UID_SEED = 0  # the cluster's uid seed (celltap.flowid); every component uses the same one


def flow_key_bytes(flow: Flow) -> bytes:
    """The canonical key bytes of a flow (celltap.flowkey layout)."""
    return (
        bytes((flow.l3, flow.l4))
        + flow.addr1
        + flow.port1.to_bytes(2, "big")
        + flow.addr2
        + flow.port2.to_bytes(2, "big")
    )


def flow_id(flow: Flow) -> int:
    """The 64-bit flowId of a flow (the uid's value; IPFIX element 148)."""
    return flow_id_from_key(flow_key_bytes(flow), flow.start_ns // 1000, UID_SEED)


def flow_uid(flow: Flow) -> str:
    """The connection's uid (the same one every analyzer record and IPFIX record of this flow carries)."""
    return uid_from_flow_id(flow_id(flow))


def flow_ids(flows: list[Flow]) -> np.ndarray:
    """flowIds (uint64) of many flows of one IP version at once: one XXH64 pass over all their keys."""
    if not flows:
        return np.zeros(0, np.uint64)
    rows = b"".join(flow_key_bytes(f) + struct.pack("<Q", f.start_ns // 1000) for f in flows)
    width = len(rows) // len(flows)
    return xxh64_rows(np.frombuffer(rows, np.uint8).reshape(len(flows), width), UID_SEED)
