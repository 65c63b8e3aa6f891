"""Plaintext before TLS on one connection: find where STARTTLS (or its kin) hands the stream to TLS.

The TLS analyzer sees IMAP, POP3, FTP and XMPP connections through a port rule (celltap has no
analyzers for those protocols, so they cannot hand the TLS part on through the L7 loopback as the
SMTP and HTTP analyzers do). Such a connection starts in plaintext; the switch is a client command
and a positive server reply, after which both directions speak TLS:

    SMTP   STARTTLS             -> 220 ...
    IMAP   <tag> STARTTLS       -> <tag> OK ...          (untagged "* ..." lines are skipped)
    POP3   STLS                 -> +OK ...
    FTP    AUTH TLS | AUTH SSL  -> 234 ...
    XMPP   <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>  -> <proceed .../>  (or <failure/>)

`StartTls` is sans-IO: each direction's plaintext goes in; when the switch happens it returns, per
direction, the bytes after the command / the reply, which are the start of that direction's TLS. A
negative reply ("454", "NO", "-ERR", "<failure") leaves the session in plaintext and scanning goes on.
Multi-line replies ("250-", "220-") are skipped to their last line. Commands are taken only from the
client: the server is the side whose first bytes are a greeting ("220", "* OK", "+OK"), else the other
side (XMPP's client opens the stream), so a server's capability list ("250 STARTTLS", POP3's "STLS")
is never taken for a command. Plaintext is scanned up to
MAX_PLAINTEXT bytes per direction; beyond that the connection is not a STARTTLS one.
"""

from __future__ import annotations

import re

MAX_PLAINTEXT = 64 * 1024
_COMMAND = re.compile(
    rb"^(?:(?![0-9]{3} )[A-Za-z0-9._-]+ )?(?:STARTTLS|STLS|AUTH TLS|AUTH SSL|AUTH TLS-C)[ \t]*\r?$", re.I
)
_POSITIVE = re.compile(rb"^(?:220 |220$|234 |234$|\+OK|[A-Za-z0-9._-]+ OK\b)", re.I)
# the first plaintext of these protocols' servers (XMPP's client speaks first: its stream header)
_GREETING = re.compile(rb"^(?:220[ -]|\* OK|\* PREAUTH|\+OK)")
_XMPP_STARTTLS = re.compile(rb"<starttls\b[^>]*?(?:/>|>\s*</starttls>)")
_XMPP_REPLY = re.compile(rb"<(proceed|failure)\b[^>]*?(?:/>|>.*?</\1>)", re.S)


class StartTls:
    """The plaintext part of one connection, until a STARTTLS-like switch (or giving up)."""

    __slots__ = ("buf", "client", "failed", "pending", "scanned", "server", "xmpp")

    def __init__(self) -> None:
        self.buf = {1: b"", 2: b""}  # unscanned plaintext per direction (an unfinished line)
        self.scanned = {1: 0, 2: 0}
        self.client = 0  # the direction that sent a switch command, awaiting the reply
        self.pending = b""  # what that client sent after its command (its TLS, if the reply is positive)
        self.server = 0  # from the first plaintext: the greeting's sender, else the other side
        self.xmpp = False
        self.failed = False

    def feed(self, sender: int, data: bytes) -> dict[int, bytes] | None:
        """Plaintext from `sender`; on a positive reply, {direction: first TLS bytes} (may be empty)."""
        if self.failed:
            return None
        if self.client == sender:
            self.pending += data
            if len(self.pending) > MAX_PLAINTEXT:  # a reply that never comes: bounded, give up
                self.failed = True
                self.pending = b""
            return None
        self.scanned[sender] += len(data)
        if self.scanned[sender] > MAX_PLAINTEXT:
            self.failed = True
            return None
        buf = self.buf[sender] + data
        if not self.server:
            self.server = sender if _GREETING.match(buf) else 3 - sender
        if self.client:
            return self._reply(sender, buf)
        if sender == self.server:
            self.buf[sender] = b""  # server plaintext before a command: nothing to look for
        else:
            self._command(sender, buf)
        return None

    def _command(self, sender: int, buf: bytes) -> None:
        m = _XMPP_STARTTLS.search(buf)
        if m is not None:
            self.client, self.xmpp = sender, True
            self.pending, self.buf[sender] = buf[m.end() :], b""
            return
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            if _COMMAND.match(buf, pos, nl):
                self.client, self.xmpp = sender, False
                self.pending, self.buf[sender] = buf[nl + 1 :], b""
                return
            pos = nl + 1
        self.buf[sender] = buf[pos:]

    def _reply(self, sender: int, buf: bytes) -> dict[int, bytes] | None:
        if self.xmpp:
            m = _XMPP_REPLY.search(buf)
            if m is None:
                self.buf[sender] = buf
                return None
            if m.group(1) == b"proceed":
                return self._switch(sender, buf[m.end() :])
            return self._refused(sender, buf[m.end() :])
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                self.buf[sender] = buf[pos:]
                return None
            line = buf[pos:nl]
            pos = nl + 1
            if line[:2] == b"* " or (len(line) > 3 and line[:3].isdigit() and line[3:4] == b"-"):
                continue  # untagged IMAP response, or a line of a multi-line reply
            if _POSITIVE.match(line):
                return self._switch(sender, buf[pos:])
            return self._refused(sender, buf[pos:])

    def _switch(self, server: int, server_rest: bytes) -> dict[int, bytes]:
        client = self.client
        out = {server: server_rest, client: self.pending}
        self.client, self.pending = 0, b""
        self.buf = {1: b"", 2: b""}
        return out

    def _refused(self, server: int, rest: bytes) -> None:
        client, pending = self.client, self.pending
        self.client, self.pending = 0, b""
        self.buf[server] = b""
        if rest:
            self.feed(server, rest)
        if pending:
            self.feed(client, pending)
        return None
