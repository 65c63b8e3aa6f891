"""Small socket clients for what the Debian tools no longer send: pipelined HTTP, SMTP BDAT, smtplib sessions.

Theory of operation. curl removed HTTP/1.1 pipelining (7.65) and swaks has no BDAT, so these cases
are made by a few lines of Python talking to the real servers (nginx, postfix) over real sockets in
the client namespace. Each client prints one JSON line with what the server answered, so the
scenario's manifest records the server's own replies next to the capture.

Usage: python -m tests.realnet.clients pipeline|bdat|smtplib|http_oddities|dns_tcp_pipeline HOST
       python -m tests.realnet.clients midstream HOST FLAGFILE
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


def _exchange(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(data)
        return _recv_all(s)


def http_oddities(host: str) -> dict:
    """Requests as real clients send them but curl does not: one connection each, nginx answers.

    bare LF line endings; an HTTP/0.9 request (nginx answers with the body only); leading CRLFs before
    the first request; an obs-folded header (nginx rejects it: 400); HEAD then GET on one connection.
    """
    cases = {
        "bare_lf": b"GET /small.txt HTTP/1.1\nHost: www.test.example\nConnection: close\n\n",
        "http09": b"GET /small.txt\r\n",
        "leading_crlf": b"\r\n\r\nGET /index.html HTTP/1.1\r\nHost: www.test.example\r\n"
        b"Connection: close\r\n\r\n",
        "obs_fold": b"GET /small.txt HTTP/1.1\r\nHost: www.test.example\r\nX-Folded: a\r\n  b\r\n"
        b"Connection: close\r\n\r\n",
        "head_then_get": b"HEAD /index.html HTTP/1.1\r\nHost: www.test.example\r\n\r\n"
        b"GET /small.txt HTTP/1.1\r\nHost: www.test.example\r\nConnection: close\r\n\r\n",
    }
    out: dict = {}
    codes = []
    for name, data in cases.items():
        resp = _exchange(host, 80, data)
        lines = [line.decode()[:40] for line in resp.split(b"\r\n") if line.startswith(b"HTTP/")]
        codes += [int(line.split()[1]) for line in lines]
        out[name] = lines or [resp[:20].decode(errors="replace")]
    out["status_codes"] = codes
    return out


def _dns_query(qid: int, name: str, qtype: int) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    msg = (
        qid.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + q
        + qtype.to_bytes(2, "big")
        + b"\x00\x01"
    )
    return len(msg).to_bytes(2, "big") + msg


def dns_tcp_pipeline(host: str) -> dict:
    """DNS over TCP to unbound: three queries in one segment, then one query split across two segments."""
    import time

    with socket.create_connection((host, 53), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(
            _dns_query(0x1001, "www.test.example", 1)
            + _dns_query(0x1002, "www.test.example", 28)
            + _dns_query(0x1003, "test.example", 15)
        )
        split = _dns_query(0x1004, "mail.test.example", 1)
        time.sleep(0.2)
        s.sendall(split[:9])
        time.sleep(0.2)
        s.sendall(split[9:])
        ids, buf = [], b""
        while len(ids) < 4:
            d = s.recv(65536)
            if not d:
                break
            buf += d
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                n = int.from_bytes(buf[:2], "big")
                ids.append(int.from_bytes(buf[2:4], "big"))
                buf = buf[2 + n :]
    return {"answered_ids": sorted(ids)}


def midstream(host: str, flag: str) -> dict:
    """A keep-alive connection whose first request/response happen before the capture starts.

    GET /small.txt, read the response, wait for `flag` to exist (the capture runs then), then two more
    GETs on the same connection (the last with Connection: close).
    """
    import os
    import time

    codes = []
    with socket.create_connection((host, 80), timeout=30) as s:
        s.sendall(b"GET /small.txt HTTP/1.1\r\nHost: www.test.example\r\n\r\n")
        codes.append(_read_response(s))
        print("ready", flush=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.02)
        s.sendall(b"GET /index.html HTTP/1.1\r\nHost: www.test.example\r\n\r\n")
        codes.append(_read_response(s))
        s.sendall(b"GET /text.txt HTTP/1.1\r\nHost: www.test.example\r\nConnection: close\r\n\r\n")
        rest = _recv_all(s)
        codes.append(int(rest.split(b" ", 2)[1]))
    return {"before_capture": codes[:1], "status_codes": codes[1:]}


def _read_response(s: socket.socket) -> int:
    """Read one Content-Length response; return its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    length = next(
        int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split(b" ", 2)[1])


def _sip_msg(first: str, call: str, cseq: str, host: str, port: int, local: tuple[str, int]) -> bytes:
    lh, lp = local
    return (
        f"{first}\r\nVia: SIP/2.0/TCP {lh}:{lp};branch=z9hG4bK-{call}-{cseq.split()[0]}\r\n"
        f"From: <sip:realnet@{lh}>;tag=rn{call}\r\nTo: <sip:service@{host}:{port}>\r\n"
        f"Call-ID: {call}@{lh}\r\nCSeq: {cseq}\r\nContact: <sip:realnet@{lh}:{lp};transport=tcp>\r\n"
        f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def sip_crlf(host: str) -> dict:
    """A SIP call over TCP to sipp's uas with keep-alive CRLFs (RFC 5626 pings) before INVITE and BYE."""
    port = 5060
    codes = []
    with socket.create_connection((host, port), timeout=10) as s:
        local = s.getsockname()[:2]
        f = s.makefile("rb")
        uri = f"sip:service@{host}:{port}"

        def responses(until: int) -> None:
            while True:
                status = f.readline().decode()
                length = 0
                while (line := f.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith((b"content-length:", b"l:")):
                        length = int(line.split(b":")[1])
                f.read(length)
                if not status:
                    return
                codes.append(int(status.split()[1]))
                if codes[-1] >= until:
                    return

        s.sendall(b"\r\n\r\n" + _sip_msg(f"INVITE {uri} SIP/2.0", "crlf1", "1 INVITE", host, port, local))
        responses(200)
        s.sendall(_sip_msg(f"ACK {uri} SIP/2.0", "crlf1", "1 ACK", host, port, local))
        s.sendall(b"\r\n\r\n")
        s.sendall(_sip_msg(f"BYE {uri} SIP/2.0", "crlf1", "2 BYE", host, port, local))
        responses(200)
    return {"sip_codes": codes, "sent": ["INVITE", "ACK", "BYE"]}


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
    if kind == "midstream":
        print(json.dumps(midstream(host, argv[2])))
        return 0
    fn = {
        "pipeline": pipeline,
        "bdat": bdat,
        "smtplib": smtplib_session,
        "http_oddities": http_oddities,
        "dns_tcp_pipeline": dns_tcp_pipeline,
        "sip_crlf": sip_crlf,
    }[kind]
    print(json.dumps(fn(host)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
