"""Sans-IO SIP message parsing (RFC 3261): start line, headers, and message framing for streams.

Theory of operation: `parse_head` reads one message head (start line and headers, up to the blank
line) into a `SipMessage`: compact header names (`v:`, `f:`, `t:`, `i:`, `m:`, `c:`, `l:` ...) are
expanded to their long names, folded lines joined, and every header's values kept in order (Via can
repeat and carry several comma-separated values). Lines before the start line that are empty (the
CRLF and CRLF CRLF keep-alives of RFC 5626, and RFC 3261 §7.5's "ignore CRLFs before the start
line") are skipped; other junk lines before a start line are skipped and reported.

`SipStream` frames a byte stream (SIP over TCP) into messages: the head ends at the first blank line,
the body is `Content-Length` bytes (RFC 3261 §18.3: mandatory on streams; missing means 0 and is
reported). Body bytes are counted, never buffered past what has arrived: a large body costs no memory.
A head larger than `MAX_HEAD` is a give-up for that direction. A datagram (UDP) is one message whose
body is the rest of the datagram (Content-Length, when present, is checked against it).
"""

from __future__ import annotations

import re

MAX_HEAD = 65536
MAX_JUNK = 65536  # bytes of non-SIP lines skipped before a start line before the direction gives up

# RFC 3261 §7.3.3 and the IANA registry's compact forms
COMPACT = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "n": "identity-info",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}
_START = re.compile(
    rb"^(?:([A-Za-z][A-Za-z0-9.!%*_+`'~-]*) (\S+) SIP/2\.0|SIP/2\.0 (\d{3})(?: ([^\r\n]*))?)\r?$"
)


class SipError(ValueError):
    """A message that cannot be used; `reason` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SipMessage:
    """One parsed SIP message head (and its body's length)."""

    __slots__ = ("body_len", "code", "headers", "junk", "method", "reason", "uri")

    def __init__(self) -> None:
        self.method: str | None = None
        self.uri = ""
        self.code = 0
        self.reason = ""
        self.headers: dict[str, list[str]] = {}
        self.body_len = 0
        self.junk = 0  # bytes of non-empty junk lines skipped before the start line

    def first(self, name: str) -> str | None:
        """The first value of a header (long lower-case name), or None."""
        values = self.headers.get(name)
        return values[0] if values else None

    def content_length(self) -> int | None:
        """Content-Length as an int; None when absent; SipError when it is not a number."""
        value = self.first("content-length")
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()):
            raise SipError("bad_content_length")
        return int(value)


def skip_to_start(buf: bytes | bytearray, pos: int = 0) -> tuple[int, int, bool]:
    """Skip empty lines and junk lines before a start line.

    Returns (position of the start line or of an incomplete last line, junk bytes skipped,
    whether a start line was found).
    """
    junk = 0
    n = len(buf)
    while pos < n:
        if buf[pos] in (13, 10):  # CR or LF of an empty line (keep-alives)
            pos += 1
            continue
        eol = buf.find(b"\n", pos)
        if eol < 0:
            return pos, junk, False
        if _START.match(bytes(buf[pos:eol])):
            return pos, junk, True
        junk += eol + 1 - pos
        pos = eol + 1
    return pos, junk, False


def parse_head(head: bytes) -> SipMessage:
    """Parse a message head (start line + header lines, without the blank line)."""
    lines = head.split(b"\n")
    m = _START.match(lines[0])
    if m is None:
        raise SipError("bad_start_line")
    msg = SipMessage()
    if m.group(1) is not None:
        msg.method = m.group(1).decode("ascii")
        msg.uri = m.group(2).decode("utf-8", "replace")
    else:
        msg.code = int(m.group(3))
        msg.reason = (m.group(4) or b"").decode("utf-8", "replace")
    headers = msg.headers
    last: list[str] | None = None
    for raw in lines[1:]:
        line = raw.rstrip(b"\r").decode("utf-8", "replace")
        if not line:
            continue
        if line[0] in " \t":  # folded continuation (LWS)
            if last is None:
                raise SipError("bad_header_line")
            last[-1] = f"{last[-1]} {line.strip()}"
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise SipError("bad_header_line")
        name = name.strip().lower()
        name = COMPACT.get(name, name)
        last = headers.setdefault(name, [])
        last.append(value.strip())
    if "call-id" not in headers or "cseq" not in headers:
        raise SipError("missing_call_id_or_cseq")
    seq, _, method = headers["cseq"][0].partition(" ")
    if not (seq.isascii() and seq.isdigit()) or not method.strip():
        raise SipError("bad_cseq")
    return msg


