"""SMTP analyzer: envelope (HELO/EHLO, MAIL FROM, RCPT TO), message headers, size, STARTTLS.

The server speaks first (220 banner), so the endpoint whose first line is a reply code is the server.
One record per message (at the end of DATA); a flow that carried no message gives one session record.
"""

from __future__ import annotations

from cell.analyzers.endpoints import endpoint
from cell.sdk.events import FlowId
from cell.sdk.flows import FlowAnalyzer

MAX_LINE = 4096  # RFC 5321 allows 1000; anything past this is an attack or not SMTP
MAX_HEADER_BYTES = 64 * 1024
HEADERS_KEPT = ("from", "to", "cc", "subject", "message-id", "date")

COMMANDS, DATA, ENCRYPTED, BROKEN = range(4)


def _addr(arg: str) -> str:
    """The address inside MAIL FROM:<a@b> SIZE=.. / RCPT TO:<c@d>."""
    start = arg.find("<")
    if start >= 0:
        end = arg.find(">", start)
        return arg[start + 1 : end if end >= 0 else None]
    return arg.split(" ", 1)[0]


def parse_headers(block: bytes) -> dict[str, str]:
    """Unfold and parse RFC 5322 header lines, keeping the ones we report."""
    out: dict[str, str] = {}
    last = ""
    for line in block.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t"):
            if last in out:
                out[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        last = name.strip().lower()
        if sep and last in HEADERS_KEPT and last not in out:
            out[last] = value.strip()
    return out


class SmtpFlow:
    """One SMTP session."""

    __slots__ = (
        "analyzer",
        "bufs",
        "client",
        "flow",
        "head",
        "helo",
        "in_headers",
        "mail_from",
        "messages",
        "mode",
        "rcpt_to",
        "size",
        "starttls",
        "tail",
        "time",
    )

    def __init__(self, analyzer: SmtpAnalyzer, flow: FlowId, time: float) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.time = time
        self.client = 0
        self.bufs = {1: b"", 2: b""}
        self.mode = COMMANDS
        self.helo: str | None = None
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self.starttls = False
        self.messages = 0
        self.head = b""
        self.in_headers = True
        self.tail = b""
        self.size = 0

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        if self.mode == BROKEN:
            return
        if not self.client:
            # A reply code first means the sender is the server (the normal case: the 220 banner).
            self.client = 3 - sender if data[:3].isdigit() else sender
        if sender != self.client:
            return  # replies carry nothing we report; STARTTLS is decided by the client's command
        self.time = time
        if self.mode == ENCRYPTED:
            return
        buf = self.bufs[sender] + data
        pos = 0
        while pos < len(buf):
            if self.mode == DATA:
                pos = self._message_bytes(buf, pos)
                continue
            if self.mode != COMMANDS:
                return
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_LINE:
                    self._fail("line_too_long")
                    return
                break
            if end - pos > MAX_LINE:
                self._fail("line_too_long")
                return
            self._command(buf[pos:end].decode("utf-8", "replace"))
            pos = end + 2
        self.bufs[sender] = buf[pos:] if self.mode in (COMMANDS, DATA) else b""

    def _command(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        if verb in ("HELO", "EHLO"):
            self.helo = arg.strip()
        elif verb == "MAIL":
            self.mail_from = _addr(arg.partition(":")[2].strip())
            self.rcpt_to = []
        elif verb == "RCPT":
            self.rcpt_to.append(_addr(arg.partition(":")[2].strip()))
        elif verb == "DATA":
            self.mode = DATA
            self.head = b""
            self.in_headers = True
            self.tail = b"\r\n"  # the message starts at a line start: ".\r\n" may come first
            self.size = 0
        elif verb == "STARTTLS":
            self.starttls = True
            self.mode = ENCRYPTED
        elif verb == "RSET":
            self.mail_from = None
            self.rcpt_to = []

    def _message_bytes(self, buf: bytes, pos: int) -> int:
        """Consume message content; return the new position (end of buffer, or after the final dot)."""
        chunk = buf[pos:]
        window = self.tail + chunk
        end = window.find(b"\r\n.\r\n")
        if end < 0:
            self._content(chunk)
            self.tail = window[-4:]
            return len(buf)
        # bytes of `chunk` that belong to the message: up to and including the CRLF before the dot
        used = end + 2 - len(self.tail)
        if used > 0:
            self._content(chunk[:used])
        self._message_done()
        return pos + end + 5 - len(self.tail)

    def _content(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.in_headers:
            self.head += chunk
            cut = self.head.find(b"\r\n\r\n")
            if cut >= 0:
                self.head = self.head[: cut + 2]
                self.in_headers = False
            elif len(self.head) > MAX_HEADER_BYTES:
                self.analyzer.error("header_too_long")
                self.head = self.head[:MAX_HEADER_BYTES]
                self.in_headers = False

    def _message_done(self) -> None:
        self.mode = COMMANDS
        self.messages += 1
        rec = self._session()
        rec["type"] = "message"
        rec["headers"] = parse_headers(self.head)
        rec["size"] = self.size
        self.analyzer.records.append(rec)
        self.head = b""
        self.mail_from = None
        self.rcpt_to = []

    def _session(self) -> dict:
        client = self.client or 1
        return {
            "time": self.time,
            "client": endpoint(self.flow, client),
            "server": endpoint(self.flow, 3 - client),
            "helo": self.helo,
            "mail_from": self.mail_from,
            "rcpt_to": self.rcpt_to,
            "starttls": self.starttls,
        }

    def _fail(self, reason: str) -> None:
        self.mode = BROKEN
        self.analyzer.error(reason)
        rec = self._session()
        rec["error"] = reason
        self.analyzer.records.append(rec)

    def end(self, reason: str, time: float) -> None:
        """Report a session without messages, and count a message cut off by the end of the flow."""
        if self.mode == BROKEN:
            return
        if self.mode == DATA:
            self._fail("truncated_message")
            return
        if not self.messages:
            rec = self._session()
            rec["type"] = "session"
            self.analyzer.records.append(rec)


class SmtpAnalyzer(FlowAnalyzer):
    """Analyzer factory for SMTP flows."""

    name = "smtp"

    def stream(self, flow: FlowId, time: float) -> SmtpFlow:
        """Start parsing a new TCP flow."""
        return SmtpFlow(self, flow, time)
