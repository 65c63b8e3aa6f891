"""A bounded, streaming scan of one mail message: its header block and its MIME entities' sizes.

Theory of operation: the message (already un-dot-stuffed, or BDAT chunks as sent) is fed in pieces of
any size. The top-level header block is kept (at most `MAX_HEADER` bytes) and parsed with Python's
`email` package once its blank line arrives. For a `multipart/*` message the body is scanned for
the boundary delimiter lines of the enclosing multiparts (a stack, at most `MAX_DEPTH` deep): only a
line that starts with `--` at a line start is examined, found with `bytes.find`, so body bytes cost
no per-line Python work. Each part's header block (at most `MAX_PART_HEADER` bytes) is kept and
parsed with `email`; each leaf entity's body is counted, never kept: its decoded size is measured
as it streams (base64: 6 bits per alphabet character; quoted-printable: `binascii.a2b_qp` line by
line; anything else: the bytes as sent). The line break before a delimiter belongs to the delimiter
(RFC 2046 5.1.1), so it is held back until the next line is known not to be one. At most
`MAX_ENTITIES` entities are recorded; the rest are counted. State per message is bounded by these
constants whatever the peer sends.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import NamedTuple

MAX_HEADER = 64 * 1024  # top-level header block kept for parsing
MAX_PART_HEADER = 16 * 1024  # header block of one MIME part
MAX_DEPTH = 16  # nested multiparts followed
MAX_ENTITIES = 100  # leaf entities recorded per message
MAX_DELIMITER_LINE = 1024  # a boundary is at most 70 characters (RFC 2046); allow padding
MAX_QP_LINE = 64 * 1024  # a quoted-printable line longer than this is counted as sent

_PARSER = BytesHeaderParser(policy=compat32)
_B64_DELETE = bytes(c for c in range(256) if not (chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/")))
HEADERS, PART_HEADERS, BODY, SKIP = range(4)


def parse_header_block(block: bytes) -> Message:
    """Parse a header block (no body) with the stdlib parser, keeping raw values (compat32)."""
    return _PARSER.parsebytes(block)


def text(value: object) -> str:
    """A header value as clean text: undecodable bytes (kept by `email` as surrogates) replaced."""
    s = str(value)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return s


def _header_end(buf: bytes | bytearray, start: int) -> tuple[int, int]:
    """(index where the blank line starts, index after it) of the first empty line, or (-1, -1)."""
    start = max(0, start)
    if buf[:2] == b"\r\n":
        return 0, 2
    if buf[:1] == b"\n":
        return 0, 1
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    cand = [(i, i + 4, i + 2) for i in (crlf,) if i >= 0] + [(i, i + 2, i + 1) for i in (lf,) if i >= 0]
    if not cand:
        return -1, -1
    _, after, head_end = min(cand)
    return head_end, after


class MimeInfo(NamedTuple):
    """What the scanner needs from an entity's headers."""

    mime_type: str
    boundary: str | None
    encoding: str
    filename: str | None
    disposition: str | None


def info_from_message(headers: Message) -> MimeInfo:
    """MimeInfo by Python's `email` package (RFC 2231 parameters, RFC 2047 words, escapes)."""
    boundary = headers.get_param("boundary") if headers.get_content_maintype() == "multipart" else None
    if isinstance(boundary, tuple):  # RFC 2231 form
        boundary = boundary[2]
    try:
        name = headers.get_filename()
    except Exception:  # a malformed RFC 2231 parameter is the peer's problem, not ours
        name = None
    disposition = headers.get_content_disposition()
    return MimeInfo(
        headers.get_content_type(),
        text(boundary).strip() if boundary else None,
        text(headers.get("content-transfer-encoding", "7bit")).strip().lower(),
        text(name) if name else None,
        text(disposition) if disposition else None,
    )


def _params(value: str) -> tuple[str, dict[str, str]]:
    """`type/sub; a=1; b="x y"` -> ("type/sub", {"a": "1", "b": "x y"}) (no escapes: see quick_info)."""
    parts = re.findall(r'(?:[^;"]|"[^"]*")+', value)
    main = parts[0].strip().lower() if parts else ""
    params = {}
    for p in parts[1:]:
        key, sep, val = p.partition("=")
        if sep:
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] == '"':
                val = val[1:-1]
            params.setdefault(key.strip().lower(), val)
    return main, params


_WANTED = {"content-type": 0, "content-disposition": 1, "content-transfer-encoding": 2}


