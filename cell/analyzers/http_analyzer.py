"""HTTP/1.x analyzer: sans-IO per-flow parser emitting SF-TAP Figure 6 records (one per exchange).

Handles keep-alive, pipelining, Content-Length and chunked bodies (sizes only, bodies are never
buffered), 1xx interim responses, HEAD/204/304, read-until-close bodies, and Upgrade/CONNECT tunnels.
A stream that stops parsing is reported once per flow and counted by reason.
"""

from __future__ import annotations

from collections import deque

from cell.analyzers.endpoints import endpoint
from cell.sdk.events import FlowId
from cell.sdk.flows import FlowAnalyzer

MAX_HEAD = 64 * 1024  # header block (start line + headers) bytes buffered per direction
MAX_CHUNK_LINE = 1024
MAX_PENDING = 1024  # requests waiting for responses on one flow

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILER, UNTIL_CLOSE, TUNNEL, BROKEN = range(9)

_NO_BODY_CODES = frozenset(("204", "304"))


class _Side:
    __slots__ = ("body", "buf", "is_client", "mode", "msg", "remaining")

    def __init__(self, is_client: bool) -> None:
        self.is_client = is_client
        self.buf = b""
        self.mode = HEAD
        self.remaining = 0
        self.body = 0
        self.msg: dict | None = None


