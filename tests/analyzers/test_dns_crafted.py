"""DNS cases no real client or server makes on purpose: crafted messages (labelled so), with tshark as
the oracle of what a decoder should read from them; and the pairing rules (timeouts, bounds, lone
responses) driven sans-IO with crafted messages.

dnspython refuses every forward compression pointer (BadPointer) while resolvers and tshark follow
them; the tests show that disagreement and follow tshark.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from celltap.cell.analyzers.dns_analyzer import DnsAnalyzer
from celltap.cell.analyzers.dns_message import parse_message
from celltap.cell.sdk.events import FlowId

from tests.analyzers.harness import run_analyzer, tshark_fields
from tests.analyzers.pcap_events import pcap_to_events
from tests.analyzers.pcapgen import Conversation, write_pcap
from tests.analyzers.traffic import _name
from tests.conftest import require_tool

FILTER = "udp.port == 53 or tcp.port == 53"


def _head(ident: int, flags: int, qd: int, an: int, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def _ptr(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def _query(ident: int, name: str, qtype: int) -> bytes:
    return _head(ident, 0x0100, 1, 0) + _name(name) + struct.pack("!HH", qtype, 1)


def crafted_forward_pointer() -> bytes:
    """Crafted: the question's name is a pointer forward, to the CNAME target in the answer's rdata."""
    question = _ptr(30) + struct.pack("!HH", 5, 1)  # 12 + 6 = 18: the answer; its rdata starts at 30
    rdata = _name("www.example.org")
    answer = _ptr(12) + struct.pack("!HHIH", 5, 1, 60, len(rdata)) + rdata
    return _head(7, 0x8180, 1, 1) + question + answer


def crafted_loop() -> bytes:
    """Crafted: the first answer's owner name points at itself; the second answer is fine."""
    question = _name("a.example.org") + struct.pack("!HH", 1, 1)
    at = 12 + len(question)
    a1 = _ptr(at) + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    a2 = _ptr(12) + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 2])
    return _head(8, 0x8180, 1, 2) + question + a1 + a2


def crafted_cname_loop() -> bytes:
    """Crafted: a CNAME whose target is two pointers pointing at each other, then an A record."""
    question = _name("b.example.org") + struct.pack("!HH", 5, 1)
    at = 12 + len(question)
    rdata_at = at + 12
    rdata = _ptr(rdata_at + 2) + _ptr(rdata_at)
    a1 = _ptr(12) + struct.pack("!HHIH", 5, 1, 60, len(rdata)) + rdata
    a2 = _ptr(12) + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 3])
    return _head(9, 0x8180, 1, 2) + question + a1 + a2


def _run(convs: list[Conversation], tmp: Path) -> tuple[str, list[dict]]:
    pcap = str(tmp / "crafted.pcap")
    write_pcap(convs, pcap)
    return pcap, run_analyzer("dns", pcap_to_events(pcap, "text", FILTER), tmp)


@pytest.mark.tshark
def test_crafted_forward_pointer_decodes_as_tshark_does(tmp_path: Path) -> None:
    require_tool("tshark")
    import dns.message
    import dns.name

    msg = crafted_forward_pointer()
    with pytest.raises(dns.name.BadPointer):
        dns.message.from_wire(msg)
    convs = [
        Conversation(
            "udp",
            ("10.1.0.1", 40000),
            ("10.1.0.2", 53),
            [(True, _query(7, "www.example.org", 5)), (False, msg)],
        )
    ]
    pcap, records = _run(convs, tmp_path)
    (rec,) = [r for r in records if not r.get("_log")]
    theirs = tshark_fields(pcap, "dns.flags.response == 1", ["dns.qry.name", "dns.cname"])
    assert theirs == [{"dns.qry.name": [rec["query"]], "dns.cname": rec["answers"]}]
    assert rec["rtt"] is not None and rec["rcode_name"] == "NOERROR"