def quick_info(block: bytes) -> MimeInfo | None:
    """MimeInfo of a part's header block without `email` (the common case); None when a value needs
    `email` (RFC 2231 `*` parameters, RFC 2047 words, backslash escapes, non-ASCII)."""
    values: list[str | None] = [None, None, None]
    current = -1
    for line in block.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if current >= 0:
                values[current] = (values[current] or "") + line.rstrip(b"\r").decode("latin-1")
            continue
        name, sep, value = line.partition(b":")
        current = _WANTED.get(name.strip().lower().decode("latin-1"), -1) if sep else -1
        if current >= 0:
            if values[current] is not None:  # email's get() takes the first occurrence
                current = -1
                continue
            values[current] = value.rstrip(b"\r").decode("latin-1")
    for v in values:
        if v is not None and (not v.isascii() or "*" in v or "\\" in v or "=?" in v):
            return None
    ctype, cparams = _params(values[0] or "")
    if ctype.count("/") != 1 or not all(ctype.split("/")):
        ctype = "text/plain"
    disposition, dparams = _params(values[1]) if values[1] is not None else (None, {})
    name = dparams.get("filename") or cparams.get("name")
    boundary = cparams.get("boundary") if ctype.startswith("multipart/") else None
    return MimeInfo(
        ctype,
        boundary.strip() if boundary else None,
        (values[2] or "7bit").strip().lower(),
        name.strip() if name else None,
        disposition or None,
    )


class Entity:
    """One leaf MIME entity: declared type, file name, transfer encoding; decoded size and hashes."""

    __slots__ = (
        "b64_rest",
        "disposition",
        "encoding",
        "filename",
        "hashes",
        "mime_type",
        "qp_line",
        "seen",
        "size",
    )

    def __init__(self, info: MimeInfo) -> None:
        self.mime_type = info.mime_type
        self.encoding = info.encoding
        self.filename = info.filename
        self.disposition = info.disposition
        self.size = 0  # decoded bytes
        self.seen = 0  # bytes as sent (encoded)
        self.qp_line = b""  # an incomplete quoted-printable line
        self.b64_rest = b""  # base64 alphabet characters short of a 4-character group
        # Zeek's files.log hashes (frameworks/files/hash-all-files) of the decoded content
        self.hashes = (
            hashlib.md5(usedforsecurity=False),
            hashlib.sha1(usedforsecurity=False),
            hashlib.sha256(),
        )

    def _decoded(self, data: bytes) -> None:
        if data:
            self.size += len(data)
            for h in self.hashes:
                h.update(data)

    def feed(self, data: bytes) -> None:
        """Decode body bytes by their transfer encoding (streaming); count and hash what they decode to."""
        if not data:
            return
        self.seen += len(data)
        enc = self.encoding
        if enc == "base64":
            chars = self.b64_rest + data.translate(None, _B64_DELETE)
            cut = len(chars) - len(chars) % 4
            if cut:
                self._decoded(binascii.a2b_base64(chars[:cut]))
            self.b64_rest = chars[cut:]
        elif enc == "quoted-printable":
            buf = self.qp_line + data
            cut = buf.rfind(b"\n") + 1
            if cut:
                self._decoded(binascii.a2b_qp(buf[:cut]))
            rest = buf[cut:]
            if len(rest) > MAX_QP_LINE:
                self._decoded(rest)
                rest = b""
            self.qp_line = rest
        else:
            self._decoded(data)

    def finish(self) -> None:
        """The entity's body ended: decode a last unterminated quoted-printable line or base64 group."""
        if self.qp_line:
            self._decoded(binascii.a2b_qp(self.qp_line))
            self.qp_line = b""
        rest, self.b64_rest = self.b64_rest, b""
        if len(rest) in (
            2,
            3,
        ):  # a group cut short: its padding was removed with the other non-alphabet bytes
            self._decoded(binascii.a2b_base64(rest + b"=" * (4 - len(rest))))

    def digests(self) -> dict[str, str]:
        """md5, sha1 and sha256 of the decoded content, as Zeek's files.log names them."""
        return {name: h.hexdigest() for name, h in zip(("md5", "sha1", "sha256"), self.hashes, strict=True)}


