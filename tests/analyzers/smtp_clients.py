"""SMTP clients for the real-traffic bed that swaks cannot play: BDAT, several transactions with RSET,
lowercase commands, a refused STARTTLS, an end of data split across TCP segments, a 421 close.

Run inside the client network namespace: `python -m tests.analyzers.smtp_clients SCENARIO SERVER SRC DIR`.
Each scenario writes the messages it sent (as sent, before dot-stuffing) to DIR/SCENARIO-N.eml so
tests can parse them with Python's `email` package, and talks to a real postfix over a real socket.
"""

from __future__ import annotations

import smtplib
import socket
import sys
import time
from email.message import EmailMessage
from pathlib import Path

DOMAIN = "test.example"


def _message(subject: str, body: str, attach: bytes | None = None, name: str = "data.bin") -> bytes:
    m = EmailMessage()
    m["From"] = "Alice <alice@client.example>"
    m["To"] = f"bob@{DOMAIN}"
    m["Subject"] = subject
    m["Message-ID"] = f"<{subject.replace(' ', '-')}@client.example>"
    m["Date"] = "Wed, 02 Dec 2026 01:00:00 +0000"
    m.set_content(body)
    if attach is not None:
        m.add_attachment(attach, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class Raw:
    """A line-level SMTP client on a plain socket (TCP_NODELAY: each send is its own segment)."""

    def __init__(self, server: str, port: int, src: str) -> None:
        self.sock = socket.create_connection((server, port), timeout=20, source_address=(src, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.reply()

    def reply(self) -> tuple[int, bytes]:
        """Read one complete (possibly multiline) reply."""
        while True:
            while b"\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    return 0, b""
                self.buf += data
            line, _, self.buf = self.buf.partition(b"\n")
            if line[3:4] != b"-":
                return int(line[:3]), line

    def send(self, data: bytes, pause: float = 0.0) -> None:
        """Send bytes (one segment with TCP_NODELAY), then pause so the next send is a new segment."""
        self.sock.sendall(data)
        if pause:
            time.sleep(pause)

    def cmd(self, line: bytes) -> tuple[int, bytes]:
        """Send one command line and read its reply."""
        self.send(line + b"\r\n")
        return self.reply()


def bdat(server: str, src: str, out: Path) -> None:
    """Two BDAT transactions: one in two chunks (the first holds a line with a lone dot), one pipelined."""
    m1 = _message(
        "bdat one", "line one\n.\nnot the end\n..two dots\n", b"\x00\x01.\r\n.\r\n" * 300, "chunk.bin"
    )
    m2 = _message("bdat two", "second message via pipelined BDAT LAST\n")
    (out / "bdat-1.eml").write_bytes(m1)
    (out / "bdat-2.eml").write_bytes(m2)
    c = Raw(server, 25, src)
    c.cmd(b"EHLO bdat.client.example")
    c.cmd(b"MAIL FROM:<alice@client.example>")
    c.cmd(f"RCPT TO:<bob@{DOMAIN}>".encode())
    half = len(m1) // 2
    c.send(b"BDAT %d\r\n" % half + m1[:half])
    c.reply()
    c.send(b"BDAT %d LAST\r\n" % (len(m1) - half) + m1[half:])
    c.reply()
    # RFC 3030 + 2920: the whole second transaction in one write, replies read afterwards
    c.send(
        b"MAIL FROM:<alice@client.example>\r\n"
        + f"RCPT TO:<carol@{DOMAIN}>\r\n".encode()
        + f"RCPT TO:<nobody@{DOMAIN}>\r\n".encode()
        + b"BDAT %d LAST\r\n" % len(m2)
        + m2
    )
    for _ in range(4):
        c.reply()
    c.cmd(b"QUIT")


def multi(server: str, src: str, out: Path) -> None:
    """smtplib (lowercase verbs): two messages, an RSET'd transaction, a message with dot lines."""
    msgs = [
        _message("multi one", "first\n"),
        _message("multi three", ".leading dot\n..two\n.\nend\n"),
    ]
    for i, m in enumerate(msgs, 1):
        (out / f"multi-{i}.eml").write_bytes(m)
    s = smtplib.SMTP(server, 25, local_hostname="multi.client.example", source_address=(src, 0))
    s.ehlo()
    s.sendmail("alice@client.example", [f"bob@{DOMAIN}"], msgs[0])
    s.mail("alice@client.example")
    s.rcpt(f"carol@{DOMAIN}")
    s.rset()
    s.noop()
    s.sendmail("alice@client.example", [f"bob@{DOMAIN}", f"carol@{DOMAIN}"], msgs[1])
    s.quit()


def starttls_refused(server: str, src: str, out: Path) -> None:
    """STARTTLS on a port without TLS (postfix: 502), then a message in clear."""
    m = _message("after refused starttls", "still in clear\n")
    (out / "tls502-1.eml").write_bytes(m)
    s = smtplib.SMTP(server, 2525, local_hostname="plain.client.example", source_address=(src, 0))
    s.ehlo()
    s.docmd("STARTTLS")
    s.sendmail("alice@client.example", [f"bob@{DOMAIN}"], m)
    s.quit()


def split(server: str, src: str, out: Path) -> None:
    """Lowercase commands, addresses without brackets, and the end of data split over TCP segments."""
    m = _message("split end", "a\n.dot line\nb\n")
    (out / "split-1.eml").write_bytes(m)
    stuffed = m.replace(b"\r\n.", b"\r\n..")
    c = Raw(server, 25, src)
    c.cmd(b"ehlo split.client.example")
    c.cmd(b"mail from:alice@client.example size=300")
    c.cmd(f"rcpt to: <bob@{DOMAIN}>".encode())
    c.cmd(b"data")
    cut = stuffed.index(b"\r\n..dot") + 2
    c.send(stuffed[:cut], 0.05)  # the dot-stuffed line starts a new segment
    c.send(stuffed[cut:-2], 0.05)
    c.send(b"\r\n", 0.05)  # the CRLF before the final dot
    c.send(b".", 0.05)
    c.send(b"\r\n")
    c.reply()
    c.cmd(b"quit")


def closed(server: str, src: str, out: Path) -> None:
    """Pipelined errors until postfix's hard error limit answers 421 and closes; a RCPT left unanswered."""
    c = Raw(server, 2525, src)
    c.cmd(b"EHLO closed.client.example")
    c.cmd(b"MAIL FROM:<alice@client.example>")
    c.cmd(f"RCPT TO:<bob@{DOMAIN}>".encode())
    c.send(b"XBOGUS1\r\nXBOGUS2\r\nXBOGUS3\r\nXBOGUS4\r\n" + f"RCPT TO:<carol@{DOMAIN}>\r\n".encode())
    while c.reply()[0] not in (0, 421):
        pass
    time.sleep(0.1)


SCENARIOS = {"bdat": bdat, "multi": multi, "tls502": starttls_refused, "split": split, "closed": closed}

if __name__ == "__main__":
    name, server, src, outdir = sys.argv[1:5]
    SCENARIOS[name](server, src, Path(outdir))