@pytest.mark.tshark
def test_crafted_pointer_loops_are_weird_and_the_rest_is_kept(tmp_path: Path) -> None:
    require_tool("tshark")
    convs = [
        Conversation("udp", ("10.1.0.1", 40001), ("10.1.0.2", 53), [(False, crafted_loop())]),
        Conversation("udp", ("10.1.0.1", 40002), ("10.1.0.2", 53), [(False, crafted_cname_loop())]),
    ]
    pcap, records = _run(convs, tmp_path)
    weird = [r for r in records if r.get("_log") == "weird"]
    assert [w["name"] for w in weird] == ["dns_compression_loop", "dns_compression_loop"]
    dns_recs = {r["trans_id"]: r for r in records if not r.get("_log")}
    theirs = tshark_fields(pcap, "dns", ["dns.id", "dns.a", "dns.resp.name", "dns.cname"])
    for row in theirs:
        rec = dns_recs[int(row["dns.id"][0], 0)]
        assert any("loops" in n for n in row["dns.resp.name"] + row["dns.cname"]), row  # tshark saw it
        # every A record tshark decodes around the loop, we decode too
        assert [a for a in rec["answers"] if a.startswith("192.0.2.")] == row["dns.a"]
    assert dns_recs[8]["answers"] == ["192.0.2.1", "192.0.2.2"]
    assert dns_recs[9]["answers"] == ["", "192.0.2.3"]  # the looping CNAME target decodes to no labels
    # a lone response (no query captured) has no rtt
    assert all("rtt" not in r for r in dns_recs.values())


def test_crafted_pointer_out_of_the_message_and_truncated_rr() -> None:
    base = crafted_loop()
    bad_ptr = base[:-16] + _ptr(0x3FFF) + base[-14:]  # second answer's name points past the end
    m = parse_message(bad_ptr)
    assert m["weird"] == ["compression_loop", "bad_pointer"] and len(m["answers"]) == 2
    cut = parse_message(base[:-3])  # the last RR's rdata is cut: keep the question and first answer
    assert cut["weird"] == ["compression_loop", "truncated_rr"]
    assert [a[4] for a in cut["answers"]] == ["192.0.2.1"] and cut["questions"]


FLOW = FlowId("10.1.0.1", "10.1.0.2", 40000, 53, 0, "ipv4", "udp", "Cabc")


def test_crafted_pairing_timeout_lone_response_and_end_of_input() -> None:
    a = DnsAnalyzer()
    a.datagram(FLOW, 1, _query(1, "a.example.org", 1), 100.0)
    a.datagram(FLOW, 1, _query(2, "b.example.org", 1), 100.5)
    resp = _head(2, 0x8183, 1, 0) + _name("b.example.org") + struct.pack("!HH", 1, 1)
    a.datagram(FLOW, 2, resp, 100.75)
    assert [(r["trans_id"], r["rtt"], r["rcode_name"]) for r in a.records] == [(2, 0.25, "NXDOMAIN")]
    a.records.clear()
    # 31 s later: query 1 has waited past the timeout and is written unanswered
    a.datagram(FLOW, 2, resp, 131.0)  # a second response to id 2: alone, no rtt
    assert [(r["trans_id"], "rcode" in r, "rtt" in r, r["ts"]) for r in a.records] == [
        (1, False, False, 100.0),
        (2, True, False, 131.0),
    ]
    a.records.clear()
    a.datagram(FLOW, 1, _query(3, "c.example.org", 1), 132.0)
    a.close(133.0)
    assert [(r["trans_id"], r["query"], "rcode" in r) for r in a.records] == [(3, "c.example.org", False)]


def test_crafted_pairing_needs_the_same_question() -> None:
    a = DnsAnalyzer()
    a.datagram(FLOW, 1, _query(5, "a.example.org", 1), 1.0)
    other = _head(5, 0x8180, 1, 0) + _name("B.example.org") + struct.pack("!HH", 1, 1)
    same = _head(5, 0x8180, 1, 0) + _name("A.EXAMPLE.org") + struct.pack("!HH", 1, 1)
    a.datagram(FLOW, 2, other, 1.1)
    a.datagram(FLOW, 2, same, 1.2)
    assert [(r["query"], "rtt" in r) for r in a.records] == [
        ("b.example.org", False),
        ("a.example.org", True),
    ]


