"""The HTTP analyzer on real traffic: nginx, tinyproxy, curl, wget and raw sockets in network namespaces.

The capture (tests/analyzers/http_realnet.py) is made live. Oracles, none of them our own output:
* nginx's own access log: every request it read, with its request line as nginx read it, status,
  body bytes sent, referrer, user agent, Basic-auth user, Host; the oracle for what tshark does not
  decode (HTTP/0.9, pipelined requests after a HEAD, empty lines between requests, a bare "GET");
* tshark's HTTP decode: request and status lines, Host, User-Agent, Referer, Basic auth, Content-Length,
  TLS records inside the CONNECT tunnel;
* libmagic (`file --mime-type`) on the served files, mapped to Zeek's type names (LIBMAGIC_TO_ZEEK);
* the crafted bytes of the raw-socket requests, for the weird names each must raise.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from celltap.cell.analyzers.http_analyzer import HttpAnalyzer
from celltap.cell.sdk.session import Session

from tests.analyzers.cell_path import cell_records
from tests.analyzers.harness import tshark_fields
from tests.analyzers.http_realnet import CLIENT, RAW_CASES, make_capture, missing_tools, nginx_log
from tests.analyzers.pcap_events import pcap_to_events
from tests.conftest import require_root

pytestmark = [pytest.mark.netns, pytest.mark.tshark]

# libmagic's names -> Zeek's names for the same types (base/frameworks/files/magic); None: no type
LIBMAGIC_TO_ZEEK = {
    "text/html": "text/html",
    "application/json": "text/json",
    "text/xml": "application/xml",
    "image/png": "image/png",
    "image/gif": "image/gif",
    "application/pdf": "application/pdf",
    "application/zip": "application/zip",
    "application/gzip": "application/x-gzip",
    "text/plain": "text/plain",
    "application/octet-stream": None,
}
STREAM_BODY = b"streamed body line\n"  # what nginx's /stream location returns (http_realnet's nginx.conf)
INTERIM_100 = len(b"HTTP/1.1 100 Continue\r\n\r\n")  # nginx counts it in $body_bytes_sent

# weird names each raw request must raise, from its crafted bytes
RAW_WEIRDS = {
    "pipelined": set(),
    "http09": set(),
    "bare_lf": set(),
    "leading_crlf": set(),
    "obs_fold": set(),
    "method_only": {"missing_HTTP_uri"},  # "GET" and nothing else
    "blank_in_uri": {"blank_in_HTTP_uri"},  # "GET /plain text.txt HTTP/1.1"
    "missing_uri": {"missing_HTTP_uri"},  # "GET HTTP/1.1"
    "te_gzip_chunked": {"HTTP_inflate_failed"},  # chunked is final, but the body "hello" is not gzip
    "te_chunked_gzip": {"HTTP_bad_transfer_encoding"},  # chunked not final: the length is unknowable
    "chunked_request": set(),
}


class _Any:
    """Equal to anything: a value tshark reports but cannot attribute to one of several requests."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


ANY = _Any()


def libmagic(data: bytes) -> str:
    """libmagic's MIME type for `data` (the `file` command)."""
    out = subprocess.run(["file", "--mime-type", "-b", "-"], input=data, capture_output=True, check=True)
    return out.stdout.decode().strip()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    require_root()
    missing = missing_tools() + [t for t in ("tshark", "file") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/system-packages.txt lists them)")
    work = tmp_path_factory.mktemp("http-real")
    pcap, files = make_capture(work)
    analyzer = HttpAnalyzer()
    session = Session(analyzer)
    records = session.feed(pcap_to_events(str(pcap), "text", "tcp")) + session.disconnected()
    return SimpleNamespace(
        pcap=str(pcap),
        files=files,
        work=work,
        records=records,
        handed_on=list(analyzer.handed_on),
        log=nginx_log(work),
    )


def _exchanges(records: list[dict]) -> dict[int, list[dict]]:
    by_port: dict[int, list[dict]] = defaultdict(list)
    for rec in records:
        if "_log" not in rec:
            by_port[rec["id.orig_p"]].append(rec)
    return by_port


def _from_log(value: str) -> str | None:
    return None if value == "-" else value


def _request_line(line: str) -> tuple[str, str | None, str | None]:
    """(method, target, version) of a request line as nginx logged it ($request)."""
    parts = line.split()
    if len(parts) >= 3 and parts[-1].startswith("HTTP/"):
        return parts[0], " ".join(parts[1:-1]), parts[-1][5:]
    if len(parts) == 2:
        if parts[1].startswith("HTTP/"):
            return parts[0], None, parts[1][5:]
        return parts[0], parts[1], "0.9"
    return parts[0], None, None


