"""Small socket clients for what the Debian tools no longer send: pipelined HTTP, SMTP BDAT, smtplib sessions.

Theory of operation. curl removed HTTP/1.1 pipelining (7.65) and swaks has no BDAT, so these cases
are made by a few lines of Python talking to the real servers (nginx, postfix) over real sockets in
the client namespace. Each client prints one JSON line with what the server answered, so the
scenario's manifest records the server's own replies next to the capture.

Usage: python -m tests.realnet.clients pipeline|bdat|smtplib HOST
"""

from __future__ import annotations

import json
import smtplib
import socket
import sys
from email.message import EmailMessage


def _recv_all(s: socket.socket) -> bytes:
    out = bytearray()
    while True:
        d = s.recv(65536)
        if not d:
            return bytes(out)
        out += d


def pipeline(host: str) -> dict:
    """Three GETs in one write (pipelined), the last with Connection: close; plus CRLF between two."""
    reqs = (
        b"GET /small.txt HTTP/1.1\r\nHost: www.test.example\r\nUser-Agent: realnet-pipeline\r\n\r\n"
        b"GET /index.html HTTP/1.1\r\nHost: www.test.example\r\n\r\n"
        b"\r\n"  # a stray CRLF between pipelined requests (RFC 9112 2.2: servers ignore it)
        b"GET /missing HTTP/1.1\r\nHost: www.test.example\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((host, 80), timeout=10) as s:
        s.sendall(reqs)
        resp = _recv_all(s)
    codes = [int(line.split()[1]) for line in resp.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    return {"status_codes": codes}


def _smtp_cmd(f, s: socket.socket, line: bytes) -> str:
    s.sendall(line)
    return _smtp_reply(f)


def _smtp_reply(f) -> str:
    lines = []
    while True:
        ln = f.readline().decode(errors="replace").rstrip("\r\n")
        lines.append(ln)
        if len(ln) < 4 or ln[3] != "-":
            return "\n".join(lines)


def bdat(host: str) -> dict:
    """EHLO, MAIL, RCPT, BDAT in three chunks (the last with LAST), then a second BDAT message, QUIT."""
    replies = []
    with socket.create_connection((host, 25), timeout=10) as s:
        f = s.makefile("rb")
        replies.append(_smtp_reply(f))
        replies.append(_smtp_cmd(f, s, b"EHLO client.test.example\r\n"))
        for rcpt, chunks in (("alice", 3), ("bob", 1)):
            replies.append(_smtp_cmd(f, s, b"MAIL FROM:<bdat-sender@client.example>\r\n"))
            replies.append(_smtp_cmd(f, s, f"RCPT TO:<{rcpt}@test.example>\r\n".encode()))
            body = (
                f"From: bdat-sender@client.example\r\nTo: {rcpt}@test.example\r\n"
                f"Subject: chunked to {rcpt}\r\n\r\n" + "".join(f"body line {i}\r\n" for i in range(200))
            ).encode()
            step = -(-len(body) // chunks)
            for i in range(chunks):
                part = body[i * step : (i + 1) * step]
                last = b" LAST" if i == chunks - 1 else b""
                replies.append(_smtp_cmd(f, s, b"BDAT %d%s\r\n" % (len(part), last) + part))
        replies.append(_smtp_cmd(f, s, b"QUIT\r\n"))
    return {"replies": [r.split("\n")[-1][:3] for r in replies], "ehlo": replies[1]}


def smtplib_session(host: str) -> dict:
    """Python smtplib (lowercase `ehlo`): three transactions on one connection with a RSET, a mixed RCPT."""
    out: dict = {}
    with smtplib.SMTP(host, 25, local_hostname="client.test.example", timeout=10) as c:
        out["ehlo"] = c.ehlo()[0]
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "multi@client.example", "alice@test.example", "first"
        msg.set_content("first message\n")
        out["first"] = c.send_message(msg)
        msg.replace_header("Subject", "second")
        # one accepted recipient, one rejected (unknown user): smtplib reports the refused one
        out["second_refused"] = {
            k: v[0]
            for k, v in c.sendmail(
                "multi@client.example", ["bob@test.example", "nobody@test.example"], msg.as_bytes()
            ).items()
        }
        out["rset"] = c.rset()[0]
        c.mail("multi@client.example")
        out["third_rcpt"] = c.rcpt("carol@test.example")[0]
        out["third_data"] = c.data(b"Subject: third\r\n\r\nthird message\r\n")[0]
    return out


def main(argv: list[str]) -> int:
    """Run one client, print its JSON result."""
    kind, host = argv[0], argv[1]
    fn = {"pipeline": pipeline, "bdat": bdat, "smtplib": smtplib_session}[kind]
    print(json.dumps(fn(host)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
