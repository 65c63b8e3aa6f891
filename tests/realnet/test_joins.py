"""`celltap analyze` on the test bed's real traffic, with its built-in rules: every log written, and the
records join (uid and Community ID) into connections.

The captures are the test bed's (real servers and clients, tests/realnet/); the analysis is the one
command a new user runs, without any configuration: `celltap analyze all.tcpdump.pcap -o DIR`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import communityid
import pytest

APP_LOGS = ("http", "dns", "tls", "smtp", "sip")
PROTO = {"tcp": 6, "udp": 17}


@pytest.fixture(scope="module")
def logs(capdir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("joins") / "logs"
    p = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "analyze", str(capdir / "all.tcpdump.pcap"), "-o", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return {
        f.stem: [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        for f in out.glob("*.log")
    }


def test_every_protocol_log_is_written_with_the_built_in_rules(logs: dict[str, list[dict]]) -> None:
    for name in ("conn", *APP_LOGS):
        assert logs.get(name), f"{name}.log is missing or empty"


def test_every_record_joins_exactly_one_connection(logs: dict[str, list[dict]]) -> None:
    conns = Counter(c["uid"] for c in logs["conn"])
    assert all(n == 1 for n in conns.values()), "a uid names two connections"
    by_uid = {c["uid"]: c for c in logs["conn"]}
    checked = 0
    for name in (*APP_LOGS, "x509", "weird"):
        for rec in logs.get(name, []):
            if name == "weird" and "uid" not in rec:
                continue  # the cell's drop counters name no connection
            conn = by_uid.get(rec["uid"])
            assert conn is not None, f"{name}.log record {rec} has no conn.log record"
            if "community_id" in rec:
                assert rec["community_id"] == conn["community_id"], (name, rec)
            for f in ("id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"):
                if f in rec:
                    assert rec[f] == conn[f], (name, f, rec, conn)
            checked += 1
    assert checked >= sum(len(logs[n]) for n in APP_LOGS)


def test_community_ids_equal_the_reference_package(logs: dict[str, list[dict]]) -> None:
    ref = communityid.CommunityID()
    n = 0
    for c in logs["conn"]:
        if c["proto"] not in PROTO:
            continue
        t = communityid.FlowTuple(
            PROTO[c["proto"]], c["id.orig_h"], c["id.resp_h"], c["id.orig_p"], c["id.resp_p"]
        )
        assert c["community_id"] == ref.calc(t), c
        n += 1
    assert n == len([c for c in logs["conn"] if c["proto"] in PROTO]) > 20