def _raw_ports(pcap: str) -> dict[int, str]:
    """Client port of each raw-socket connection, found by its first bytes (tshark)."""
    first: dict[int, bytes] = {}
    for row in tshark_fields(pcap, "tcp.dstport == 80 && tcp.len > 0", ["tcp.srcport", "tcp.payload"]):
        port = int(row["tcp.srcport"][0])
        first.setdefault(port, bytes.fromhex(row["tcp.payload"][0].replace(":", "")))
    ports = {}
    for name, payload in RAW_CASES:
        (port,) = [p for p, b in first.items() if payload.startswith(b)]
        ports[port] = name
    return ports


def test_every_request_nginx_read_is_reported_with_nginx_fields(real: SimpleNamespace) -> None:
    ours = _exchanges(r for r in real.records if r["id.resp_p"] == 80)
    log: dict[int, list[dict]] = defaultdict(list)
    for entry in real.log:
        if entry["remote_addr"] == CLIENT:
            log[int(entry["remote_port"])].append(entry)
    assert sorted(ours) == sorted(log)
    for port, entries in log.items():
        recs = ours[port]
        assert len(recs) == len(entries), (port, [e["request"] for e in entries])
        for depth, (rec, e) in enumerate(zip(recs, entries, strict=True), 1):
            method, target, version = _request_line(e["request"])
            assert rec["trans_depth"] == depth
            assert (rec["method"], rec.get("original_uri", rec.get("uri")), rec.get("request_version")) == (
                method,
                target,
                version,
            )
            if version == "0.9":  # no status line on the wire: the raw body until close
                assert "status_code" not in rec and rec["version"] == "0.9"
            else:
                assert rec["status_code"] == int(e["status"])
            if e["request_method"] != "-":  # nginx read the fields (it stops at a bad request line)
                assert rec.get("host") == _from_log(e["http_host"])
                assert rec.get("user_agent") == _from_log(e["http_user_agent"])
                assert rec.get("referrer") == _from_log(e["http_referer"])
                assert rec.get("username") == _from_log(e["remote_user"])
            if e["sent_http_content_encoding"] == "gzip":  # our length is the inflated body's
                body = real.files.get(target, STREAM_BODY if target == "/stream" else None)
                assert rec["response_body_len"] == len(body)
            elif "info_code" in rec:
                assert rec["response_body_len"] == int(e["body_bytes_sent"]) - INTERIM_100
            else:
                assert rec["response_body_len"] == int(e["body_bytes_sent"])


def _is_subsequence(short: list, long: list) -> bool:
    it = iter(long)
    return all(any(x == y for y in it) for x in short)


