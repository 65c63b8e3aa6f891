"""Reassembled TCP streams, both directions, byte for byte against tshark's follow (raw)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from celltap.pcap import PcapWriter
from tests.cell.captures import merge, tcp_session
from tests.cell.oracle import endpoint, tshark_streams
from tests.cell.runner import run_cell, write_config
from tests.cell.wire import parse_text, streams
from tests.conftest import require_tool

FAULTS = [
    frozenset(),
    frozenset({"reorder"}),
    frozenset({"retransmit"}),
    frozenset({"overlap"}),
    frozenset({"wrap"}),
    frozenset({"loss"}),
    frozenset({"rst"}),
    frozenset({"reorder", "retransmit", "overlap", "wrap"}),
    frozenset({"loss", "reorder", "wrap"}),
]

CONFIG = """
tcp_default:
  if: default
  proto: TCP
  format: text
  body: yes
"""


@pytest.mark.tshark
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_streams_match_tshark_follow(tmp_path, v6):
    tshark = require_tool("tshark")
    rng = random.Random(7 + v6)
    convs = [tcp_session(rng, i, f, v6=v6) for i, f in enumerate(FAULTS)]
    pcap = tmp_path / "faults.pcap"
    with PcapWriter(str(pcap)) as w:
        for ts, frame in merge(convs):
            w.write(ts, frame)
    home = tmp_path / "home"
    cfg = write_config(tmp_path / "c.yaml", home, CONFIG)
    proc, out = run_cell(cfg, pcap, home, ["tcp/default"])
    assert proc.returncode == 0, proc.stderr
    ours = streams(parse_text(out["tcp/default"]))
    theirs = tshark_streams(tshark, str(pcap), len(convs))
    assert len(theirs) == len(convs)
    holes = 0
    for c in convs:
        cip = str(ipaddress.ip_address(c.cip))
        sip = str(ipaddress.ip_address(c.sip))
        t_client, t_server, t_holes = theirs[(endpoint(cip, c.cport), endpoint(sip, c.sport))]
        holes += t_holes
        if (c.cip, c.cport) < (c.sip, c.sport):
            flow = (cip, c.cport, sip, c.sport, 0, "ipv6" if v6 else "ipv4", "tcp")
            o_client, o_server = ours[flow]
        else:
            flow = (sip, c.sport, cip, c.cport, 0, "ipv6" if v6 else "ipv4", "tcp")
            o_server, o_client = ours[flow]
        assert o_client == t_client, f"client->server stream differs for {flow}"
        assert o_server == t_server, f"server->client stream differs for {flow}"
        assert len(o_client) > 1000 and len(o_server) > 1000
    assert holes >= 2  # the loss cases really lost bytes (both directions), and we skipped the same holes


def _write_scenario(path, name: str, count: int, seed: int = 3) -> None:
    import celltap.loadgen.scenarios  # noqa: F401  (registers the scenarios)
    from celltap.loadgen.scenario import get

    with PcapWriter(str(path), nanosecond=True) as w:
        for ts, frame in get(name).generate(seed, count):
            w.write(ts, frame)


@pytest.mark.tshark
@pytest.mark.parametrize("scenario", ["tcpfaults", "mixed"])
def test_loadgen_streams_match_tshark_follow(tmp_path, scenario):
    tshark = require_tool("tshark")
    pcap = tmp_path / f"{scenario}.pcap"
    _write_scenario(pcap, scenario, 40)
    home = tmp_path / "home"
    cfg = write_config(tmp_path / "c.yaml", home, CONFIG)
    proc, out = run_cell(cfg, pcap, home, ["tcp/default"])
    assert proc.returncode == 0, proc.stderr
    ours = {k: v for k, v in streams(parse_text(out["tcp/default"])).items() if k[6] == "tcp"}
    assert len(ours) >= 10
    theirs = tshark_streams(tshark, str(pcap), len(ours) + 5)
    compared = 0
    for flow, (o1, o2) in ours.items():
        e1, e2 = endpoint(flow[0], flow[1]), endpoint(flow[2], flow[3])
        if (e1, e2) in theirs:
            t1, t2, _ = theirs[(e1, e2)]
        else:
            t2, t1, _ = theirs[(e2, e1)]
        assert o1 == t1, f"endpoint 1 stream differs for {flow}"
        assert o2 == t2, f"endpoint 2 stream differs for {flow}"
        compared += 1
    assert compared == len(ours)
