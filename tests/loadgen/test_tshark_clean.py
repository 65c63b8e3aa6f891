"""tshark reads every scenario's capture with no malformed packet, no expert error and every
checksum it can verify (IPv4 header, TCP, UDP, ICMP, ICMPv6, SCTP CRC32c) good.

Deliberate faults only raise expert *warnings* in tshark 4.0, which BAD_FILTER tolerates:
tcpfaults gives "previous segment not captured", "ACKed segment that wasn't captured",
"out-of-order", retransmissions and "connection reset"; frag's overlaps are fields
(ip.fragment.overlap[.conflict]), checked in test_scenarios_tshark.py; ssh gives one warning per
ECDH reply because tshark 4.0 does not decode ed25519 signature blobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.scenario import all_scenarios
from tests.loadgen.oracle import BAD_FILTER, tshark, write_scenario

COUNTS = {"small": 5000, "cps": 100, "mixed": 150, "frag": 45, "tcpfaults": 24}

pytestmark = pytest.mark.tshark


@pytest.mark.parametrize("name", [sc.name for sc in all_scenarios()])
def test_tshark_finds_nothing_wrong(tmp_path: Path, name: str) -> None:
    pcap = write_scenario(tmp_path / f"{name}.pcap", name, COUNTS.get(name, 20))
    frames = tshark(pcap, "-T", "fields", "-e", "frame.number").split()
    assert len(frames) > 0
    bad = tshark(pcap, "-Y", BAD_FILTER)
    assert bad == "", f"tshark flags frames of {name}:\n{bad[:3000]}"