def test_fields_match_tshark_where_tshark_decodes(real: SimpleNamespace) -> None:
    """Everything tshark decodes we report identically, in order; where tshark decodes every request
    nginx read, the lists are equal."""
    req_fields = ["tcp.srcport", "http.request.method", "http.request.uri", "http.request.version",
                  "http.host", "http.user_agent", "http.referer", "http.authbasic"]  # fmt: skip
    theirs_req: dict[int, list] = defaultdict(list)
    for r in tshark_fields(real.pcap, "http.request", req_fields):
        port = int(r["tcp.srcport"][0])
        n = len(r["http.request.method"])
        for i in range(n):
            # several requests in one frame: a field tshark gives fewer times cannot be attributed
            one = {f: (r[f][i] if len(r[f]) == n else None if not r[f] else ANY) for f in req_fields[1:]}
            version = one["http.request.version"]
            if not isinstance(version, str) or not re.fullmatch(r"HTTP/[0-9]\.[0-9]", version):
                # tshark reads "GET HTTP/1.1" as target "HTTP/1.1" without version, and splits
                # "GET /a b HTTP/1.1" at its first blank (version "b HTTP/1.1"); we read them as nginx
                # and Zeek do (missing target; a target with a blank), checked against nginx's log
                continue
            auth = one["http.authbasic"]
            user = auth.split(":", 1)[0] if isinstance(auth, str) else auth
            theirs_req[port].append(
                (one["http.request.method"], one["http.request.uri"], one["http.request.version"],
                 one["http.host"], one["http.user_agent"], one["http.referer"], user)
            )  # fmt: skip
    resp_fields = ["tcp.dstport", "http.response.version", "http.response.code", "http.response.phrase",
                   "http.content_length_header", "http.content_encoding"]  # fmt: skip
    theirs_resp: dict[int, list] = defaultdict(list)
    for r in tshark_fields(real.pcap, "http.response", resp_fields):
        framed_by_length = r["http.content_length_header"] and not r["http.content_encoding"]
        length = int(r["http.content_length_header"][0]) if framed_by_length else None
        theirs_resp[int(r["tcp.dstport"][0])].append(
            (
                r["http.response.version"][0],
                int(r["http.response.code"][0]),
                r["http.response.phrase"][0],
                length,
            )
        )
    ours_req: dict[int, list] = defaultdict(list)
    ours_resp: dict[int, list] = defaultdict(list)
    for port, recs in _exchanges(real.records).items():
        for rec in recs:
            if "request_version" in rec and "uri" in rec:
                ours_req[port].append(
                    (rec["method"], rec.get("original_uri", rec["uri"]), "HTTP/" + rec["request_version"],
                     rec.get("host"), rec.get("user_agent"), rec.get("referrer"), rec.get("username"))
                )  # fmt: skip
            for info in rec.get("informational", []):
                ours_resp[port].append(("HTTP/" + info["version"], info["code"], info["msg"], None))
            if "status_code" in rec:
                fields = rec["response_headers"]
                length = None
                if "content-length" in fields and not fields.get("content-encoding"):
                    length = rec["response_body_len"]
                    if rec["method"] == "HEAD":  # no body follows; tshark reports the header's value
                        length = int(fields["content-length"])
                ours_resp[port].append(
                    ("HTTP/" + rec["version"], rec["status_code"], rec["status_msg"], length)
                )
    assert theirs_req, "tshark decoded no request"
    nginx_counts: dict[int, int] = defaultdict(int)
    for entry in real.log:
        if entry["remote_addr"] == CLIENT:
            nginx_counts[int(entry["remote_port"])] += 1
    complete = 0
    for port, reqs in theirs_req.items():
        assert _is_subsequence(reqs, ours_req[port]), port
        if len(reqs) == nginx_counts.get(port, len(reqs)):
            assert reqs == ours_req[port], port
            complete += 1
    for port, resps in theirs_resp.items():
        assert _is_subsequence([r[:3] for r in resps], [r[:3] for r in ours_resp[port]]), port
        lengths = [r for r in resps if r[3] is not None]
        assert _is_subsequence(lengths, [r for r in ours_resp[port] if r[3] is not None]), port
    assert complete >= 12  # every curl/wget connection at least


def test_mime_types_match_libmagic(real: SimpleNamespace) -> None:
    checked = 0
    for rec in real.records:
        if "_log" in rec or rec.get("status_code", 200) != 200 or rec["method"] != "GET":
            continue
        body = real.files.get(rec["uri"], STREAM_BODY if rec["uri"] == "/stream" else None)
        assert body is not None, rec["uri"]
        magic = libmagic(body)
        assert magic in LIBMAGIC_TO_ZEEK, f"libmagic says {magic} for {rec['uri']}: extend the mapping"
        expected = LIBMAGIC_TO_ZEEK[magic]
        assert rec.get("resp_mime_types") == ([expected] if expected else None), rec["uri"]
        checked += 1
    assert checked >= 20
    types = {t for r in real.records for t in r.get("resp_mime_types", [])}
    assert types >= {"text/html", "text/json", "application/xml", "image/png", "image/gif", "application/pdf",
                     "application/zip", "application/x-gzip", "text/plain"}  # fmt: skip


def test_raw_requests_weirds_and_bodies(real: SimpleNamespace) -> None:
    ports = _raw_ports(real.pcap)
    weirds: dict[int, set[str]] = defaultdict(set)
    for rec in real.records:
        if rec.get("_log") == "weird":
            weirds[rec["id.orig_p"]].add(rec["name"])
    for port, name in ports.items():
        assert weirds.get(port, set()) == RAW_WEIRDS[name], name
    raw = set(ports)
    assert not [(p, w) for p, w in weirds.items() if p not in raw], "weirds on curl/wget/proxy flows"
    by_name = {name: _exchanges(real.records)[port] for port, name in ports.items()}
    assert [r["request_body_len"] for r in by_name["chunked_request"]] == [len(b"wikipedia")]
    assert by_name["obs_fold"][0]["request_headers"]["x-folded"] == "first second"
    assert [r["uri"] for r in by_name["leading_crlf"]] == ["/plain.txt", "/img.png"]
    assert [r["method"] for r in by_name["pipelined"]] == ["GET", "GET", "HEAD", "GET"]


