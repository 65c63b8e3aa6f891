"""SMTP server replies from the server's byte stream, one complete (possibly multiline) reply at a time.

Theory of operation: the server's bytes are appended to a buffer that never holds more than one
incomplete line (at most `MAX_REPLY_LINE` bytes; a longer line is skipped up to its LF and reported).
`next_reply()` consumes whole lines: `250-...` lines continue a reply, the first `250 ...` (or bare
`250`) line ends it (RFC 5321 4.2.1). The caller takes one reply at a time, so it can stop in the
middle of a chunk (after `220` to STARTTLS the rest of the server's bytes are TLS, taken with
`take_rest()`). Lines may end in CRLF or a bare LF. Only the code, the last line's text and the line
count are kept: memory is bounded whatever the server sends.
"""

from __future__ import annotations

from typing import NamedTuple

MAX_REPLY_LINE = 4096  # RFC 5321 4.5.3.1.5: 512 octets; anything past this is not a reply line


class Reply(NamedTuple):
    """One complete reply: its code, the text of its last line, and how many lines it had."""

    code: int
    text: str
    lines: int

    def line(self) -> str:
        """The reply as Zeek's last_reply shows it: code, space, text of the last line."""
        return f"{self.code} {self.text}" if self.text else str(self.code)


class ReplyReader:
    """Splits the server's stream into replies; malformed lines are named in `weirds`."""

    __slots__ = ("buf", "lines", "skipping", "weirds")

    def __init__(self) -> None:
        self.buf = b""
        self.skipping = False  # inside an over-long line: drop bytes up to its LF
        self.lines = 0  # lines of the reply in progress
        self.weirds: list[str] = []

    def push(self, data: bytes) -> None:
        """Append server bytes (to be consumed by `next_reply`)."""
        self.buf = self.buf + data if self.buf else data

    def take_rest(self) -> bytes:
        """Everything not yet consumed (the caller switches the stream to another protocol)."""
        rest, self.buf = self.buf, b""
        return rest

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None when the buffer holds no complete reply line."""
        buf = self.buf
        pos = 0
        try:
            while True:
                end = buf.find(b"\n", pos)
                if end < 0:
                    if len(buf) - pos > MAX_REPLY_LINE:
                        if not self.skipping:
                            self.weirds.append("reply_line_too_long")
                        self.skipping = True
                        pos = len(buf)
                    return None
                line = buf[pos:end]
                pos = end + 1
                if self.skipping:
                    self.skipping = False
                    continue
                if len(line) > MAX_REPLY_LINE:
                    self.weirds.append("reply_line_too_long")
                    continue
                reply = self._line(line)
                if reply is not None:
                    return reply
        finally:
            self.buf = buf[pos:]

    def _line(self, line: bytes) -> Reply | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        code = line[:3]
        sep = line[3:4]
        if len(code) != 3 or not code.isdigit() or sep not in (b"", b" ", b"-"):
            self.weirds.append("bad_reply_line")
            return None
        self.lines += 1
        if sep == b"-":
            return None
        lines, self.lines = self.lines, 0
        return Reply(int(code), line[4:].decode("utf-8", "replace").strip(), lines)
