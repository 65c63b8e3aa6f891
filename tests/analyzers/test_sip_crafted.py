"""SIP cases driven sans-IO with crafted messages (labelled crafted): stream framing under every
segmentation, keep-alives and junk before a start line, missing Content-Length, large bodies without
buffering, bounds, retransmissions, lone responses, and transactions left open.

Expected values come from the crafted input itself (the bytes and headers written here).
"""

from __future__ import annotations

import tracemalloc

from celltap.cell.analyzers.sip_analyzer import SipAnalyzer
from celltap.cell.analyzers.sip_message import MAX_HEAD, SipStream, parse_datagram
from celltap.cell.sdk.events import FlowId

TCP = FlowId("10.0.7.1", "10.0.8.1", 5070, 5060, 0, "ipv4", "tcp", "Ctcp")
UDP = FlowId("10.0.7.1", "10.0.8.1", 5070, 5060, 0, "ipv4", "udp", "Cudp")


def msg(
    start: str, call_id: str, cseq: str, body: bytes = b"", compact: bool = False, length: bool = True
) -> bytes:
    """A crafted SIP message."""
    h = [
        start,
        f"{'v' if compact else 'Via'}: SIP/2.0/TCP 10.0.7.1:5070;branch=z9hG4bK{call_id}",
        "Via: SIP/2.0/TCP 10.0.9.9:5060;branch=z9hG4bKproxy, SIP/2.0/UDP 10.0.9.8;branch=z9hG4bKp2",
        f"{'f' if compact else 'From'}: <sip:a@example.org>;tag=1",
        f"{'t' if compact else 'To'}: <sip:b@example.org>",
        f"{'i' if compact else 'Call-ID'}: {call_id}",
        f"CSeq: {cseq}",
        "Subject: a folded",
        "  subject line",
    ]
    if body:
        h.append(f"{'c' if compact else 'Content-Type'}: application/sdp")
    if length:
        h.append(f"{'l' if compact else 'Content-Length'}: {len(body)}")
    return ("\r\n".join(h) + "\r\n\r\n").encode() + body


def _call(body: bytes = b"v=0\r\n") -> list[tuple[int, bytes, float]]:
    return [
        (1, b"\r\n\r\n" + msg("INVITE sip:b@example.org SIP/2.0", "c1", "1 INVITE", body), 1.0),
        (2, msg("SIP/2.0 100 Trying", "c1", "1 INVITE", compact=True), 1.01),
        (2, msg("SIP/2.0 180 Ringing", "c1", "1 INVITE"), 1.25),
        (2, msg("SIP/2.0 200 OK", "c1", "1 INVITE", body), 3.0),
        (1, msg("ACK sip:b@example.org SIP/2.0", "c1", "1 ACK"), 3.1),
        (1, msg("BYE sip:b@example.org SIP/2.0", "c1", "2 BYE", compact=True), 9.0),
        (2, b"\r\n" + msg("SIP/2.0 200 OK", "c1", "2 BYE"), 9.5),
    ]


def _tcp_records(split: int) -> list[dict]:
    a = SipAnalyzer()
    flow = a.stream(TCP, 1.0)
    for sender, data, t in _call():
        for i in range(0, len(data), split):
            flow.data(sender, data[i : i + split], t)
    flow.end("NORMAL", 10.0)
    return a.records


def test_crafted_tcp_call_under_every_segmentation() -> None:
    whole = _tcp_records(1 << 20)
    assert [(r["method"], r.get("status_code"), r["trans_depth"]) for r in whole] == [
        ("INVITE", 200, 1),
        ("ACK", None, 2),
        ("BYE", 200, 3),
    ]
    invite, _ack, bye = whole
    assert invite["provisional_codes"] == [100, 180]
    assert invite["ringing_time"] == 0.25 and invite["setup_time"] == 2.0
    assert invite["request_body_len"] == invite["response_body_len"] == 5
    assert invite["content_type"] == "application/sdp"
    assert invite["subject"] == "a folded subject line"
    assert invite["request_path"] == [
        "SIP/2.0/TCP 10.0.7.1:5070;branch=z9hG4bKc1",
        "SIP/2.0/TCP 10.0.9.9:5060;branch=z9hG4bKproxy",
        "SIP/2.0/UDP 10.0.9.8;branch=z9hG4bKp2",
    ]
    assert bye["request_from"] == "<sip:a@example.org>;tag=1" and "setup_time" not in bye
    for split in (1, 2, 3, 7, 64):
        assert _tcp_records(split) == whole, split


def test_crafted_junk_before_a_request_is_weird_and_the_request_kept() -> None:
    a = SipAnalyzer()
    flow = a.stream(TCP, 1.0)
    flow.data(1, b"garbage line\r\n\r\n" + msg("OPTIONS sip:b@example.org SIP/2.0", "o1", "1 OPTIONS"), 1.0)
    flow.data(2, msg("SIP/2.0 200 OK", "o1", "1 OPTIONS"), 1.1)
    assert [(r.get("_log"), r.get("name"), r.get("method")) for r in a.records] == [
        ("weird", "sip_junk_before_start_line", None),
        (None, None, "OPTIONS"),
    ]


def test_crafted_missing_content_length_on_tcp_means_zero() -> None:
    a = SipAnalyzer()
    flow = a.stream(TCP, 1.0)
    flow.data(1, msg("OPTIONS sip:b SIP/2.0", "o2", "1 OPTIONS", length=False), 1.0)
    flow.data(1, msg("OPTIONS sip:b SIP/2.0", "o3", "1 OPTIONS"), 1.0)
    flow.end("NORMAL", 2.0)
    assert [r.get("name") or r["call_id"] for r in a.records] == ["sip_missing_content_length", "o2", "o3"]
    assert a.errors["missing_content_length"] == 1