def test_crafted_pending_bounds_write_and_count() -> None:
    a = DnsAnalyzer()
    a.max_pending_per_flow = 3
    a.max_pending = 5
    for i in range(5):
        a.datagram(FLOW, 1, _query(i, f"q{i}.example.org", 1), 1.0 + i / 100)
    # the flow holds 3; queries 3 and 4 are written at once, unanswered, and counted
    assert [r["trans_id"] for r in a.records] == [3, 4]
    assert a.errors["pending_flow_full"] == 2
    other = FlowId("10.1.0.9", "10.1.0.2", 40000, 53, 0, "ipv4", "udp", "Cdef")
    for i in range(3):
        a.datagram(other, 1, _query(100 + i, "x.example.org", 1), 2.0)
    # 6 pending would pass the overall bound of 5: the oldest (query 0) is written
    assert [r["trans_id"] for r in a.records][2:] == [0]
    assert a.errors["pending_full"] == 1
    assert len(a.queue) == 5


def test_crafted_short_message_is_weird_only() -> None:
    a = DnsAnalyzer()
    a.datagram(FLOW, 1, b"\x00\x01\x02", 1.0)
    assert [(r["_log"], r["name"]) for r in a.records] == [("weird", "dns_short_message")]
    assert a.errors["short_message"] == 1


def test_crafted_tcp_message_cut_by_the_end_of_the_flow() -> None:
    a = DnsAnalyzer()
    tcp = FlowId("10.1.0.1", "10.1.0.2", 40000, 53, 0, "ipv4", "tcp", "Ctcp")
    flow = a.stream(tcp, 1.0)
    q = _query(9, "a.example.org", 1)
    flow.data(1, struct.pack("!H", len(q)) + q + b"\x00\x30abc", 1.0)
    flow.end("NORMAL", 2.0)
    assert [(r.get("_log"), r.get("name"), r.get("trans_id")) for r in a.records] == [
        ("weird", "dns_truncated_tcp_message", None),
        (None, None, 9),
    ]


def _tcp_run(chunks: int) -> list[dict]:
    a = DnsAnalyzer()
    tcp = FlowId("10.1.0.1", "10.1.0.2", 40000, 53, 0, "ipv4", "tcp", "Ctcp")
    flow = a.stream(tcp, 1.0)
    queries = [_query(i, f"q{i}.example.org", 1) for i in range(3)]
    answers = [
        _head(i, 0x8180, 1, 1)
        + _name(f"q{i}.example.org")
        + struct.pack("!HH", 1, 1)
        + _ptr(12)
        + struct.pack("!HHIH", 1, 1, 60, 4)
        + bytes([192, 0, 2, i])
        for i in range(3)
    ]
    for sender, msgs in ((1, queries), (2, answers)):
        stream = b"".join(struct.pack("!H", len(m)) + m for m in msgs)
        for i in range(0, len(stream), chunks):
            flow.data(sender, stream[i : i + chunks], 1.0 + sender)
    flow.end("NORMAL", 4.0)
    return a.records


def test_crafted_tcp_framing_under_every_segmentation() -> None:
    whole = _tcp_run(1 << 16)
    assert [(r["trans_id"], r["answers"], r["rtt"]) for r in whole] == [
        (i, [f"192.0.2.{i}"], 1.0) for i in range(3)
    ]
    for chunks in (1, 2, 3, 5, 7, 31):
        assert _tcp_run(chunks) == whole, chunks


@pytest.mark.tshark
def test_crafted_several_questions_are_all_reported(tmp_path: Path) -> None:
    """mDNS-style: one query with three questions; every name tshark shows is in the record."""
    require_tool("tshark")
    qs = [("a.local", 1), ("b.local", 28), ("C.Local", 16)]
    msg = _head(0, 0x0000, len(qs), 0) + b"".join(_name(n) + struct.pack("!HH", t, 1) for n, t in qs)
    convs = [Conversation("udp", ("10.1.0.1", 5353), ("10.1.0.2", 53), [(True, msg)])]
    pcap, records = _run(convs, tmp_path)
    (rec,) = records
    theirs = tshark_fields(pcap, "dns", ["dns.qry.name", "dns.qry.type"])[0]
    ours = [rec["query"]] + [q["query"] for q in rec["extra_questions"]]
    assert ours == [n.lower() for n in theirs["dns.qry.name"]]
    assert [rec["qtype"]] + [q["qtype"] for q in rec["extra_questions"]] == [
        int(t) for t in theirs["dns.qry.type"]
    ]
    assert "rcode" not in rec  # never answered
