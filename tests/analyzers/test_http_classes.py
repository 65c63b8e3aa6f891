"""Each class of HTTP/1.x as real clients and servers send it, on crafted conversations (labelled crafted).

The real-traffic versions are in test_http_realnet.py (nginx answering the same kinds of bytes); here
each class is pinned down alone, with expected values taken from the crafted bytes themselves (or from
zlib / base64 / urllib / libmagic for what the bytes encode). Every conversation is run cut into 1-byte,
5-byte and 1400-byte DATA events: the records must not depend on where the stream was cut.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import shutil
import subprocess
import zlib
from urllib.parse import unquote_to_bytes

import pytest
from celltap.cell.analyzers.http_analyzer import HttpAnalyzer
from celltap.cell.analyzers.http_mime import sniff
from celltap.cell.sdk.session import Session
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.analyzers.pcapgen import Conversation
from tests.analyzers.streams import event_stream

TIMES = ("ts", "response_ts")


def parse_errors(reason: str) -> float:
    """The analyzer's Prometheus count of a parse error (weird) name."""
    labels = {"analyzer": "http", "reason": reason}
    return REGISTRY.get_sample_value("celltap_analyzer_parse_errors_total", labels) or 0.0


def run(turns: list[tuple[bool, bytes]], reset: bool = False) -> tuple[list[dict], HttpAnalyzer]:
    """Records of one crafted TCP conversation (same for every segmentation) and the analyzer."""
    results = []
    for segment in (1, 5, 1400):
        conv = Conversation("tcp", ("10.9.0.1", 41000), ("10.9.0.2", 80), turns, reset=reset)
        analyzer = HttpAnalyzer()
        s = Session(analyzer)
        recs = s.feed(event_stream([conv], segment=segment)) + s.disconnected()
        results.append((recs, analyzer))
    stripped = [[{k: v for k, v in r.items() if k not in TIMES} for r in recs] for recs, _ in results]
    assert stripped[0] == stripped[1] == stripped[2], "records depend on segmentation"
    return results[2]


def exchanges(recs: list[dict]) -> list[dict]:
    return [r for r in recs if "_log" not in r]


def weirds(recs: list[dict]) -> list[str]:
    return [r["name"] for r in recs if r.get("_log") == "weird"]


def test_crafted_bare_lf_and_mixed_line_ends() -> None:
    req = b"GET /a HTTP/1.1\nHost: lf.example\nUser-Agent: lf/1\n\nGET /b HTTP/1.1\r\nHost: lf.example\n\r\n"
    resp = b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\nhelloHTTP/1.1 404 Not Found\r\nContent-Length: 3\n\nnop"
    recs, _ = run([(True, req), (False, resp)])
    ex = exchanges(recs)
    assert [(r["uri"], r["host"], r["status_code"], r["response_body_len"]) for r in ex] == [
        ("/a", "lf.example", 200, 5),
        ("/b", "lf.example", 404, 3),
    ]
    assert ex[0]["user_agent"] == "lf/1" and ex[1]["status_msg"] == "Not Found"
    assert weirds(recs) == []


def test_crafted_http09_request_gets_the_raw_body_until_close() -> None:
    body = b"<html><body>" + b"ancient " * 100 + b"</body></html>"
    recs, _ = run([(True, b"GET /old.html\r\n"), (False, body)])
    (rec,) = exchanges(recs)
    assert (rec["method"], rec["uri"], rec["request_version"], rec["version"]) == (
        "GET",
        "/old.html",
        "0.9",
        "0.9",
    )
    assert "status_code" not in rec
    assert rec["response_body_len"] == len(body) and rec["resp_mime_types"] == ["text/html"]
    assert weirds(recs) == []


