"""The cluster's fault matrix: one real cluster on loopback per fault, exactness judged per key.

Topology (issue #19): etcd, 3 analysis nodes, 1 routing collector with one worker, 2 IPFIX
exporters (`celltap loadgen ipfix`), about 2,560 source keys.  The fault happens `AT` seconds into
the stream.  Three apps count every record by source address, by destination address and by
exporter; after the stream, each node's cluster-wide answer must equal the same app run here over
what the generators sent (rebuilt from their deterministic pools), key for key.

Where records are lost before they reach the collector (the collector is down), the answer cannot
be exact; instead the three apps must agree with each other (no batch applied for one app's keys
and not another's) and the records missing must equal what the metrics count
(`celltap_collector_sequence_lost_total` of the restarted collector, plus drops).

Used by tests/cluster/test_fault_matrix.py (each fault once) and bench/bench_faults.py (5 runs).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from celltap.collector.apps.base import make_app

from tests.cluster.procs import Cluster, loadgen, loadgen_result, metric, sent_records

APPS = {
    "by_src": {"kind": "volume", "key": "src"},
    "by_dst": {"kind": "volume", "key": "dst"},
    "by_exporter": {"kind": "volume", "key": "exporter"},
}
TTL = 2.0  # node lease TTL: pauses are chosen around it
AT = 3.0  # seconds into the stream when the fault starts
RATE, DURATION = int(os.environ.get("CELLTAP_FAULT_RATE", "15000")), 9.0  # records/s per generator, s
PAUSES = {"pause_short": 0.5 * TTL, "pause_ttl": 1.5 * TTL, "pause_long": 4 * TTL}
FAULTS = (
    "none", "kill_node", "etcd_restart", "collector_restart", *PAUSES, "malformed",
    "pause_during_etcd_restart",
)  # fmt: skip
LOSSY = {"collector_restart"}  # records can be lost before the collector: judged by the count


@dataclass
class Outcome:
    """What one run of one fault found."""

    fault: str
    expected: int  # records the generators got onto the wire
    applied: dict[str, int]  # per app: records the cluster holds
    counted_loss: int  # records the metrics say were lost before or at the collector
    mismatched_keys: dict[str, int] = field(default_factory=dict)  # per app: keys whose totals differ
    notes: list[str] = field(default_factory=list)

    @property
    def duplicates(self) -> int:
        """Records held beyond what was sent and not counted lost (0 when exact)."""
        return max(0, max(self.applied.values()) - (self.expected - self.counted_loss))

    @property
    def uncounted_loss(self) -> int:
        """Records neither held nor counted lost (0 when exact)."""
        return max(0, self.expected - self.counted_loss - min(self.applied.values()))

    @property
    def exact(self) -> bool:
        """No duplicate, no uncounted loss, and every key exact (or, lossy, every app agreeing)."""
        return (
            self.duplicates == 0
            and self.uncounted_loss == 0
            and len(set(self.applied.values())) == 1
            and not any(self.mismatched_keys.values())
        )


def malformed_v9() -> bytes:
    """A NetFlow v9 datagram whose template's fields are all 0 bytes long, plus data for it."""
    template = struct.pack("!HHHH", 0, 16, 300, 2) + struct.pack("!HHHH", 8, 0, 12, 0)
    data = struct.pack("!HH", 300, 8) + b"\x01\x02\x03\x04"
    header = struct.pack("!HHIIII", 9, 2, 1000, int(time.time()), 1, 0)
    return header + template + data


def _fault(fault: str, c: Cluster, etcd: Any, cid: str) -> None:
    if fault == "kill_node":
        c.nodes["n2"].stop(signal.SIGKILL)
    elif fault == "etcd_restart":
        etcd.restart()
    elif fault == "collector_restart":
        c.collectors[cid].stop(signal.SIGKILL)
        time.sleep(2.0)
        c.restart_collector(cid)
    elif fault in PAUSES:
        c.nodes["n2"].p.send_signal(signal.SIGSTOP)
        time.sleep(PAUSES[fault])
        c.nodes["n2"].p.send_signal(signal.SIGCONT)
    elif fault == "malformed":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.99", 0))
            s.sendto(malformed_v9(), ("127.0.0.1", c.collector_udp[cid]))
    elif fault == "pause_during_etcd_restart":
        c.nodes["n2"].p.send_signal(signal.SIGSTOP)
        etcd.restart()
        time.sleep(1.5 * TTL)
        c.nodes["n2"].p.send_signal(signal.SIGCONT)
    elif fault != "none":
        raise ValueError(f"unknown fault {fault!r}")


def _key_totals(answer: dict) -> dict[str, int]:
    return {row["key"]: int(row["records"]) for row in answer["top"]}


def run(fault: str, etcd: Any, tmp: Path, duration: float = DURATION) -> Outcome:
    """One cluster, one stream of `duration` seconds, one fault `AT` seconds in; the outcome judged
    against the generators' records."""
    c = Cluster(tmp, etcd.url, ttl=TTL)
    cid = "c1"
    try:
        for n in ("n1", "n2", "n3"):
            c.start_node(n, APPS)
        c.wait_members({"n1", "n2", "n3"}, timeout=40)
        c.start_collector(cid)
        c.wait_collector(cid, 3)
        gens = [
            (loadgen(c.collector_udp[cid], RATE, duration, 1, base, seed, tmp, f"lg{seed}"), base, seed)
            for base, seed in (("127.0.0.10", 1), ("127.0.0.20", 7))
        ]
        time.sleep(AT)
        _fault(fault, c, etcd, cid)
        results = [loadgen_result(g, timeout=60) for g, _, _ in gens]
        alive = sorted(n for n, p in c.nodes.items() if p.alive())
        c.wait_members(set(alive), among=alive, timeout=30)
        c.wait_collector(cid, len(alive), timeout=30)
        expected = sum(r["records"] for r in results)
        c.wait_settled(cid, timeout=40)
        counted = int(
            metric(c.collector_metrics[cid], "celltap_collector_sequence_lost_total")
            + metric(c.collector_metrics[cid], "celltap_collector_cluster_dropped_records_total")
        )
        answers = {app: c.query(alive[0], app, n=0) for app in APPS}
        applied = {app: int(a["total"]["records"]) for app, a in answers.items()}
        out = Outcome(fault, expected, applied, counted)
        for app, a in answers.items():
            if not a["complete"]:
                out.notes.append(f"{app}: incomplete answer {a.get('errors')}")
        if fault not in LOSSY:
            sent: dict[str, np.ndarray] = {}
            for (_, base, seed), r in zip(gens, results, strict=True):
                sent.update(sent_records(r, 1, base, seed))
            for app, spec in APPS.items():
                ref = make_app(app, spec)
                for exporter, recs in sent.items():
                    ref.update(recs, exporter)
                want, got = _key_totals(ref.answer({"n": 0})), _key_totals(answers[app])
                out.mismatched_keys[app] = sum(
                    1 for k in want.keys() | got.keys() if want.get(k, 0) != got.get(k, 0)
                )
        return out
    finally:
        c.stop_all()
