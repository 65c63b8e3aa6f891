"""tshark reads every scenario's capture with no malformed packet, no expert error, every checksum
it can verify (IPv4 header, TCP, UDP, ICMP, ICMPv6, SCTP CRC32c) good, and no expert warning
beyond the ones a scenario causes on purpose:

- tcpfaults: "previous segment not captured" and "ACKed segment that wasn't captured" (the loss
  case and the reordered segment's early arrival), "out-of-order" (reorder), "connection reset";
  its retransmissions are expert *notes*, below warning;
- ssh (and mixed, which contains ssh): tshark 4.0 does not decode ed25519 signature blobs inside
  the ECDH reply and warns "Decoded 19 bytes, but packet legnth is 83 bytes" (sic) once per reply;
- frag: overlaps are flagged in fields (ip.fragment.overlap[.conflict]), not as expert info; they
  are checked in test_scenarios_tshark.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from celltap.loadgen.scenario import all_scenarios

from tests.loadgen.oracle import BAD_FILTER, fields, tshark, write_scenario

COUNTS = {"small": 5000, "cps": 100, "mixed": 150, "frag": 45, "tcpfaults": 24}
SSH_SIGNATURE = "Decoded 19 bytes, but packet legnth is 83 bytes"
ALLOWED_WARNINGS = {
    "tcpfaults": {
        "Previous segment(s) not captured (common at capture start)",
        "ACKed segment that wasn't captured (common at capture start)",
        "This frame is a (suspected) out-of-order segment",
        "Connection reset (RST)",
    },
    "ssh": {SSH_SIGNATURE},
    "mixed": {SSH_SIGNATURE},
}

pytestmark = pytest.mark.tshark


@pytest.mark.parametrize("name", [sc.name for sc in all_scenarios()])
def test_tshark_finds_nothing_wrong(tmp_path: Path, name: str) -> None:
    pcap = write_scenario(tmp_path / f"{name}.pcap", name, COUNTS.get(name, 20))
    rows = fields(pcap, ["frame.number", "_ws.expert.severity", "_ws.expert.message"], aggregator="|")
    assert len(rows) > 0
    assert tshark(pcap, "-Y", BAD_FILTER) == "", f"tshark flags frames of {name}"
    assert _warnings(rows) <= ALLOWED_WARNINGS.get(name, set())


def _warnings(rows: list[list[str]]) -> set[str]:
    """Expert messages of warning severity or above (PI_WARN = 0x00600000)."""
    out = set()
    for _, severities, messages in rows:
        if severities:
            for sev, msg in zip(severities.split("|"), messages.split("|"), strict=True):
                if int(sev) >= 0x00600000:
                    out.add(msg)
    return out


def test_tcpfaults_warnings_do_appear(tmp_path: Path) -> None:
    pcap = write_scenario(tmp_path / "tf.pcap", "tcpfaults", 12)
    rows = fields(pcap, ["frame.number", "_ws.expert.severity", "_ws.expert.message"], aggregator="|")
    assert _warnings(rows) == ALLOWED_WARNINGS["tcpfaults"]