def test_crafted_large_body_is_counted_not_buffered() -> None:
    stream = SipStream()
    head = msg("MESSAGE sip:b SIP/2.0", "m1", "1 MESSAGE").replace(
        b"Content-Length: 0", b"Content-Length: 20000000"
    )
    tracemalloc.start()
    msgs, _ = stream.feed(head)
    chunk = b"x" * 65536
    for _ in range(20_000_000 // 65536):
        msgs += stream.feed(chunk)[0]
    msgs += stream.feed(b"x" * (20_000_000 % 65536) + msg("MESSAGE sip:b SIP/2.0", "m2", "2 MESSAGE"))[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [(m.first("call-id"), m.body_len) for m in msgs] == [("m1", 20_000_000), ("m2", 0)]
    assert peak < 1024 * 1024


def test_crafted_head_without_end_gives_up_the_direction() -> None:
    stream = SipStream()
    _, problems = stream.feed(b"INVITE sip:b SIP/2.0\r\n" + b"X-Long: " + b"a" * (MAX_HEAD + 10))
    assert problems == ["head_too_long"] and stream.failed
    assert stream.feed(msg("OPTIONS sip:b SIP/2.0", "o", "1 OPTIONS")) == ([], [])


def test_crafted_udp_crlf_before_request_and_keepalive() -> None:
    # tshark does not dissect this datagram (leading CRLFs over UDP); RFC 3261 §7.5 says to skip them
    m = parse_datagram(b"\r\n" + msg("OPTIONS sip:b SIP/2.0", "u1", "1 OPTIONS", compact=True))
    assert (m.method, m.first("call-id"), m.first("via"), m.junk) == (
        "OPTIONS",
        "u1",
        "SIP/2.0/TCP 10.0.7.1:5070;branch=z9hG4bKu1",
        0,
    )
    a = SipAnalyzer()
    a.datagram(UDP, 1, b"\r\n\r\n", 1.0)
    a.datagram(UDP, 2, b"\r\n", 1.0)
    assert a.records == [] and not a.errors


def test_crafted_retransmissions_lone_responses_and_open_transactions() -> None:
    a = SipAnalyzer()
    invite = msg("INVITE sip:b SIP/2.0", "r1", "1 INVITE")
    a.datagram(UDP, 1, invite, 1.0)
    a.datagram(UDP, 1, invite, 1.5)  # retransmitted before an answer
    a.datagram(UDP, 2, msg("SIP/2.0 486 Busy Here", "r1", "1 INVITE"), 2.0)
    a.datagram(UDP, 2, msg("SIP/2.0 486 Busy Here", "r1", "1 INVITE"), 2.5)  # retransmitted answer
    a.datagram(UDP, 2, msg("SIP/2.0 200 OK", "zz", "7 OPTIONS"), 3.0)  # no request seen
    a.datagram(UDP, 1, msg("REGISTER sip:b SIP/2.0", "r2", "1 REGISTER"), 4.0)
    assert a.errors["request_retransmitted"] == 1 and a.errors["response_retransmitted"] == 1
    busy, lone = a.records
    assert (busy["status_code"], busy["status_msg"], busy["ts"], "setup_time" in busy) == (
        486,
        "Busy Here",
        1.0,
        False,
    )
    assert ("method" not in lone, lone["status_code"], lone["ts"], lone["id.orig_p"]) == (
        True,
        200,
        3.0,
        5070,
    )
    a.records.clear()
    # the flow idles past the timeout: the REGISTER is written without an answer
    a.datagram(FlowId("10.0.7.2", "10.0.8.1", 5070, 5060, 0, "ipv4", "udp", "Cx"), 1, b"\r\n\r\n", 100.0)
    a.datagram(FlowId("10.0.7.2", "10.0.8.1", 5070, 5060, 0, "ipv4", "udp", "Cx"), 1, invite, 100.0)
    assert [(r["method"], "status_code" in r) for r in a.records] == [("REGISTER", False)]
    a.records.clear()
    a.close(101.0)
    assert [(r["method"], r["call_id"], r["uid"]) for r in a.records] == [("INVITE", "r1", "Cx")]


def test_crafted_open_transaction_bound() -> None:
    a = SipAnalyzer()
    a.max_open_per_flow = 2
    for i in range(3):
        a.datagram(UDP, 1, msg("OPTIONS sip:b SIP/2.0", f"b{i}", "1 OPTIONS"), 1.0)
    assert [r["call_id"] for r in a.records] == ["b0"] and a.errors["open_transactions_full"] == 1


def test_crafted_idle_tcp_connection_keeps_its_trans_depth() -> None:
    a = SipAnalyzer()
    flow = a.stream(TCP, 1.0)
    flow.data(1, msg("REGISTER sip:b SIP/2.0", "g1", "1 REGISTER"), 1.0)
    flow.data(1, msg("OPTIONS sip:b SIP/2.0", "g2", "1 OPTIONS"), 500.0)  # the REGISTER timed out
    flow.data(2, msg("SIP/2.0 200 OK", "g2", "1 OPTIONS"), 500.1)
    flow.end("NORMAL", 501.0)
    assert [(r["call_id"], r["trans_depth"], r.get("status_code")) for r in a.records] == [
        ("g1", 1, None),
        ("g2", 2, 200),
    ]