def _parse_head(head: bytes) -> tuple[list[str], dict[str, str]] | None:
    """Split a header block into start-line parts and lower-cased headers; None if it is not HTTP."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    last = ""
    for line in lines[1:]:
        i = line.find(":")
        if i <= 0 or line[0] in " \t":
            if line[:1] in (" ", "\t") and last:
                headers[last] += " " + line.strip()  # obsolete line folding
                continue
            return None
        name = line[:i].lower()
        if " " in name or "\t" in name:
            name = name.strip()
            if not name or " " in name or "\t" in name:
                return None
        value = line[i + 1 :].strip()
        if name in headers:
            headers[name] += ", " + value
        else:
            headers[name] = value
        last = name
    return parts, headers


class HttpFlow:
    """One TCP flow's HTTP state: two directions, a FIFO of requests awaiting responses."""

    __slots__ = (
        "analyzer",
        "broken",
        "cip",
        "client",
        "cport",
        "flow",
        "pending",
        "sides",
        "sip",
        "sport",
        "time",
    )

    def __init__(self, analyzer: HttpAnalyzer, flow: FlowId, time: float) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.time = time
        self.client = 0  # endpoint number of the client once known
        self.sides: dict[int, _Side] = {}
        self.pending: deque[dict] = deque()
        self.broken = False
        self.cip = self.cport = self.sip = self.sport = ""

    # -- direction inference -------------------------------------------------------------------
    def _side(self, sender: int, data: bytes) -> _Side | None:
        side = self.sides.get(sender)
        if side is not None:
            return side
        if not self.client:
            if data.startswith(b"HTTP/"):
                self.client = 3 - sender
            else:
                self.client = sender
            flow = self.flow
            if self.client == 1:
                self.cip, self.cport, self.sip, self.sport = (
                    flow.ip1,
                    str(flow.port1),
                    flow.ip2,
                    str(flow.port2),
                )
            else:
                self.cip, self.cport, self.sip, self.sport = (
                    flow.ip2,
                    str(flow.port2),
                    flow.ip1,
                    str(flow.port1),
                )
        side = self.sides[sender] = _Side(sender == self.client)
        return side

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        if self.broken or not data:
            return
        side = self._side(sender, data)
        if side is None or side.mode == TUNNEL:
            return
        self.time = time
        if side.buf:
            data = side.buf + data
            side.buf = b""
        self._parse(side, data)

    def _parse(self, side: _Side, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            mode = side.mode
            if mode == HEAD:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n - pos > MAX_HEAD:
                        self._fail("header_too_long")
                        return
                    side.buf = data[pos:]
                    return
                if end - pos > MAX_HEAD:
                    self._fail("header_too_long")
                    return
                if not self._head(side, data[pos:end]):
                    return
                pos = end + 4
            elif mode == BODY:
                take = min(side.remaining, n - pos)
                side.body += take
                side.remaining -= take
                pos += take
                if not side.remaining:
                    self._done(side)
            elif mode == CHUNK_SIZE:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    if n - pos > MAX_CHUNK_LINE:
                        self._fail("bad_chunk_size")
                        return
                    side.buf = data[pos:]
                    return
                try:
                    size = int(data[pos:end].split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self._fail("bad_chunk_size")
                    return
                pos = end + 2
                if size:
                    side.mode = CHUNK_DATA
                    side.remaining = size
                else:
                    side.mode = TRAILER
            elif mode == CHUNK_DATA:
                take = min(side.remaining, n - pos)
                side.body += take
                side.remaining -= take
                pos += take
                if not side.remaining:
                    side.mode = CHUNK_CRLF
                    side.remaining = 2
            elif mode == CHUNK_CRLF:
                take = min(side.remaining, n - pos)
                side.remaining -= take
                pos += take
                if not side.remaining:
                    side.mode = CHUNK_SIZE
            elif mode == TRAILER:
                if data.startswith(b"\r\n", pos):
                    pos += 2
                    self._done(side)
                    continue
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n - pos > MAX_HEAD:
                        self._fail("header_too_long")
                        return
                    side.buf = data[pos:]
                    return
                parsed = _parse_head(b"x\r\n" + data[pos:end])
                if parsed is None:
                    self._fail("bad_trailer")
                    return
                if side.msg is not None:
                    (side.msg if side.is_client else side.msg["server"])["trailer"] = parsed[1]
                pos = end + 4
                self._done(side)
            elif mode == UNTIL_CLOSE:
                side.body += n - pos
                return
            else:  # TUNNEL or BROKEN
                return

    def _head(self, side: _Side, head: bytes) -> bool:
        parsed = _parse_head(head)
        if parsed is None:
            self._fail("bad_header_line")
            return False
        parts, headers = parsed
        flow = self.flow
        if side.is_client:
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                self._fail("bad_request_line")
                return False
            msg = {
                "client": {
                    "ip": self.cip,
                    "port": self.cport,
                    "header": headers,
                    "method": {"method": parts[0], "uri": parts[1], "ver": parts[2]},
                    "trailer": {},
                },
                "time": self.time,
            }
            if len(self.pending) >= MAX_PENDING:
                self._fail("too_many_pending_requests")
                return False
            self.pending.append(msg)
            side.msg = msg["client"]
            side.body = 0
            te = headers.get("transfer-encoding")
            if te is not None and "chunked" in te.lower():
                side.mode = CHUNK_SIZE
            elif "content-length" in headers:
                return self._content_length(side, headers["content-length"])
            else:
                self._done(side)
            return True
        # server side
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            self._fail("bad_status_line")
            return False
        code = parts[1]
        server = {
            "ip": self.sip,
            "port": self.sport,
            "header": headers,
            "response": {"ver": parts[0], "code": code, "msg": parts[2] if len(parts) > 2 else ""},
            "trailer": {},
        }
        request = self.pending[0] if self.pending else None
        if code[0] == "1" and code != "101":
            if request is not None:
                request.setdefault("informational", []).append(server["response"])
            return True  # interim: the final response follows
        if request is not None:
            self.pending.popleft()
            record = request
        else:
            record = {"client": endpoint(flow, self.client), "time": self.time}
            self.analyzer.error("response_without_request")
        record["server"] = server
        record["response_time"] = self.time
        side.msg = record  # the whole record: emitted when the response body ends
        side.body = 0
        method = record["client"].get("method", {}).get("method") if "method" in record["client"] else None
        if code == "101" or (method == "CONNECT" and code[0] == "2"):
            self._emit(record, 0)
            for s in self.sides.values():
                s.mode = TUNNEL
            return False
        if method == "HEAD" or code in _NO_BODY_CODES:
            self._done(side)
            return True
        te = headers.get("transfer-encoding")
        if te is not None and "chunked" in te.lower():
            side.mode = CHUNK_SIZE
        elif "content-length" in headers:
            return self._content_length(side, headers["content-length"])
        else:
            side.mode = UNTIL_CLOSE
        return True

    def _content_length(self, side: _Side, value: str) -> bool:
        try:
            length = int(value.split(",")[0])
            if length < 0:
                raise ValueError(value)
        except ValueError:
            self._fail("bad_content_length")
            return False
        if length:
            side.mode = BODY
            side.remaining = length
        else:
            self._done(side)
        return True

    def _done(self, side: _Side) -> None:
        side.mode = HEAD
        msg = side.msg
        side.msg = None
        if msg is None:
            return
        if side.is_client:
            msg["body_size"] = side.body
        else:
            self._emit(msg, side.body)

    def _emit(self, record: dict, body: int) -> None:
        record["server"]["body_size"] = body
        self.analyzer.records.append(record)

    def _fail(self, reason: str) -> None:
        """Report an unparseable stream once, flush what was understood, and stop parsing this flow."""
        if self.broken:
            return
        self.broken = True
        self.analyzer.error(reason)
        client = self.client or 1
        self.analyzer.records.append(
            {
                "error": reason,
                "client": endpoint(self.flow, client),
                "server": endpoint(self.flow, 3 - client),
                "time": self.time,
            }
        )
        for side in self.sides.values():
            side.mode = BROKEN
            side.buf = b""

    def end(self, reason: str, time: float) -> None:
        """The flow ended: finish read-until-close bodies, report requests that got no answer."""
        if not self.broken and any(s.buf for s in self.sides.values()):
            self._fail("incomplete_message")
        server_side = self.sides.get(3 - self.client) if self.client else None
        if server_side is not None and server_side.msg is not None and not self.broken:
            if server_side.mode == UNTIL_CLOSE:
                self._emit(server_side.msg, server_side.body)
            else:
                self.analyzer.error("truncated_response")
                server_side.msg["truncated"] = True
                self._emit(server_side.msg, server_side.body)
            server_side.msg = None
        for request in self.pending:
            request["server"] = endpoint(self.flow, 3 - self.client)
            request["unanswered"] = True
            self.analyzer.records.append(request)
        self.pending.clear()


class HttpAnalyzer(FlowAnalyzer):
    """Analyzer factory for HTTP flows (TCP only)."""

    name = "http"

    def stream(self, flow: FlowId, time: float) -> HttpFlow:
        """Start parsing a new TCP flow."""
        return HttpFlow(self, flow, time)
