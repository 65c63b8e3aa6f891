"""HTTP/1.x analyzer: one Zeek http.log record per request/response pair, weird records for violations.

Theory of operation: `HttpFlow` is a sans-IO state machine per TCP flow with one `_Side` per
direction. A side alternates between reading a head (start line + fields, found by its empty line,
CRLF or lone LF) and reading a body framed as RFC 9112 §6.3 says: chunked when chunked is the final
transfer coding, Content-Length, until the connection closes, or none (HEAD, 1xx, 204, 304). Bodies
are never buffered: their decoded length is counted (chunked framing removed, gzip/deflate
Content-Encoding inflated in bounded steps, as Zeek counts `*_body_len`) and only their first
`SNIFF_BYTES` are kept to sniff a MIME type. Requests wait in a FIFO for their responses (pipelining,
keep-alive); a record is emitted when its response ends (or at the flow's end, answered or not), so
records come out in request order. Interim 1xx responses fill info_code/info_msg; a 2xx answer to
CONNECT turns the flow into a tunnel whose bytes are handed on to the L7 loopback (TLS inside is
analyzed again); 101 stops parsing. HTTP/0.9 requests (a request line without version) get the
server's raw bytes until close as their response. Violations are reported as weird records (once per
flow and name; every occurrence is counted) and parsing goes on where the message can still be
delimited: a bad request line is skipped, a bad field line left out; only an unbounded head or a
direction whose framing is lost stops that direction.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import deque

from celltap.cell.analyzers.conn_id import conn_fields
from celltap.cell.analyzers.http_message import (
    chunk_size,
    content_length,
    head_end,
    parse_head,
    parse_request_line,
    parse_status_line,
    transfer_coding,
    unescape_uri,
)
from celltap.cell.analyzers.http_mime import SNIFF_BYTES, sniff
from celltap.cell.sdk.events import FlowId
from celltap.cell.sdk.flows import FlowAnalyzer

MAX_HEAD = 64 * 1024  # head (start line + fields) bytes buffered per direction
MAX_CHUNK_LINE = 1024
MAX_PENDING = 100  # requests waiting for responses on one flow (Zeek's HTTP::max_pending_requests)
MAX_INTERIM = 16  # interim (1xx) responses listed per request
MAX_BAD_LINES = 8  # consecutive lines that are not request lines before a client side is given up
MAX_DECODED = 64 * 1024 * 1024  # inflated bytes counted per body (decompression bombs)
INFLATE_STEP = 256 * 1024

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILER, UNTIL_CLOSE, TUNNEL, HOLD, IGNORE = range(10)

# Zeek's HTTP::proxy_headers, lower-cased
PROXY_HEADERS = frozenset(
    (
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-from",
        "client-ip",
        "via",
        "xroxy-connection",
        "proxy-connection",
    )
)
# Zeek's HTTP::http_methods plus PATCH (RFC 5789, a standard method Zeek's list predates): others are
# reported as unknown_HTTP_method
HTTP_METHODS = frozenset(
    (
        "GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "CONNECT", "PATCH", "PROPFIND",
        "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "POLL", "REPORT", "SUBSCRIBE", "BMOVE",
        "SEARCH",
    )
)  # fmt: skip
_NO_BODY = frozenset((204, 304))
_ZERO_LENGTHS = {"request_body_len": 0, "response_body_len": 0}
_INFLATE = frozenset(("gzip", "x-gzip", "deflate"))
_INFLATE_LATER = b""  # deflate: zlib-wrapped or raw, decided from the first two body bytes (kept till then)
_STOPPED = False  # inflating gave up: the rest of the body is not counted


class _Side:
    __slots__ = (
        "bad_lines",
        "body",
        "buf",
        "decoder",
        "emit_after",
        "head",
        "is_client",
        "mode",
        "msg",
        "remaining",
    )

    def __init__(self, is_client: bool) -> None:
        self.is_client = is_client
        self.buf = b""
        self.mode = HEAD
        self.remaining = 0
        self.body = 0  # decoded body bytes of the current message
        self.msg: dict | None = None  # the record the current message belongs to
        self.head: bytes | None = None  # first body bytes, kept for MIME sniffing
        # zlib decompressor; bytes: deflate's first bytes, kept until its wrapping is known;
        # _STOPPED; None: identity
        self.decoder: object = None
        self.emit_after = False  # client: the response ended before this request's body did
        self.bad_lines = 0


def _basic_user(value: str) -> str | None:
    """The user name of a Basic credential (as Zeek logs it), None if `value` is another scheme."""
    if value[:6].lower() != "basic ":
        return None
    token = value[6:].strip(" \t")
    try:
        userpass = base64.b64decode(token, validate=False).decode("utf-8", "backslashreplace")
    except (binascii.Error, ValueError):
        return f"<problem-decoding> ({value})"
    user, sep, _ = userpass.partition(":")
    return user if sep else f"<problem-decoding> ({value})"


class HttpFlow:
    """One TCP flow's HTTP state: two directions, a FIFO of requests awaiting responses."""

    __slots__ = (
        "analyzer",
        "broken",
        "client",
        "depth",
        "early",
        "flow",
        "head",
        "http09",
        "pending",
        "sides",
        "time",
        "weirds",
    )

    def __init__(self, analyzer: HttpAnalyzer, flow: FlowId, time: float) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.time = time
        self.client = 0  # endpoint number of the client once known
        self.sides: dict[int, _Side] = {}
        self.pending: deque[dict] = deque()
        self.depth = 0  # requests (and unrequested responses) seen: Zeek's trans_depth
        self.broken = False
        self.weirds: set[str] = set()
        self.head: dict | None = None  # conn_fields of this flow (client known), copied into each record
        self.http09 = 0  # HTTP/0.9 requests waiting for their (raw) response
        self.early: dict[int, bytes] = {}  # first bytes of a side too short to tell a status line

    # -- plumbing ------------------------------------------------------------------------------
    def _side(self, sender: int, data: bytes) -> _Side:
        if not self.client:
            self.client = 3 - sender if data.startswith(b"HTTP/") else sender
        side = self.sides[sender] = _Side(sender == self.client)
        return side

    def weird(self, name: str, addl: str = "") -> None:
        """Count a protocol violation; the first of each name per flow also becomes a weird record."""
        self.analyzer.error(name)
        if name in self.weirds:
            return
        self.weirds.add(name)
        rec = conn_fields(self.flow, self.client or 1, self.time)
        rec["_log"] = "weird"
        rec["name"] = name
        if addl:
            rec["addl"] = addl[:200]
        rec["source"] = "HTTP"
        self.analyzer.records.append(rec)

    def _fail(self, reason: str) -> None:
        """Stop parsing this flow (a head beyond bounds): report it, flush what was understood at the end."""
        if self.broken:
            return
        self.weird(reason)
        self.broken = True
        for side in self.sides.values():
            side.mode = IGNORE
            side.buf = b""

    def _emit(self, rec: dict) -> None:
        self.analyzer.records.append(rec)

    def _pop(self) -> dict:
        """The oldest request waiting for its response, taken off the queue."""
        rec = self.pending.popleft()
        if self.http09 and rec.get("request_version") == "0.9":
            self.http09 -= 1
        return rec

    def _internal_error(self, exc: Exception) -> None:
        """A parser bug met by this flow's bytes: it costs this flow only (reported, counted)."""
        self.weird("HTTP_analyzer_internal_error", repr(exc))
        self.broken = True
        for side in self.sides.values():
            side.mode = IGNORE
            side.buf = b""

    # -- input ---------------------------------------------------------------------------------
    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        if self.broken or not data:
            return
        try:  # whatever the bytes, they cost this flow only
            side = self.sides.get(sender)
            if side is None:
                if not self.client:  # a status line tells the server: wait until "HTTP/" can be told
                    early = self.early.pop(sender, b"") + data if self.early else data
                    if len(early) < 5 and b"HTTP/".startswith(early):
                        self.early[sender] = early
                        return
                    data = early
                side = self._side(sender, data)
            mode = side.mode
            if mode == TUNNEL:
                self.analyzer.hand_on(self.flow, sender, data, time)
                return
            if mode == IGNORE:
                return
            self.time = time
            if side.buf:
                data = side.buf + data
                side.buf = b""
            if mode == HOLD:
                if len(data) <= MAX_HEAD:
                    side.buf = data
                    return
                self.weird("CONNECT_data_before_reply")
                side.mode = HEAD
            self._parse(side, data)
        except Exception as exc:
            self._internal_error(exc)

    def _parse(self, side: _Side, data: bytes) -> None:
        """Consume `data` on one side; a part that cannot complete yet waits in `side.buf`."""
        pos = 0
        n = len(data)
        while pos < n:
            mode = side.mode
            if mode == HEAD:
                pos = self._at_head(side, data, pos, n)
            elif mode == BODY or mode == CHUNK_DATA:
                take = min(side.remaining, n - pos)
                if side.decoder is None:
                    side.body += take
                    head = side.head
                    if head is not None and len(head) < SNIFF_BYTES:
                        side.head = head + data[pos : min(pos + take, pos + SNIFF_BYTES - len(head))]
                else:
                    self._inflate(side, memoryview(data)[pos : pos + take])
                side.remaining -= take
                pos += take
                if not side.remaining:
                    if mode == BODY:
                        self._message_done(side)
                    else:
                        side.mode = CHUNK_END
            elif mode == CHUNK_SIZE or mode == CHUNK_END:
                pos = self._chunk_line(side, data, pos, n, mode)
            elif mode == TRAILER:
                pos = self._trailer(side, data, pos, n)
            elif mode == UNTIL_CLOSE:
                self._body(side, data, pos, n)
                return
            elif mode == HOLD:
                side.buf = data[pos:]
                return
            elif mode == TUNNEL:
                sender = self.client if side.is_client else 3 - self.client
                self.analyzer.hand_on(self.flow, sender, data[pos:], self.time)
                return
            else:  # IGNORE
                return
            if pos < 0:
                return

    def _at_head(self, side: _Side, data: bytes, pos: int, n: int) -> int:
        """A start line is due at `pos`: read the head if complete; the next position, or -1 to stop."""
        if (
            self.http09
            and not side.is_client
            and self.pending
            and self.pending[0].get("request_version") == "0.9"
        ):
            if not data.startswith(b"HTTP/"[: n - pos], pos):
                self._http09_response(side)
                return pos
        c = data[pos]
        if c == 13 or c == 10:  # empty lines before a start line are ignored (RFC 9112 §2.2)
            while pos < n and data[pos] in (10, 13):
                pos += 1
            return pos
        # the head ends at its first empty line, CRLF or lone LF (inlined http_message.head_end)
        end = data.find(b"\n\r\n", pos)
        if end < 0:
            end = data.find(b"\n\n", pos)
            nxt = end + 2
        else:
            lf = data.find(b"\n\n", pos, end + 1)
            if lf >= 0:
                end, nxt = lf, lf + 2
            else:
                nxt = end + 3
        if end < 0:
            if side.is_client:
                nl = data.find(b"\n", pos)
                if 0 <= nl - pos <= MAX_HEAD and self._line_only(side, data, pos, nl):
                    return nl + 1
            if n - pos > MAX_HEAD:
                self._fail("header_too_long")
                return -1
            side.buf = data[pos:]
            return -1
        if end - pos > MAX_HEAD:
            self._fail("header_too_long")
            return -1
        if side.is_client:
            return self._head(side, data, pos, end, nxt)
        return self._response(side, data, pos, end, nxt)

    def _chunk_line(self, side: _Side, data: bytes, pos: int, n: int, mode: int) -> int:
        """A chunk-size line, or the line end after a chunk's data; the next position, or -1 to stop."""
        end = data.find(b"\n", pos)
        if end < 0:
            if n - pos > MAX_CHUNK_LINE:
                self._lost(side, "HTTP_bad_chunk_size")
                return -1
            side.buf = data[pos:]
            return -1
        line = data[pos:end]
        if mode == CHUNK_END:
            if line not in (b"", b"\r"):
                self.weird("HTTP_chunk_data_longer_than_size")
            side.mode = CHUNK_SIZE
            return end + 1
        size = chunk_size(line)
        if size is None:
            self._lost(side, "HTTP_bad_chunk_size", line[:40].decode("latin-1"))
            return -1
        if size:
            side.mode = CHUNK_DATA
            side.remaining = size
        else:
            side.mode = TRAILER
        return end + 1

    def _trailer(self, side: _Side, data: bytes, pos: int, n: int) -> int:
        """The trailer section after the last chunk; the next position, or -1 to stop."""
        c = data[pos]
        if c == 10 or (c == 13 and data.startswith(b"\r\n", pos)):
            self._message_done(side)
            return pos + (1 if c == 10 else 2)
        end, nxt = head_end(data, pos)
        if end < 0:
            if n - pos > MAX_HEAD:
                self._fail("header_too_long")
                return -1
            side.buf = data[pos:]
            return -1
        stop = end - 1 if data[end - 1] == 13 else end
        _, fields, problem = parse_head(b"\r\n" + data[pos:stop])
        if problem:
            self.weird(problem)
        if side.msg is not None and fields:
            side.msg["request_trailers" if side.is_client else "response_trailers"] = fields
        self._message_done(side)
        return nxt

    def _lost(self, side: _Side, reason: str, addl: str = "") -> None:
        """This direction's framing is lost: report it, end its message, ignore its further bytes."""
        self.weird(reason, addl)
        msg = side.msg
        if msg is not None:
            msg["response_truncated" if not side.is_client else "request_truncated"] = True
            self._message_done(side)
        side.mode = IGNORE
        side.buf = b""

    # -- requests ------------------------------------------------------------------------------
    def _new_record(self) -> dict:
        head = self.head
        if head is None:
            head = self.head = conn_fields(self.flow, self.client, self.time)
        rec = head.copy()
        rec["ts"] = self.time
        self.depth += 1
        rec["trans_depth"] = self.depth
        return rec

    def _request_record(self, method: str, target: str | None, version: str | None) -> dict:
        head = self.head
        if head is None:
            head = self.head = conn_fields(self.flow, self.client, self.time)
        self.depth += 1
        rec = {**head, "ts": self.time, "trans_depth": self.depth, "method": method}
        if target is not None:
            if "%" in target:
                uri = unescape_uri(target)
                rec["uri"] = uri
                if uri != target:
                    rec["original_uri"] = target
            else:
                rec["uri"] = target
        if version is not None:
            rec["request_version"] = version
            if version == "0.9":
                self.http09 += 1
        rec.update(_ZERO_LENGTHS)
        rec["tags"] = []
        if method not in HTTP_METHODS:
            self.weird("unknown_HTTP_method", method)
        if len(self.pending) >= MAX_PENDING:
            # as Zeek: log the oldest unanswered request to bound the state
            self.weird("HTTP_excessive_pipelining")
            old = self._pop()
            old["unanswered"] = True
            self._emit(old)
        self.pending.append(rec)
        return rec

    def _bad_line(self, side: _Side, line: str) -> bool:
        """Report a line that is not a request line; False once the client side is given up."""
        self.weird("bad_request_line", line[:80])
        side.bad_lines += 1
        if side.bad_lines > MAX_BAD_LINES:
            self.weird("not_HTTP_client")
            side.mode = IGNORE
            side.buf = b""
            return False
        return True

    def _line_only(self, side: _Side, data: bytes, pos: int, nl: int) -> bool:
        """A complete request line without fields yet: handle it now if it stands alone (HTTP/0.9, no
        target and version). Returns True when the line was consumed."""
        line = data[pos:nl].decode("latin-1").rstrip("\r")
        req = parse_request_line(line)
        if req is None:
            return self._bad_line(side, line) and True
        method, target, version, problem = req
        if version is not None and version != "0.9":
            return False  # an HTTP/1.x head: wait for its empty line
        self._line_request(side, method, target, version, problem)
        return True

    def _line_request(
        self, side: _Side, method: str, target: str | None, version: str | None, problem: str | None
    ) -> None:
        if problem:
            self.weird(problem, method)
        side.bad_lines = 0
        self._request_record(method, target, version)

    def _head(self, side: _Side, data: bytes, pos: int, end: int, nxt: int) -> int:
        first, fields, field_problem = parse_head(data[pos : end - 1 if data[end - 1] == 13 else end])
        req = parse_request_line(first)
        if req is None:
            if not self._bad_line(side, first):
                return -1
            return data.index(b"\n", pos) + 1  # skip this line only
        method, target, version, problem = req
        if version is None or version == "0.9":  # a request line alone: what follows is not its head
            self._line_request(side, method, target, version, problem)
            return data.index(b"\n", pos) + 1
        side.bad_lines = 0
        if problem:
            self.weird(problem, first[:80])
        rec = self._request_record(method, target, version)
        if field_problem:
            self.weird(field_problem)
        rec["request_headers"] = fields
        self._request_fields(rec, fields)
        side.msg = rec
        side.body = 0
        if not self._framing(side, fields, True):
            return -1
        if side.mode == HEAD and method == "CONNECT":
            side.mode = HOLD  # what the client sends next is tunnel data if the proxy says 2xx
        return nxt

    def _request_fields(self, rec: dict, fields: dict[str, str]) -> None:
        """Zeek's request-side fields from the request's header fields."""
        get = fields.get
        value = get("host")
        if value is not None:
            rec["host"] = value
        value = get("referer")
        if value is not None:
            rec["referrer"] = value
        value = get("user-agent")
        if value is not None:
            rec["user_agent"] = value
        value = get("origin")
        if value is not None:
            rec["origin"] = value
        value = get("authorization")
        if value is None:
            value = get("proxy-authorization")
        if value is not None:
            user = _basic_user(value)
            if user is not None:
                rec["username"] = user
        if not PROXY_HEADERS.isdisjoint(fields):
            rec["proxied"] = [f"{n.upper()} -> {fields[n]}" for n in fields if n in PROXY_HEADERS]
            rec["tags"] = ["PROXIED"]

    def _framing(self, side: _Side, fields: dict[str, str], request: bool) -> bool:
        """Set up reading a message body from its fields (RFC 9112 §6.3); False if the side is lost."""
        te = fields.get("transfer-encoding")
        codings: list[str] = []
        if te is not None:
            chunked, codings = transfer_coding(te)
            if chunked:
                codings.pop()
            if "content-length" in fields:
                self.weird("HTTP_both_CL_and_TE")
            if chunked:
                side.mode = CHUNK_SIZE
            elif request:  # the body's length cannot be known: the server must answer 400 and close
                self._lost(side, "HTTP_bad_transfer_encoding", te)
                return False
            else:
                side.mode = UNTIL_CLOSE
        elif "content-length" in fields:
            length = content_length(fields["content-length"])
            if length is None:
                if request:
                    self._lost(side, "HTTP_bad_content_length", fields["content-length"][:40])
                    return False
                self.weird("HTTP_bad_content_length", fields["content-length"][:40])
                side.mode = UNTIL_CLOSE
            elif length:
                side.mode = BODY
                side.remaining = length
            else:
                self._message_done(side)
                return True
        else:
            if request:
                self._message_done(side)
                return True
            side.mode = UNTIL_CLOSE
        self._start_body(side, fields, codings)
        return True

    def _start_body(self, side: _Side, fields: dict[str, str], codings: list[str]) -> None:
        """Start counting a body; inflate a gzip/deflate transfer coding, else such a content coding."""
        side.head = b""
        if codings:  # transfer codings other than the final chunked: they are part of the framing
            coding = codings[0] if len(codings) == 1 else ""
            if coding not in _INFLATE:
                self.weird("HTTP_transfer_coding_not_decoded", ", ".join(codings))
        else:
            coding = fields.get("content-encoding")
            if coding is None:
                return
            coding = coding.strip(" \t").lower()
        if coding in ("gzip", "x-gzip"):
            side.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            side.decoder = _INFLATE_LATER

    # -- responses -----------------------------------------------------------------------------
    def _http09_response(self, side: _Side) -> None:
        """HTTP/0.9: the response to the oldest request is the raw body until the server closes."""
        rec = self._pop()
        rec["version"] = "0.9"
        rec["response_ts"] = self.time
        side.msg = rec
        side.body = 0
        side.mode = UNTIL_CLOSE
        side.head = b""

    def _response(self, side: _Side, data: bytes, pos: int, end: int, nxt: int) -> int:
        pending = self.pending
        first, fields, problem = parse_head(data[pos : end - 1 if data[end - 1] == 13 else end])
        status = parse_status_line(first)
        if status is None:
            self.weird("bad_status_line", first[:80])
            side.mode = IGNORE
            return -1
        version, code, reason = status
        if problem:
            self.weird(problem)
        if 100 <= code < 200 and code != 101:  # interim: the final response follows
            if pending:
                rec = pending[0]
                rec["info_code"] = code
                rec["info_msg"] = reason
                interim = rec.setdefault("informational", [])
                if len(interim) < MAX_INTERIM:
                    interim.append({"version": version, "code": code, "msg": reason})
                else:
                    self.weird("HTTP_too_many_interim_responses")
            else:
                self.weird("response_without_request", first[:80])
            return nxt
        if pending:
            rec = pending.popleft()
            if self.http09 and rec.get("request_version") == "0.9":
                self.http09 -= 1
        else:
            self.weird("response_without_request", first[:80])
            rec = self._new_record()
            rec["request_body_len"] = 0
            rec["response_body_len"] = 0
            rec["tags"] = []
        rec["version"] = version
        rec["status_code"] = code
        rec["status_msg"] = reason
        rec["response_ts"] = self.time
        rec["response_headers"] = fields
        side.msg = rec
        side.body = 0
        method = rec.get("method")
        if code == 101 or (method == "CONNECT" and 200 <= code < 300):
            self._tunnel(side, rec, data[nxt:], code == 101)
            return -1
        if method == "CONNECT":
            client = self.sides.get(self.client)
            if client is not None and client.mode == HOLD:  # refused: the held bytes are HTTP again
                client.mode = HEAD
                held, client.buf = client.buf, b""
                if held:
                    self._parse(client, held)
        if method == "HEAD" or code in _NO_BODY:
            self._message_done(side)
            return nxt
        if not self._framing(side, fields, False):
            return -1
        return nxt

    def _tunnel(self, side: _Side, rec: dict, rest: bytes, upgrade: bool) -> None:
        """The response switched protocols: emit its record; hand CONNECT tunnels' bytes on."""
        self._message_done(side)
        client = self.sides.get(self.client)
        if upgrade:
            rec["tags"] = [*rec["tags"], "UPGRADED"]
            for s in self.sides.values():
                s.mode = IGNORE
                s.buf = b""
            return
        rec["tags"] = [*rec["tags"], "TUNNEL"]
        held = b""
        if client is not None:
            held, client.buf = client.buf, b""
            client.mode = TUNNEL
        side.mode = TUNNEL
        hand_on = self.analyzer.hand_on
        if held:
            hand_on(self.flow, self.client, held, self.time)
        if rest:
            hand_on(self.flow, 3 - self.client, rest, self.time)

    # -- bodies --------------------------------------------------------------------------------
    def _body(self, side: _Side, data: bytes, start: int, stop: int) -> None:
        if side.decoder is None:
            side.body += stop - start
            head = side.head
            if head is not None and len(head) < SNIFF_BYTES:
                side.head = head + data[start : min(stop, start + SNIFF_BYTES - len(head))]
            return
        self._inflate(side, memoryview(data)[start:stop])

    def _inflate(self, side: _Side, chunk: memoryview) -> None:
        dec = side.decoder
        if dec is _STOPPED or not chunk:
            return
        if isinstance(dec, bytes):  # zlib-wrapped (RFC 9110) or, as some servers send it, raw deflate
            if len(dec) + len(chunk) < 2:
                side.decoder = dec + bytes(chunk)
                return
            if dec:
                chunk = memoryview(dec + bytes(chunk))
            zlib_header = chunk[0] & 0x0F == 8 and (chunk[0] * 256 + chunk[1]) % 31 == 0
            dec = side.decoder = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        try:
            out = dec.decompress(chunk, INFLATE_STEP)
            while True:
                side.body += len(out)
                head = side.head
                if head is not None and len(head) < SNIFF_BYTES:
                    side.head = head + out[: SNIFF_BYTES - len(head)]
                if side.body > MAX_DECODED:
                    self.weird("HTTP_inflate_limit")
                    side.decoder = _STOPPED
                    return
                tail = dec.unconsumed_tail
                if not tail:
                    return
                out = dec.decompress(tail, INFLATE_STEP)
        except zlib.error as exc:
            self.weird("HTTP_inflate_failed", str(exc))
            side.decoder = _STOPPED

    def _message_done(self, side: _Side) -> None:
        side.mode = HEAD
        rec = side.msg
        if rec is None:
            return
        side.msg = None
        head = side.head
        if head is not None:
            side.head = None
            if head:
                mime = sniff(head)
                if mime is not None:
                    rec["orig_mime_types" if side.is_client else "resp_mime_types"] = [mime]
        if side.decoder is not None:
            side.decoder = None
        if side.is_client:
            rec["request_body_len"] = side.body
            if side.emit_after:
                side.emit_after = False
                self.analyzer.records.append(rec)
            return
        rec["response_body_len"] = side.body
        client = self.sides.get(self.client)
        if client is not None and client.msg is rec:
            # answered before the request body ended (e.g. 413, a refused 100-continue)
            client.emit_after = True
        else:
            self.analyzer.records.append(rec)

    # -- end -----------------------------------------------------------------------------------
    def end(self, reason: str, time: float) -> None:
        """The flow ended: finish read-until-close bodies; report truncated and unanswered messages."""
        self.time = time
        try:
            self._end()
        except Exception as exc:  # whatever the bytes, they cost this flow only
            self._internal_error(exc)
            for rec in self.pending:
                self._emit(rec)
            self.pending.clear()

    def _end(self) -> None:
        client = self.sides.get(self.client) if self.client else None
        server = self.sides.get(3 - self.client) if self.client else None
        if self.early or any(s.buf and s.mode in (HEAD, HOLD) for s in (client, server) if s is not None):
            self.weird("incomplete_message")
        if client is not None and client.msg is not None:
            rec = client.msg
            if client.mode != HOLD:
                self.weird("truncated_request")
                rec["request_truncated"] = True
            emit = client.emit_after
            client.emit_after = False
            self._message_done(client)
            if emit:
                self._emit(rec)
        if server is not None and server.msg is not None:
            if server.mode != UNTIL_CLOSE:
                self.weird("truncated_response")
                server.msg["response_truncated"] = True
            self._message_done(server)
        for rec in self.pending:
            rec["unanswered"] = True
            self._emit(rec)
        self.pending.clear()


