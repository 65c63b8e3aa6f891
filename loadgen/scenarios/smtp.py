"""`smtp`: ESMTP sessions on port 25: banner, EHLO (STARTTLS advertised, not used), MAIL FROM,
several RCPT TO, DATA with From/To/Subject/Message-ID/Date headers and a body, QUIT.
`--count` = SMTP sessions (one message each)."""

from __future__ import annotations

import random

from celltap.loadgen.link import Link, ephemeral_port, make_link
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation

NET = 4
DOMAINS = ("example.com", "example.net", "example.org")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
SUBJECTS = (
    "Quarterly report",
    "Lunch on Friday?",
    "Re: build failures",
    "Invoice 2023-11",
    "Meeting notes",
    "celltap capture results",
)


def message(rng: random.Random, sender: str, rcpts: list[str]) -> bytes:
    """An RFC 5322 message (CRLF lines, dot-stuffed, ending with the DATA terminator)."""
    mid = f"<{rng.getrandbits(64):016x}.{rng.getrandbits(20)}@{sender.split('@')[1]}>"
    lines = [
        f"From: {sender.split('@')[0].title()} <{sender}>",
        f"To: {', '.join(rcpts)}",
        f"Subject: {rng.choice(SUBJECTS)}",
        f"Message-ID: {mid}",
        "Date: Tue, 14 Nov 2023 22:13:20 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
    ]
    words = ("the", "capture", "shows", "flows", "per", "cell", "and", "analysis", "nodes", "agree", ".")
    for _ in range(rng.randint(3, 40)):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        lines.append("." + line if line.startswith(".") else line)  # dot-stuffing
    return ("\r\n".join(lines) + "\r\n.\r\n").encode()


def conversation(rng: random.Random, link: Link) -> Frames:
    """One SMTP session on `link` delivering one message to 1-4 recipients."""
    conv = TcpConversation(link, ephemeral_port(rng), 25, rng)
    conv.handshake()
    mx = f"mail.{rng.choice(DOMAINS)}"
    client = f"client{rng.randint(1, 99)}.{rng.choice(DOMAINS)}"
    sender = f"{rng.choice(USERS)}@{rng.choice(DOMAINS)}"
    rcpts = [f"{u}@{rng.choice(DOMAINS)}" for u in rng.sample(USERS, rng.randint(1, 4))]

    def say(from_client: bool, text: str | bytes) -> None:
        conv.send(from_client, text.encode() if isinstance(text, str) else text, peer_ack=False)

    say(False, f"220 {mx} ESMTP Postfix (Debian/GNU)\r\n")
    say(True, f"EHLO {client}\r\n")
    say(
        False,
        f"250-{mx}\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n"
        "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250 SMTPUTF8\r\n",
    )
    say(True, f"MAIL FROM:<{sender}> SIZE={rng.randint(500, 9000)}\r\n")
    say(False, "250 2.1.0 Ok\r\n")
    for r in rcpts:
        say(True, f"RCPT TO:<{r}>\r\n")
        say(False, "250 2.1.5 Ok\r\n")
    say(True, "DATA\r\n")
    say(False, "354 End data with <CR><LF>.<CR><LF>\r\n")
    conv.send(True, message(rng, sender, rcpts))
    say(False, f"250 2.0.0 Ok: queued as {rng.getrandbits(40):010X}\r\n")
    say(True, "QUIT\r\n")
    say(False, "221 2.0.0 Bye\r\n")
    conv.fin(from_client=False)
    return conv.frames


@register_flows(
    "smtp",
    "ESMTP sessions: EHLO (STARTTLS offered), MAIL/RCPT/DATA with headers, QUIT",
    "SMTP sessions (one message each)",
    30,
)
def smtp_flow(rng: random.Random, i: int) -> Frames:
    """Session number i of the smtp scenario."""
    return conversation(rng, make_link(rng, NET, i))