def test_connect_tunnel_bytes_are_handed_on(real: SimpleNamespace) -> None:
    (rec,) = [r for r in real.records if "_log" not in r and r["id.resp_p"] == 8888]
    assert (rec["method"], rec["status_code"]) == ("CONNECT", 200)
    assert "TUNNEL" in rec["tags"]
    client = rec["id.orig_p"]
    sent: dict[bool, bytes] = {True: b"", False: b""}
    for flow, sender, data, _ in real.handed_on:
        assert flow.uid == rec["uid"]
        from_client = flow.endpoint(sender)[1] == client
        sent[from_client] += data
    # tshark's TLS records inside the tunnel, per direction: the handed-on bytes are exactly them
    tls: dict[bool, int] = {True: 0, False: 0}
    first_type = {}
    rows = tshark_fields(real.pcap, "tcp.port == 8888 && tls", ["tcp.srcport", "tls.record.length",
                                                                 "tls.handshake.type"])  # fmt: skip
    for r in rows:
        from_client = int(r["tcp.srcport"][0]) == client
        tls[from_client] += sum(5 + int(n) for n in r["tls.record.length"])
        if r["tls.handshake.type"]:
            first_type.setdefault(from_client, int(r["tls.handshake.type"][0]))
    assert len(sent[True]) == tls[True] and len(sent[False]) == tls[False]
    assert first_type[True] == 1  # tshark: the client's first handshake message is a ClientHello
    content_type, _, length = struct.unpack("!BHH", sent[True][:5])
    assert content_type == 22 and sent[True][5] == 1 and length == len(sent[True][5 : 5 + length])


def test_real_cell_path_gives_the_same_records(real: SimpleNamespace, tmp_path: Path) -> None:
    """`celltap cell --read` + `celltap analyzer http` (the built-in rule's reach) on the same capture."""
    via_cell = cell_records("http", real.pcap, tmp_path, "text")

    def key(r: dict) -> tuple:
        return (r["id.orig_p"], r["trans_depth"], r["method"], r.get("uri"), r.get("status_code"),
                r["request_body_len"], r["response_body_len"],
                tuple(r.get("resp_mime_types", ())))  # fmt: skip

    ours = sorted(key(r) for r in real.records if "_log" not in r)
    cell = sorted(key(r) for r in via_cell if "_log" not in r)
    method_only = {p for p, n in _raw_ports(real.pcap).items() if n == "method_only"}
    # a bare "GET" line has nothing an HTTP rule can tell from other protocols: the cell does not
    # classify that flow as HTTP (documented); every other exchange arrives the same way
    assert cell == [k for k in ours if k[0] not in method_only]


def test_capture_holds_every_class(real: SimpleNamespace) -> None:
    """The classes of issue 13 are in the capture, as tshark and nginx saw them (not as we did)."""
    rows = tshark_fields(
        real.pcap,
        "http.response",
        [
            "http.response.code",
            "http.content_length_header",
            "http.transfer_encoding",
            "http.content_encoding",
        ],
    )
    until_close = [r for r in rows if not r["http.content_length_header"] and not r["http.transfer_encoding"]]
    assert [r for r in until_close if r["http.response.code"] == ["200"]], "no response delimited by close"
    assert [r for r in rows if r["http.transfer_encoding"] == ["chunked"] and r["http.content_encoding"]]
    assert [r for r in rows if r["http.response.code"] == ["100"]]
    methods = {e["request"].split()[0] for e in real.log}
    assert {"GET", "HEAD", "POST"} <= methods
    protocols = {e["server_protocol"] for e in real.log if e["remote_addr"] == CLIENT}
    assert {"HTTP/1.0", "HTTP/1.1", "-"} <= protocols  # "-": the HTTP/0.9 request and the bare "GET"
    assert any(e["status"] == "400" for e in real.log) and any(e["status"] == "501" for e in real.log)


def test_celltap_analyze_writes_the_records_and_analyzes_tls_inside_connect(
    real: SimpleNamespace, tmp_path: Path
) -> None:
    """One command on the capture: http.log holds our records, tls.log the TLS handed on from CONNECT."""
    out = tmp_path / "logs"
    proc = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "analyze", real.pcap, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr

    def read(name: str) -> list[dict]:
        path = out / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def key(r: dict) -> tuple:
        return (
            r["uid"],
            r["trans_depth"],
            r["method"],
            r.get("uri"),
            r.get("status_code"),
            r["response_body_len"],
        )

    method_only = {p for p, n in _raw_ports(real.pcap).items() if n == "method_only"}
    ours = sorted(key(r) for r in real.records if "_log" not in r and r["id.orig_p"] not in method_only)
    assert sorted(key(r) for r in read("http.log")) == ours
    (connect,) = [r for r in read("http.log") if r["method"] == "CONNECT"]
    port = str(connect["id.orig_p"])
    tls = [r for r in read("tls.log") if connect["uid"] in json.dumps(r) or f'"{port}"' in json.dumps(r)]
    assert tls, "no tls.log record for the TLS inside the CONNECT tunnel"
