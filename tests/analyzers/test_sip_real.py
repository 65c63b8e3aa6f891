"""sip.log on real traffic: SIPp's UAC calling SIPp's UAS over UDP and TCP, and a raw client sending
keep-alives, compact headers and segmented requests that SIPp answers (tests/analyzers/realnet_sip.py).

Expected records come from tshark's SIP dissection and pairing (tests/analyzers/sip_oracle.py), and
the number of answered calls from SIPp's own statistics. The one request tshark does not dissect (a
TCP segment starting with keep-alive CRLFs) is taken from the bytes the raw client sent, parsed by
Python's `email` package, and is proven to be on the wire by SIPp's real answer to it.
"""

from __future__ import annotations

import email.parser
from pathlib import Path

import pytest

from tests.analyzers import sip_oracle
from tests.analyzers.cell_path import cell_records
from tests.analyzers.harness import run_analyzer, tshark_fields
from tests.analyzers.pcap_events import pcap_to_events
from tests.conftest import require_root, require_tool

pytestmark = pytest.mark.tshark


@pytest.fixture(scope="module")
def sip_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """One capture of the scenario, and SIPp's UAC statistics per transport."""
    require_root()
    for tool in ("sipp", "tcpdump", "tshark"):
        require_tool(tool)
    from tests.analyzers.realnet_sip import capture_sip, uac_stats

    pcap = tmp_path_factory.mktemp("sipreal") / "sip.pcap"
    results = capture_sip(pcap)
    stats = {}
    for t, run in results.items():
        assert run.returncode == 0, f"sipp uac -t {t} failed: {run.stdout[-500:]} {run.stderr[-500:]}"
        (csv,) = pcap.parent.glob(f"sipp-*/uac-{t}.csv")
        stats[t] = uac_stats(csv)
    return str(pcap), stats


def _undissected_request(pcap: str, call_id: str, sent: bytes) -> dict:
    """The raw client's request that tshark left undissected, as sip_oracle messages look."""
    (row,) = tshark_fields(
        pcap,
        f'tcp.payload contains "{call_id}" and not sip',
        ["frame.number", "frame.time_epoch", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport"],
    )
    start, _, rest = sent.lstrip(b"\r\n").partition(b"\r\n")
    method, uri, _ = start.decode().split(" ")
    headers = email.parser.BytesHeaderParser().parsebytes(rest)
    names = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "c": "content-type"}
    return {
        "frame": int(row["frame.number"][0]),
        "time": float(row["frame.time_epoch"][0]),
        "src": (row["ip.src"][0], int(row["tcp.srcport"][0])),
        "dst": (row["ip.dst"][0], int(row["tcp.dstport"][0])),
        "proto": "tcp",
        "method": method,
        "uri": uri,
        "headers": {
            names.get(k.lower(), k.lower()): headers.get_all(k) for k in dict.fromkeys(headers.keys())
        },
    }


def _expected(pcap: str) -> dict:
    from tests.analyzers.realnet_sip import options

    extra = _undissected_request(pcap, "raw-tcp-1@", b"\r\n\r\n" + options(1, "tcp", False))
    return sip_oracle.expected_records(pcap, [extra])


def test_capture_holds_the_cases(sip_capture: tuple[str, dict]) -> None:
    """SIPp completed every call on both transports; the raw client's cases are on the wire."""
    pcap, stats = sip_capture
    # tcpdump lost no frame (a lost segment would hold the cell's stream back and shift times)
    assert not tshark_fields(pcap, "tcp.analysis.lost_segment", ["frame.number"])
    for t in ("u1", "t1", "busy"):
        assert stats[t]["SuccessfulCall(C)"] == stats[t]["TotalCallCreated"] > 0
        assert stats[t]["FailedCall(C)"] == 0
    # the rejected calls carry the rarer sip.log fields
    for field in ("sip.Warning", "sip.Date", "sip.Reply-To"):
        assert tshark_fields(pcap, field, [field]), field
    # SIPp answered the request that followed the keep-alive CRLFs (tshark does not dissect it)
    answers = tshark_fields(pcap, 'sip.Call-ID == "raw-tcp-1@10.60.0.2"', ["sip.Status-Code"])
    assert answers == [{"sip.Status-Code": ["200"]}]
    # two requests in one TCP segment; one request reassembled from two segments; compact headers
    both = tshark_fields(pcap, "tcp and sip.Method", ["sip.Call-ID"])
    assert any(len(r["sip.Call-ID"]) == 2 for r in both)
    assert tshark_fields(pcap, "sip and tcp.reassembled.length", ["frame.number"])
    assert tshark_fields(pcap, 'sip.msg_hdr contains "\\x0d\\x0al: "', ["frame.number"])
    # an RFC 5626 keep-alive (CRLF CRLF) alone, over UDP and over TCP
    alone = tshark_fields(pcap, "udp.payload == 0d:0a:0d:0a or tcp.payload == 0d:0a:0d:0a", ["frame.number"])
    assert len(alone) == 2


@pytest.mark.parametrize(("path", "fmt"), [("cell", "text"), ("cell", "binary"), ("tshark", "text")])
def test_sip_log_matches_tshark_and_sipp(
    sip_capture: tuple[str, dict], path: str, fmt: str, tmp_path: Path
) -> None:
    """Every transaction equals tshark's; the answered INVITEs per transport equal SIPp's count."""
    pcap, stats = sip_capture
    if path == "cell":
        records = cell_records("sip", pcap, tmp_path, fmt)
    else:
        records = run_analyzer(
            "sip", pcap_to_events(pcap, fmt, "udp.port == 5060 or tcp.port == 5060"), tmp_path, fmt
        )
    expected = _expected(pcap)
    sip_oracle.compare(expected, records)
    assert not [r for r in records if r.get("_log") == "weird"]
    for proto, t in (("udp", "u1"), ("tcp", "t1")):
        answered = [
            r
            for r in records
            if r["proto"] == proto
            and r.get("method") == "INVITE"
            and r.get("status_code") == 200
            and r["call_id"].split("@")[0].split("-")[0].isdigit()
        ]
        assert len(answered) == stats[t]["SuccessfulCall(C)"]
        assert all(0 <= r["ringing_time"] <= r["setup_time"] for r in answered)
    busy = [r for r in records if r.get("status_code") == 486]
    assert len(busy) == stats["busy"]["SuccessfulCall(C)"]  # SIPp's busy scenario ends at the 486's ACK
    assert all("setup_time" not in r and r["provisional_codes"] == [100] for r in busy)
