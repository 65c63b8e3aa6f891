"""Malformed streams give an error record and a counter, never a crash or unbounded memory."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest
from celltap.cell.analyzers.registry import ANALYZERS
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId
from celltap.cell.sdk.session import Session
from celltap.cell.sdk.text_format import encode_text
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.analyzers import traffic
from tests.analyzers.pcapgen import Conversation
from tests.analyzers.streams import event_stream

TCP = FlowId("10.1.0.1", "10.1.0.2", 40000, 80, 0, "ipv4", "tcp")
UDP = FlowId("10.1.0.1", "10.1.0.2", 40000, 53, 0, "ipv4", "udp")


def errors(analyzer: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "celltap_analyzer_parse_errors_total", {"analyzer": analyzer, "reason": reason}
        )
        or 0.0
    )


def run(name: str, convs: list[Conversation]) -> list[dict]:
    s = Session(ANALYZERS[name]())
    return s.feed(event_stream(convs)) + s.disconnected()


def _weird_names(records: list[dict]) -> list[str]:
    """Names of the weird records (and SF-TAP-style error records of analyzers that still use them)."""
    return [
        r["name"] if r.get("_log") == "weird" else r["error"]
        for r in records
        if "error" in r or r.get("_log")
    ]


def test_http_random_bytes_after_request_line_reported_once() -> None:
    before = errors("http", "bad_header_line")
    junk = random.Random(7).randbytes(3000).replace(b":", b"")
    for blank_line in (b"\n\r\n", b"\n\n"):
        junk = junk.replace(blank_line, b"\n")
    conv = Conversation(
        "tcp",
        ("10.1.0.1", 40000),
        ("10.1.0.2", 80),
        [(True, b"GET / HTTP/1.1\r\n" + junk + b"\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\n\r\n")],
    )
    good = traffic.http_conversations()[0]
    records = run("http", [conv, good])
    weirds = [r for r in records if r.get("_log") == "weird"]
    assert [w["name"] for w in weirds] == ["bad_header_line"]  # one head, reported once
    assert (weirds[0]["id.orig_h"], weirds[0]["id.orig_p"]) == ("10.1.0.1", 40000)
    assert errors("http", "bad_header_line") == before + 1
    # the bad lines are left out, the exchange is still paired, and the valid flow after it is analyzed
    exchanges = [r for r in records if "_log" not in r]
    assert [(r["id.orig_p"], r["method"], r.get("status_code")) for r in exchanges] == [
        (40000, "GET", 200),
        (40001, "GET", 200),
        (40001, "GET", 304),
    ]


def test_http_random_bytes_without_header_end_reported_at_flow_end() -> None:
    junk = random.Random(8).randbytes(5000)
    for blank_line in (b"\n\r\n", b"\n\n"):
        junk = junk.replace(blank_line, b"\n")
    conv = Conversation("tcp", ("10.1.0.1", 40000), ("10.1.0.2", 80), [(True, b"GET / HTTP/1.1\r\n" + junk)])
    records = run("http", [conv])
    assert _weird_names(records) == ["incomplete_message"]


def _feed_big(name: str, flow: FlowId, first: bytes, total: int) -> tuple[list[dict], int]:
    """Feed `first` then `total` bytes of 'a' in 64 KiB DATA events; return records and peak traced memory."""
    s = Session(ANALYZERS[name]())
    chunk = b"a" * 65535
    records = s.feed(encode_text(flow, CREATED, 1.0) + encode_text(flow, DATA, 1.0, 1, first))
    tracemalloc.start()
    try:
        sent = 0
        while sent < total:
            records += s.feed(encode_text(flow, DATA, 1.0, 1, chunk))
            sent += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    records += s.feed(encode_text(flow, DESTROYED, 2.0))
    return records, peak


@pytest.mark.parametrize(
    ("name", "first", "reason"),
    [
        ("http", b"GET /", "header_too_long"),
        ("http", b"GET / HTTP/1.1\r\nX-Long: ", "header_too_long"),
        ("smtp", b"220 hi\r\n", "line_too_long"),
    ],
)
def test_ten_megabyte_header_line_is_bounded(name: str, first: bytes, reason: str) -> None:
    flow = FlowId("10.1.0.1", "10.1.0.2", 40000, 25 if name == "smtp" else 80, 0, "ipv4", "tcp")
    before = errors(name, reason)
    s_first = first
    if name == "smtp":
        # the server banner comes first so the client is known, then the client's endless line
        s = Session(ANALYZERS[name]())
        s.feed(encode_text(flow, CREATED, 1.0) + encode_text(flow, DATA, 1.0, 2, s_first))
        tracemalloc.start()
        records = []
        for _ in range(10 * 16):
            records += s.feed(encode_text(flow, DATA, 1.0, 1, b"a" * 65535))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        records += s.feed(encode_text(flow, DESTROYED, 2.0))
    else:
        records, peak = _feed_big(name, flow, first, 10 * 1024 * 1024)
    assert _weird_names(records) == [reason]
    assert errors(name, reason) == before + 1
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes while discarding a 10 MB line"


def test_tls_truncated_record() -> None:
    hello = traffic.tls_record(22, traffic.client_hello("a.example", [], True))
    conv = Conversation("tcp", ("10.1.0.1", 40000), ("10.1.0.2", 443), [(True, hello[: len(hello) - 20])])
    before = errors("tls", "truncated_record")
    records = run("tls", [conv])
    assert [(r.get("_log"), r.get("name")) for r in records] == [("weird", "truncated_record")]
    assert errors("tls", "truncated_record") == before + 1


def test_tls_garbage_is_not_tls() -> None:
    conv = Conversation("tcp", ("10.1.0.1", 40000), ("10.1.0.2", 443), [(True, b"GET / HTTP/1.1\r\n\r\n")])
    records = run("tls", [conv])
    assert [(r.get("_log"), r.get("name")) for r in records] == [("weird", "not_tls")]


def test_tls_record_length_over_limit() -> None:
    conv = Conversation(
        "tcp", ("10.1.0.1", 40000), ("10.1.0.2", 443), [(True, b"\x16\x03\x01\xff\xff" + b"x" * 100)]
    )
    records = run("tls", [conv])
    assert [(r.get("_log"), r.get("name")) for r in records] == [("weird", "record_too_long")]


def test_sip_garbage_is_a_weird_record() -> None:
    conv = Conversation("udp", ("10.1.0.1", 5060), ("10.1.0.2", 5060), [(True, b"HELLO WORLD\r\n\r\n")])
    records = run("sip", [conv])
    assert [(r["_log"], r["name"]) for r in records] == [("weird", "sip_bad_start_line")]


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=8),
    name=st.sampled_from(sorted(ANALYZERS)),
)
def test_random_streams_never_raise(data: list[tuple[int, bytes]], name: str) -> None:
    s = Session(ANALYZERS[name]())
    for flow in (TCP, UDP):
        stream = encode_text(flow, CREATED, 1.0) if flow is TCP else b""
        for sender, payload in data:
            stream += encode_text(flow, DATA, 1.0, sender, payload)
        if flow is TCP:
            stream += encode_text(flow, DESTROYED, 2.0)
        s.feed(stream)
    s.disconnected()


@pytest.mark.parametrize("name", sorted(ANALYZERS))
def test_valid_prefix_then_random_bytes_never_raise(name: str) -> None:
    rng = random.Random(name)
    s = Session(ANALYZERS[name]())
    valid = {
        "http": traffic.http_conversations,
        "dns": traffic.dns_conversations,
        "tls": traffic.tls_conversations,
        "smtp": traffic.smtp_conversations,
        "sip": traffic.sip_conversations,
    }[name]()
    for conv in valid:
        conv.turns = [(fc, p[: len(p) // 2] + rng.randbytes(len(p) // 2 + 1)) for fc, p in conv.turns]
    s.feed(event_stream(valid, segment=97))
    s.disconnected()
    assert os.getpid()  # reached without an exception