def _head_end(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(end of the head, start of the body) of the head starting at pos, or (-1, -1)."""
    crlf = buf.find(b"\r\n\r\n", pos)
    lf = buf.find(b"\n\n", pos)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 4
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def parse_datagram(data: bytes) -> SipMessage:
    """Parse one SIP-over-UDP datagram; SipError if it holds no usable message."""
    pos, junk, found = skip_to_start(data)
    if not found:
        if pos >= len(data) and not junk:
            raise SipError("keepalive")  # CRLFs alone (RFC 5626)
        if pos >= len(data) or _START.match(data[pos:].rstrip(b"\r\n")) is None:
            raise SipError("bad_start_line")
    end, body = _head_end(data, pos)
    if end < 0:
        end = body = len(data)
    msg = parse_head(data[pos:end])
    msg.junk = junk
    length = msg.content_length()
    available = len(data) - body
    if length is not None and length > available:
        raise SipError("truncated_body")
    msg.body_len = available if length is None else length
    return msg


class SipStream:
    """Frames one direction of a SIP-over-TCP stream into messages (sans-IO)."""

    __slots__ = ("buf", "failed", "pending", "to_skip")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pending: SipMessage | None = None  # a head whose body has not all arrived
        self.to_skip = 0  # body bytes still to come for `pending`
        self.failed = False

    def feed(self, data: bytes) -> tuple[list[SipMessage], list[str]]:
        """Consume bytes; return the messages they completed and the problems found (weird names)."""
        out: list[SipMessage] = []
        problems: list[str] = []
        if self.failed:
            return out, problems
        view = memoryview(data)
        if self.pending is not None:
            take = min(self.to_skip, len(view))
            self.to_skip -= take
            view = view[take:]
            if self.to_skip:
                return out, problems
            out.append(self.pending)
            self.pending = None
        self.buf += view
        buf = self.buf
        pos = 0
        while True:
            start, junk, found = skip_to_start(buf, pos)
            if junk:
                problems.append("junk_before_start_line")
            pos = start
            if not found:
                if len(buf) - pos > MAX_JUNK:
                    problems.append("junk_too_long")
                    self._fail()
                    return out, problems
                break
            end, body = _head_end(buf, pos)
            if end < 0:
                if len(buf) - pos > MAX_HEAD:
                    problems.append("head_too_long")
                    self._fail()
                    return out, problems
                break
            try:
                msg = parse_head(bytes(buf[pos:end]))
                length = msg.content_length()
            except SipError as exc:
                problems.append(exc.reason)
                pos = body  # the block is lost; look for the next start line after it
                continue
            if length is None:
                problems.append("missing_content_length")
                length = 0
            msg.body_len = length
            msg.junk = junk
            available = len(buf) - body
            if available >= length:
                out.append(msg)
                pos = body + length
                continue
            self.pending, self.to_skip = msg, length - available
            pos = len(buf)
            break
        del buf[:pos]
        return out, problems

    def _fail(self) -> None:
        self.failed = True
        self.buf = bytearray()

    def leftover(self) -> int:
        """Bytes of an unfinished message (head or body) when the stream ends."""
        return len(self.buf.strip(b"\r\n")) + self.to_skip + (1 if self.pending is not None else 0)