class MessageScanner:
    """Feed a message's bytes; afterwards `headers` holds its parsed header block, `entities` its parts."""

    __slots__ = (
        "boundaries",
        "carry",
        "entities",
        "entities_dropped",
        "head",
        "headers",
        "line_start",
        "part",
        "pending_eol",
        "size",
        "state",
        "weirds",
    )

    def __init__(self) -> None:
        self.state = HEADERS
        self.head = bytearray()
        self.headers: Message | None = None
        self.size = 0
        self.boundaries: list[bytes] = []
        self.part: Entity | None = None
        self.entities: list[Entity] = []
        self.entities_dropped = 0
        self.carry = b""
        self.line_start = True
        self.pending_eol = b""
        self.weirds: list[str] = []

    # ---------------------------------------------------------------- feeding

    def feed(self, data: bytes) -> None:
        """Scan the next bytes of the message."""
        if not data:
            return
        self.size += len(data)
        if self.state == HEADERS:
            data = self._header_bytes(data)
            if not data:
                return
        if self.state == SKIP:
            return
        if self.boundaries:
            self._body(data)
        elif self.part is not None:
            self.part.feed(data)

    def _header_bytes(self, data: bytes) -> bytes:
        """Collect a header block; return the bytes after it (b"" while it is incomplete)."""
        head = self.head
        before = len(head)
        head += data
        head_end, after = _header_end(head, before - 3)
        limit = MAX_HEADER if self.state == HEADERS else MAX_PART_HEADER
        if head_end < 0:
            if len(head) > limit:
                self.weirds.append("header_too_long" if self.state == HEADERS else "part_header_too_long")
                cut = head.rfind(b"\n", 0, limit) + 1
                self._headers_done(bytes(head[:cut]))
                self.state = SKIP  # where this entity's body starts is unknown: count bytes only
                self.head = bytearray()
            return b""
        block = bytes(head[:head_end])
        rest = bytes(head[after:])
        self.head = bytearray()
        self._headers_done(block)
        return rest

    def _headers_done(self, block: bytes) -> None:
        if self.state == HEADERS:  # the message's own headers: all of them are wanted (smtp_fields)
            self.headers = parse_header_block(block)
            info = info_from_message(self.headers)
        else:
            info = quick_info(block) or info_from_message(parse_header_block(block))
        self.state = BODY
        self.line_start = True
        boundary = info.boundary
        if boundary:
            if len(self.boundaries) >= MAX_DEPTH:
                self.weirds.append("mime_too_deep")
                self.state = SKIP
                return
            self.boundaries.append(b"--" + boundary.encode("utf-8", "replace"))
            self.part = None  # preamble
            return
        self._new_entity(info)

    def _new_entity(self, info: MimeInfo) -> None:
        if len(self.entities) >= MAX_ENTITIES:
            if not self.entities_dropped:
                self.weirds.append("too_many_mime_entities")
            self.entities_dropped += 1
            self.part = None
            return
        self.part = Entity(info)
        self.entities.append(self.part)

    # ---------------------------------------------------------------- multipart bodies

    def _body(self, data: bytes) -> None:
        buf = self.carry + data if self.carry else data
        self.carry = b""
        i = 0
        n = len(buf)
        while i < n:
            if self.state != BODY:  # a delimiter opened a part: its header block comes first
                rest = self._header_bytes(buf[i:])
                if self.state == SKIP or not rest:
                    return
                buf, i, n = rest, 0, len(rest)
                continue
            if self.line_start:
                if n - i < 2 and buf[i:] in (b"-", b""):
                    self.carry = buf[i:]
                    return
                if buf.startswith(b"--", i):
                    nl = buf.find(b"\n", i)
                    if nl < 0 and n - i <= MAX_DELIMITER_LINE:
                        self.carry = buf[i:]
                        return
                    if nl >= 0 and self._delimiter(buf[i:nl]):
                        i = nl + 1
                        continue
                self._flush_eol()
                self.line_start = False
            j = buf.find(b"\n--", i)
            if j >= 0:
                eol = j - 1 if j > i and buf[j - 1] == 13 else j
                self._content(buf[i:eol])
                self.pending_eol = buf[eol : j + 1]
                i = j + 1
                self.line_start = True
                continue
            k = buf.rfind(b"\n", i)
            tail = buf[k + 1 :] if k >= 0 else b""
            if k >= 0 and tail in (b"", b"-"):
                eol = k - 1 if k > i and buf[k - 1] == 13 else k
                self._content(buf[i:eol])
                self.pending_eol = buf[eol : k + 1]
                self.carry = tail
                self.line_start = True
                return
            if buf.endswith(b"\r"):  # maybe the CR of the line break before a delimiter: decide later
                self._content(buf[i:-1])
                self.carry = b"\r"
            else:
                self._content(buf[i:])
            self.line_start = False
            return

    def _content(self, data: bytes) -> None:
        if data:
            self._flush_eol()
            if self.part is not None:
                self.part.feed(data)

    def _flush_eol(self) -> None:
        if self.pending_eol:
            if self.part is not None:
                self.part.feed(self.pending_eol)
            self.pending_eol = b""

    def _delimiter(self, line: bytes) -> bool:
        """Handle `line` if it is a boundary delimiter of an enclosing multipart; False if it is content."""
        line = line.rstrip(b" \t\r")
        for level in range(len(self.boundaries) - 1, -1, -1):
            b = self.boundaries[level]
            if not line.startswith(b):
                continue
            tail = line[len(b) :]
            if tail not in (b"", b"--"):
                continue
            self.pending_eol = b""  # the line break before a delimiter belongs to the delimiter
            self._end_part()
            if tail == b"--":  # close delimiter: the epilogue of this multipart follows
                del self.boundaries[level:]
                self.part = None
            else:
                del self.boundaries[level + 1 :]
                self.state = PART_HEADERS
                self.head = bytearray()
            self.line_start = True
            return True
        return False

    def _end_part(self) -> None:
        if self.part is not None:
            self.part.finish()
            self.part = None

    def finish(self) -> None:
        """The message ended: close the entity in progress (a truncated header block is parsed as is)."""
        if self.state in (HEADERS, PART_HEADERS) and self.head:
            self._headers_done(bytes(self.head))
            self.head = bytearray()
        carry, self.carry = self.carry, b""
        if carry and not (self.line_start and self.boundaries and self._delimiter(carry)):
            self._flush_eol()
            if self.part is not None:
                self.part.feed(carry)
        self._flush_eol()
        self._end_part()