def test_crafted_request_lines_with_missing_parts_are_weird_and_parsing_goes_on() -> None:
    turns = [
        (True, b"GET\r\n"),
        (False, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        (True, b"\x16\x03\x01 not a request line\r\nGET HTTP/1.1\r\nHost: h\r\n\r\n"),
        (False, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        (True, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ]
    before = {name: parse_errors(name) for name in ("missing_HTTP_uri", "bad_request_line")}
    recs, _ = run(turns)
    ex = exchanges(recs)
    assert [(r["method"], r.get("uri"), r.get("request_version"), r["status_code"]) for r in ex] == [
        ("GET", None, None, 400),
        ("GET", None, "1.1", 400),
        ("GET", "/ok", "1.1", 200),
    ]
    assert [r["trans_depth"] for r in ex] == [1, 2, 3]
    assert sorted(weirds(recs)) == ["bad_request_line", "missing_HTTP_uri"]  # once per flow and name
    # every occurrence is counted (three runs: one per segmentation)
    assert parse_errors("missing_HTTP_uri") - before["missing_HTTP_uri"] == 3 * 2
    assert parse_errors("bad_request_line") - before["bad_request_line"] == 3 * 1


def test_crafted_empty_lines_between_pipelined_requests_are_ignored() -> None:
    req = (
        b"\r\n\r\nGET /1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
        b"\r\n\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny"
    recs, _ = run([(True, req), (False, resp)])
    assert [(r["uri"], r["request_body_len"], r["response_body_len"]) for r in exchanges(recs)] == [
        ("/1", 2, 1),
        ("/2", 0, 1),
    ]
    assert weirds(recs) == []


def test_crafted_obs_fold_continues_the_field() -> None:
    req = b"GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: folded\r\n  agent/2\r\n\tand more\r\n\r\n"
    recs, _ = run([(True, req), (False, b"HTTP/1.1 204 No Content\r\n\r\n")])
    (rec,) = exchanges(recs)
    assert rec["user_agent"] == "folded agent/2 and more"  # RFC 9112 §5.2: each obs-fold becomes SP
    assert weirds(recs) == []


def test_crafted_transfer_codings_with_chunked_last_are_decoded() -> None:
    doc = json.dumps({"k": list(range(100))}).encode()
    packed = gzip.compress(doc)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(packed[i : i + 50]), packed[i : i + 50]) for i in range(0, len(packed), 50)
    )
    req = b"POST /j HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    page = b"<!DOCTYPE html><html>" + b"x" * 3000 + b"</html>"
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + gzip.compress(
        page
    )  # not chunked: until close
    recs, _ = run([(True, req), (False, resp)])
    (rec,) = exchanges(recs)
    assert (rec["request_body_len"], rec["orig_mime_types"]) == (len(doc), ["text/json"])
    assert (rec["response_body_len"], rec["resp_mime_types"]) == (len(page), ["text/html"])
    assert weirds(recs) == []


def test_crafted_request_with_chunked_not_last_is_reported_and_the_response_still_paired() -> None:
    req = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\nwhatever bytes"
    resp = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"
    recs, _ = run([(True, req), (False, resp)])
    (rec,) = exchanges(recs)
    assert rec["status_code"] == 400 and rec["request_truncated"] is True
    assert weirds(recs) == ["HTTP_bad_transfer_encoding"]


def test_crafted_head_response_has_no_body_even_with_content_length() -> None:
    req = b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\nGET /small HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 99999\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsmal"
    recs, _ = run([(True, req), (False, resp)])
    assert [(r["method"], r["response_body_len"]) for r in exchanges(recs)] == [("HEAD", 0), ("GET", 4)]


def test_crafted_connect_2xx_hands_the_tunnel_on() -> None:
    hello, server_hello = b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", b"\x16\x03\x03\x00\x02\x02\x00"
    turns = [
        (True, b"CONNECT www.example:443 HTTP/1.1\r\nHost: www.example:443\r\n\r\n" + hello[:4]),
        (True, hello[4:]),
        (False, b"HTTP/1.1 200 Connection established\r\n\r\n" + server_hello),
        (True, b"\x17\x03\x03\x00\x01z"),
    ]
    recs, analyzer = run(turns)
    (rec,) = exchanges(recs)
    assert (rec["method"], rec["uri"], rec["status_code"], rec["tags"]) == (
        "CONNECT",
        "www.example:443",
        200,
        ["TUNNEL"],
    )
    client = 1  # 10.9.0.1 sorts first: endpoint 1 is the client
    handed: dict[int, bytes] = {1: b"", 2: b""}
    for flow, sender, data, _ in analyzer.handed_on:
        assert flow.uid == rec["uid"]
        handed[sender] += data
    assert handed[client] == hello + b"\x17\x03\x03\x00\x01z"
    assert handed[3 - client] == server_hello
    assert weirds(recs) == []


def test_crafted_refused_connect_parses_what_the_client_sent_next_as_http() -> None:
    turns = [
        (True, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"),
        (False, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
    recs, analyzer = run(turns)
    assert [(r["method"], r["status_code"]) for r in exchanges(recs)] == [("CONNECT", 407), ("GET", 200)]
    assert analyzer.handed_on == []


def test_crafted_interim_responses_fill_info_code() -> None:
    turns = [
        (True, b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"),
        (False, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (True, b"data"),
        (False, b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ]
    recs, _ = run(turns)
    (rec,) = exchanges(recs)
    assert (rec["info_code"], rec["info_msg"], rec["status_code"], rec["request_body_len"]) == (
        102,
        "Processing",
        201,
        4,
    )
    assert [i["code"] for i in rec["informational"]] == [100, 102]


def test_crafted_101_upgrade_stops_parsing_without_weirds() -> None:
    turns = [
        (True, b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        (
            False,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            b"\x81\x02hi",
        ),
        (True, b"\x81\x82abcd\x01\x02"),
    ]
    recs, _ = run(turns)
    (rec,) = exchanges(recs)
    assert (rec["status_code"], rec["tags"]) == (101, ["UPGRADED"])
    assert weirds(recs) == []


def test_crafted_until_close_and_truncated_bodies() -> None:
    recs, _ = run([(True, b"GET / HTTP/1.0\r\n\r\n"), (False, b"HTTP/1.0 200 OK\r\n\r\n" + b"z" * 777)])
    assert [r["response_body_len"] for r in exchanges(recs)] == [777] and weirds(recs) == []
    recs, _ = run(
        [(True, b"GET / HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")]
    )
    (rec,) = exchanges(recs)
    assert (rec["response_body_len"], rec["response_truncated"]) == (3, True)
    assert weirds(recs) == ["truncated_response"]


def test_crafted_response_before_the_request_body_ended_is_one_record() -> None:
    turns = [
        (True, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345"),
        (False, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"),
        (True, b"67890GET /after HTTP/1.1\r\nHost: h\r\n\r\n"),
        (False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
    recs, _ = run(turns)
    assert [(r["uri"], r["request_body_len"], r["status_code"]) for r in exchanges(recs)] == [
        ("/up", 10, 413),
        ("/after", 0, 200),
    ]


@pytest.mark.parametrize("coding", ["gzip", "deflate-zlib", "deflate-raw"])
def test_crafted_content_encoding_is_inflated_for_the_length_and_type(coding: str) -> None:
    doc = b'<?xml version="1.0"?>\n<feed>' + b"<entry>e</entry>" * 400 + b"</feed>"
    if coding == "gzip":
        packed = gzip.compress(doc)
    else:
        c = zlib.compressobj(wbits=15 if coding == "deflate-zlib" else -15)
        packed = c.compress(doc) + c.flush()
    name = coding.split("-")[0]
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {name}\r\nContent-Length: {len(packed)}\r\n\r\n".encode()
    recs, _ = run([(True, b"GET /feed HTTP/1.1\r\nHost: h\r\n\r\n"), (False, head + packed)])
    (rec,) = exchanges(recs)
    assert (rec["response_body_len"], rec["resp_mime_types"]) == (len(doc), ["application/xml"])


def test_crafted_corrupt_gzip_is_weird_not_fatal() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n"
    recs, _ = run([(True, b"GET / HTTP/1.1\r\n\r\n"), (False, head + b"\x1f\x8b" + b"\xff" * 18)])
    assert len(exchanges(recs)) == 1 and weirds(recs) == ["HTTP_inflate_failed"]


def test_crafted_basic_auth_username_proxied_headers_and_uri_escapes() -> None:
    cred = base64.b64encode(b"bob:hunter2").decode()
    bad = base64.b64encode(b"nocolon").decode()
    target = "/a%20b/%E2%82%AC?q=%41%zz"
    req = (
        f"GET {target} HTTP/1.1\r\nHost: h\r\nAuthorization: Basic {cred}\r\nVia: 1.1 squid\r\n"
        f"X-Forwarded-For: 192.0.2.1\r\nReferer: http://r.example/\r\nOrigin: http://o.example\r\n\r\n"
        f"GET / HTTP/1.1\r\nHost: h\r\nProxy-Authorization: basic {bad}\r\n\r\n"
    ).encode()
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2
    recs, _ = run([(True, req), (False, resp)])
    first, second = exchanges(recs)
    assert first["username"] == "bob" and "password" not in first and "hunter2" not in json.dumps(recs)
    assert first["proxied"] == ["VIA -> 1.1 squid", "X-FORWARDED-FOR -> 192.0.2.1"]
    assert first["tags"] == ["PROXIED"]
    assert (first["referrer"], first["origin"]) == ("http://r.example/", "http://o.example")
    assert first["original_uri"] == target
    assert first["uri"] == unquote_to_bytes(target).decode("utf-8", "backslashreplace")
    assert second["username"] == f"<problem-decoding> (basic {bad})"
    assert "original_uri" not in second and second["uri"] == "/"


def test_crafted_records_come_in_request_order_with_unanswered_ones_last() -> None:
    req = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(4))
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" * 2
    recs, _ = run([(True, req), (False, resp)])
    ex = exchanges(recs)
    assert [(r["uri"], r["trans_depth"], r.get("status_code"), r.get("unanswered")) for r in ex] == [
        ("/0", 1, 200, None),
        ("/1", 2, 200, None),
        ("/2", 3, None, True),
        ("/3", 4, None, True),
    ]
    assert [r["ts"] for r in ex] == sorted(r["ts"] for r in ex)


def test_crafted_response_without_request_is_a_record_and_a_weird() -> None:
    recs, _ = run([(False, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")])
    (rec,) = exchanges(recs)
    assert (rec["status_code"], rec["response_body_len"], "method" in rec) == (200, 2, False)
    assert rec["id.orig_h"] == "10.9.0.1"  # the endpoint that did not send the status line
    assert weirds(recs) == ["response_without_request"]


LIBMAGIC_TO_ZEEK = {
    "text/html": "text/html",
    "application/json": "text/json",
    "text/xml": "application/xml",
    "image/png": "image/png",
    "image/gif": "image/gif",
    "image/jpeg": "image/jpeg",
    "image/webp": "image/webp",
    "application/pdf": "application/pdf",
    "application/zip": "application/zip",
    "application/gzip": "application/x-gzip",
    "application/x-bzip2": "application/x-bzip2",
    "application/x-xz": "application/x-xz",
    "application/x-7z-compressed": "application/x-7z-compressed",
    "text/plain": "text/plain",
    "application/octet-stream": None,
}


@pytest.mark.parametrize(
    "sample",
    [
        b"<!DOCTYPE html>\n<html><head><title>t</title></head><body>hello</body></html>\n",
        b"  <html>\n<body>lower-case start, after blanks</body></html>\n",
        b'{"name": "value", "list": [1, 2, 3], "nested": {"a": true}}\n',
        b'[{"a": 1}, {"b": 2}]\n',
        b'<?xml version="1.0" encoding="UTF-8"?>\n<root><child>text</child></root>\n',
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde",
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
        b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00C\x00" + bytes(64),
        b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + bytes(24),
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        gzip.compress(b"x" * 100, mtime=0),
        b"BZh91AY&SY" + bytes(30),
        b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4F" + bytes(20),
        b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(30),
        b"Plain words in a text body, more than ten characters long.\n",
        random.Random(5).randbytes(300),
    ],
)
def test_crafted_mime_sniffer_agrees_with_libmagic(sample: bytes) -> None:
    if shutil.which("file") is None:
        pytest.skip("the file command (libmagic) is not installed: scripts/system-packages.txt lists it")
    magic = subprocess.run(["file", "--mime-type", "-b", "-"], input=sample, capture_output=True, check=True)
    name = magic.stdout.decode().strip()
    assert name in LIBMAGIC_TO_ZEEK, f"libmagic says {name}: extend the mapping"
    assert sniff(sample) == LIBMAGIC_TO_ZEEK[name]


def test_crafted_zip_sniffed_from_a_real_archive(tmp_path) -> None:
    import zipfile

    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", "content")
    assert sniff(path.read_bytes()[:512]) == "application/zip"


_PIECES = [
    b"GET / HTTP/1.1\r\n", b"HEAD /h HTTP/1.1\r\n", b"CONNECT a:443 HTTP/1.1\r\n", b"POST /p HTTP/1.0\n",
    b"GET /09\r\n", b"GET\r\n", b"GET HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n",
    b"HTTP/1.1 101 Switching\r\n", b"HTTP/1.0 204 No\n", b"HTTP/1.1 2x0 Bad\r\n", b"Host: h\r\n",
    b"Content-Length: 5\r\n", b"Content-Length: 5, 6\r\n", b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Content-Encoding: gzip\r\n", b"Content-Encoding: deflate\r\n", b"Authorization: Basic !!\r\n",
    b"Via: x\r\n", b" folded\r\n", b"bad line\r\n", b"\r\n", b"\n", b"\r", b"5\r\nhello\r\n", b"0\r\n\r\n",
    b"zz\r\n", b"3;ext=1\r\nabc\r\n", gzip.compress(b"hello world " * 20), b"\x1f\x8b\x08\x00junk",
    b"\x78\x9c", b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", b"%41%zz%", b"\xff\xfe\x00",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    turns=st.lists(
        st.tuples(st.booleans(), st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8).map(b"".join)),
        max_size=10,
    ),
    segment=st.sampled_from([1, 3, 64, 1400]),
    reset=st.booleans(),
)
def test_crafted_http_fragments_in_any_order_never_raise(
    turns: list[tuple[bool, bytes]], segment: int, reset: bool
) -> None:
    conv = Conversation("tcp", ("10.9.0.1", 41000), ("10.9.0.2", 80), turns, reset=reset)
    s = Session(HttpAnalyzer())
    recs = s.feed(event_stream([conv], segment=segment)) + s.disconnected()
    for rec in recs:
        assert rec["uid"] and "ts" in rec
        assert rec.get("name") != "HTTP_analyzer_internal_error", rec.get("addl")
        if "_log" not in rec:
            assert rec["trans_depth"] >= 1 and rec["request_body_len"] >= 0 and rec["response_body_len"] >= 0
