"""A real cluster on loopback: etcd, analysis nodes and routing collectors as processes, IPFIX from
`celltap loadgen ipfix`.  What was sent is rebuilt from the generator's deterministic pools; the
cluster's answers must equal it exactly, and equal the same apps run in one process."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from celltap.collector.apps.base import make_app

from celltap.flowhash import xxh64
from celltap.registry import open_registry
from celltap.ring import Ring
from tests.cluster.procs import APPS, CELLTAP, Cluster, loadgen, loadgen_result, metric, sent_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SKIP = ("complete", "nodes", "errors")


def _reference(
    name: str, per_exporter: dict[str, np.ndarray], params: dict, spec: dict | None = None
) -> dict:
    """The app computed in this one process over every record that was sent."""
    app = make_app(name, spec or APPS[name])
    for exporter, recs in per_exporter.items():
        app.update(recs, exporter)
    return app.answer(params)


def _strip(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in SKIP}


def _check_exact(
    c: Cluster, ask: str, sent: dict[str, np.ndarray], results: list[dict], alive: list[str]
) -> None:
    vol = c.query(ask, "volume", n=0)
    assert vol["complete"] and vol["nodes"] == alive, vol["errors"]
    octets, packets = sum(r["octets"] for r in results), sum(r["packets"] for r in results)
    assert vol["total"] == {  # the generator's records are one-way: nothing in the reverse direction
        "bytes": octets, "packets": packets, "records": sum(r["records"] for r in results),
        "orig_bytes": octets, "orig_packets": packets, "resp_bytes": 0, "resp_packets": 0,
    }  # fmt: skip
    by_exp = c.query(ask, "by_exporter", n=0)
    assert {row["key"]: (row["bytes"], row["packets"], row["records"]) for row in by_exp["top"]} == {
        e: (int(r["octetDeltaCount"].sum()), int(r["packetDeltaCount"].sum()), len(r))
        for e, r in sent.items()
    }
    for app, params in (("volume", {"n": 0}), ("top_talkers", {"n": 20, "by": "packets"}),
                        ("syn_flood", {"n": 0}), ("matrix", {"n": 0})):  # fmt: skip
        got = c.query(ask, app, **params)
        assert _strip(got) == _reference(app, sent, params), app


def test_kill_a_node_and_restart_etcd_mid_stream(etcd_factory, tmp_path) -> None:
    etcd = etcd_factory()
    c = Cluster(tmp_path, etcd.url, ttl=2.0)
    try:
        for n in ("n1", "n2", "n3"):
            c.start_node(n)
        c.wait_members({"n1", "n2", "n3"}, timeout=40)
        for cid in ("c1", "c2"):
            c.start_collector(cid)
        for cid in ("c1", "c2"):
            c.wait_collector(cid, 3)
        gens = [
            (loadgen(c.collector_udp["c1"], 5000, 9, 2, "127.0.0.10", 1, tmp_path, "lg1"), "127.0.0.10", 1),
            (loadgen(c.collector_udp["c2"], 5000, 9, 2, "127.0.0.20", 7, tmp_path, "lg2"), "127.0.0.20", 7),
        ]
        time.sleep(2.5)
        c.nodes["n2"].stop(signal.SIGKILL)  # mid-stream, no goodbye: its lease must expire
        c.wait_members({"n1", "n3"}, among=["n1", "n3"], timeout=10)
        time.sleep(0.5)
        etcd.restart()  # mid-stream again: the registry goes away and comes back
        results = [loadgen_result(g) for g, _, _ in gens]
        for cid, r in zip(("c1", "c2"), results, strict=True):
            assert r["send_errors"] == 0
            c.wait_drained(cid, r["records"])
        c.wait_members({"n1", "n3"}, among=["n1", "n3"])
        sent = {}
        for (_, base, seed), r in zip(gens, results, strict=True):
            sent.update(sent_records(r, 2, base, seed))
        for ask in ("n1", "n3"):
            _check_exact(c, ask, sent, results, ["n1", "n3"])
        for cid in ("c1", "c2"):
            url = c.collector_metrics[cid]
            assert metric(url, "celltap_collector_cluster_dropped_records_total") == 0
            assert metric(url, "celltap_collector_sequence_lost_total") == 0
        promoted = sum(c.status(n)["counts"]["promotions"] for n in ("n1", "n3"))
        assert promoted >= 1  # the survivors really took over n2's state
        # SIGTERM ends collectors and nodes cleanly.
        for proc in [*c.collectors.values(), c.nodes["n1"], c.nodes["n3"]]:
            assert proc.stop() == 0, proc.tail()
        for cid in ("c1", "c2"):
            stats = json.loads(c.collectors[cid].tail().strip().splitlines()[-1])
            assert stats["pending_records"] == 0 and stats["dropped_buffer_full"] == 0
    finally:
        c.stop_all()


def test_fourth_node_takes_a_quarter_and_other_keys_stay(etcd_factory, tmp_path) -> None:
    etcd = etcd_factory()
    c = Cluster(tmp_path, etcd.url, ttl=3.0)
    # DARTA's user-based accounting: one mapping from a file, one from the registry.
    users_file = tmp_path / "users.txt"
    users_file.write_text("10.0.0.0/9 alice\n10.200.0.0/16 carol\n")
    apps = {**APPS, "users": {"kind": "user_accounting", "key": "src", "users_file": str(users_file)}}
    with open_registry(etcd.url) as reg:
        reg.put(f"/celltap/{c.name}/users/10.128.0.0_9", {"user": "bob"})
    try:
        for n in ("n1", "n2", "n3"):
            c.start_node(n, apps)
        c.wait_members({"n1", "n2", "n3"}, timeout=40)
        c.start_collector("c1")
        c.wait_collector("c1", 3)
        gen = loadgen(c.collector_udp["c1"], 6000, 7, 2, "127.0.0.10", 3, tmp_path, "lg")
        time.sleep(2.0)
        c.start_node("n4", apps)
        c.wait_collector("c1", 4)
        result = loadgen_result(gen)
        c.wait_drained("c1", result["records"])
        sent = sent_records(result, 2, "127.0.0.10", 3)
        nodes = ["n1", "n2", "n3", "n4"]
        _check_exact(c, "n4", sent, [result], nodes)

        both = tmp_path / "users-all.txt"
        both.write_text(users_file.read_text() + "10.128.0.0/9 bob\n")
        spec = {"kind": "user_accounting", "key": "src", "users_file": str(both)}
        users = c.query("n2", "users", n=0)
        assert _strip(users) == _reference("users", sent, {"n": 0}, spec)
        assert {row["user"] for row in users["top"]} >= {"alice", "bob", "carol"}

        # Where each source address ended up, from each node's own share.
        holders: dict[str, set[str]] = {}
        for n in nodes:
            for row in c.query(n, "volume", n=0, local=1)["top"]:
                holders.setdefault(row["key"], set()).add(n)
        r3 = Ring({"n1": 1, "n2": 1, "n3": 1})
        r4 = r3.with_member("n4")
        moved = 0
        for key, held in holders.items():
            h = xxh64(bytes(int(x) for x in key.split(".")))
            old, new = r3.owner_of(h), r4.owner_of(h)
            if new == "n4":
                moved += 1
                assert held <= {old, "n4"} and "n4" in held, key
            else:
                assert held == {old}, key  # a key that did not move stays on its node
        share = moved / len(holders)
        assert 0.12 < share < 0.40, share

        # The command line answers cluster-wide too, from the registry alone.
        reg = ["--registry", etcd.url, "--cluster", c.name, "--json"]
        top = subprocess.run([*CELLTAP, "top", "top_talkers", "--by", "packets", "--n", "7", *reg],
                             capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        params = {"by": "packets", "n": 7}
        assert _strip(json.loads(top.stdout)) == _reference("top_talkers", sent, params)
        status = subprocess.run([*CELLTAP, "status", "--interval", "0", *reg],
                                capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        view = json.loads(status.stdout)
        assert sorted(view["members"]["nodes"]) == nodes and list(view["members"]["collectors"]) == ["c1"]
        assert sum(v["counts"]["records_primary"] for v in view["nodes"].values()) >= result["records"]
    finally:
        c.stop_all()