class HttpAnalyzer(FlowAnalyzer):
    """Analyzer factory for HTTP flows (TCP only)."""

    name = "http"
    # every parse-error reason this analyzer counts (tests/deploy/test_metrics_at_start.py checks the list)
    error_reasons = (
        "HTTP_analyzer_internal_error",
        "CONNECT_data_before_reply",
        "HTTP_chunk_data_longer_than_size",
        "unknown_HTTP_method",
        "HTTP_excessive_pipelining",
        "bad_request_line",
        "not_HTTP_client",
        "HTTP_both_CL_and_TE",
        "HTTP_bad_content_length",
        "HTTP_transfer_coding_not_decoded",
        "bad_status_line",
        "HTTP_too_many_interim_responses",
        "response_without_request",
        "HTTP_inflate_limit",
        "HTTP_inflate_failed",
        "incomplete_message",
        "truncated_request",
        "truncated_response",
        "header_too_long",
        "HTTP_bad_chunk_size",
        "HTTP_bad_transfer_encoding",
        "bad_header_line",
        "missing_HTTP_uri",
        "HTTP09_method_not_GET",
        "blank_in_HTTP_uri",
    )

    def stream(self, flow: FlowId, time: float) -> HttpFlow:
        """Start parsing a new TCP flow."""
        return HttpFlow(self, flow, time)
