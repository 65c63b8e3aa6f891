"""The SMTP analyzer's sans-IO parts on crafted input (labelled crafted: built here, not by a real tool).

These cover what the real-traffic bed cannot make on demand: every possible segmentation of a
session, MIME structures beyond what swaks builds (checked against Python's `email` package), and
peers that never stop sending (memory bounded, counted, reported once).
"""

from __future__ import annotations

import base64
import hashlib
import random
import tracemalloc
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP, compat32

import pytest
from celltap.cell.analyzers.smtp_analyzer import SmtpAnalyzer
from celltap.cell.analyzers.smtp_mime import MessageScanner
from celltap.cell.analyzers.smtp_replies import ReplyReader
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId
from celltap.cell.sdk.session import Session
from celltap.cell.sdk.text_format import encode_text

from tests.analyzers.pcapgen import Conversation
from tests.analyzers.streams import event_stream

FLOW = FlowId("10.1.0.1", "10.1.0.2", 40000, 25, 0, "ipv4", "tcp")


def crafted_mime() -> bytes:
    """A nested MIME message: alternative text/html, QP and base64 attachments, an RFC 2231 name."""
    m = EmailMessage()
    m["From"] = "A <a@example.org>"
    m["To"] = "b@example.net"
    m["Subject"] = "crafted"
    m.set_content("plain\n--not-a-boundary\n.\n")
    m.add_alternative("<p>h\u00e9llo</p>\n", subtype="html")
    m.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="zip", filename="a.zip")
    m.add_attachment(
        "caf\u00e9 = x\n" * 80, subtype="plain", filename="r\u00e9sum\u00e9.txt", cte="quoted-printable"
    )
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("inner body\n")
    m.add_attachment(inner)
    return m.as_bytes(policy=SMTP)


@pytest.mark.parametrize("seed", range(40))
def test_mime_scanner_matches_email_package_under_any_split(seed: int) -> None:
    """crafted: random chunk sizes (1 byte to 5 kB) give the entities and decoded sizes `email` gives."""
    raw = crafted_mime()
    ref = message_from_bytes(raw, policy=compat32)
    expect = [
        (p.get_content_type(), p.get_filename(), len(p.get_payload(decode=True)),
         hashlib.sha256(p.get_payload(decode=True)).hexdigest())
        for p in ref.walk()
        if not p.is_multipart()
    ]  # fmt: skip
    rng = random.Random(seed)
    scanner = MessageScanner()
    i = 0
    while i < len(raw):
        n = rng.choice([1, 2, 3, 5, 64, 700, 5000])
        scanner.feed(raw[i : i + n])
        i += n
    scanner.finish()
    # Python walks into message/rfc822; we keep it as one leaf: compare the leaves before it
    ours = [(e.mime_type, e.filename, e.size, e.digests()["sha256"]) for e in scanner.entities]
    assert ours[:4] == expect[:4]
    assert ours[4][0] == "message/rfc822"
    assert scanner.headers is not None and scanner.headers["subject"] == "crafted"
    assert scanner.size == len(raw)


def session_records(turns: list[tuple[bool, bytes]], segment: int) -> tuple[list[dict], SmtpAnalyzer]:
    analyzer = SmtpAnalyzer()
    s = Session(analyzer)
    conv = Conversation("tcp", ("10.1.0.1", 40000), ("10.1.0.2", 25), turns)
    recs = s.feed(event_stream([conv], segment=segment)) + s.disconnected()
    return recs, analyzer


def crafted_session() -> list[tuple[bool, bytes]]:
    msg = crafted_mime()
    stuffed = msg.replace(b"\r\n.", b"\r\n..")
    return [
        (False, b"220 mx ESMTP\r\n"),
        (True, b"ehlo c.example\r\n"),
        (False, b"250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n"),
        (True, b"AUTH PLAIN\r\n"),
        (False, b"334 \r\n"),
        (True, base64.b64encode(b"\0carol\0pw") + b"\r\n"),
        (False, b"235 ok\r\n"),
        (
            True,
            b"MAIL FROM:<a@example.org> SIZE=9\r\nRCPT TO:<b@example.net>\r\n"
            b"RCPT TO:<x@example.net>\r\nDATA\r\n",
        ),
        (False, b"250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n"),
        (True, stuffed + b".\r\n"),
        (False, b"250 queued\r\n"),
        (True, b"MAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nBDAT 11\r\nhello\r\n.\r\n\r\nBDAT 0 LAST\r\n"),
        (False, b"250 ok\r\n250 ok\r\n250 chunk\r\n250 done\r\n"),
        (True, b"QUIT\r\n"),
        (False, b"221 bye\r\n"),
    ]


def test_records_do_not_depend_on_segmentation() -> None:
    """crafted: the same session cut into 1..13-byte segments gives identical records (dot-stuffing,
    the end-of-data line, BDAT lengths and multiline replies split anywhere)."""
    whole, _ = session_records(crafted_session(), 1 << 20)
    smtp = [r for r in whole if "_log" not in r]
    assert [r.get("msg_accepted") for r in smtp] == [True, True]
    assert smtp[0]["rcptto"] == ["b@example.net"] and smtp[0]["rcptto_rejected"] == ["x@example.net"]
    assert smtp[0]["msg_size"] == len(crafted_mime())
    assert smtp[1]["mailfrom"] == "" and smtp[1]["msg_size"] == 11
    assert smtp[0]["auth_user"] == "carol" and smtp[0]["auth_success"] is True
    for seg in (1, 2, 3, 5, 7, 13):
        recs, _ = session_records(crafted_session(), seg)
        strip = lambda rs: [{k: v for k, v in r.items() if k != "ts"} for r in rs]  # noqa: E731
        assert strip(recs) == strip(whole), seg


def test_reply_reader_multiline_any_split() -> None:
    data = b"250-a\r\n250-b\n250 c\r\n354 go\r\n2x5 bad\r\n221 bye\r\n"
    for cut in range(1, len(data)):
        r = ReplyReader()
        got = []
        for part in (data[:cut], data[cut:]):
            r.push(part)
            while (rep := r.next_reply()) is not None:
                got.append((rep.code, rep.text, rep.lines))
        assert got == [(250, "c", 3), (354, "go", 1), (221, "bye", 1)]
        assert r.weirds == ["bad_reply_line"]


def test_xoauth2_and_login_user_names() -> None:
    """crafted: the user name of XOAUTH2 (initial response) and LOGIN (continuation); never the secret."""
    token = base64.b64encode(b"user=dora@example.org\x01auth=Bearer SECRET\x01\x01")
    recs, _ = session_records(
        [
            (False, b"220 mx\r\n"),
            (True, b"EHLO c\r\n"),
            (False, b"250 ok\r\n"),
            (True, b"AUTH XOAUTH2 " + token + b"\r\n"),
            (False, b"235 ok\r\n"),
            (True, b"QUIT\r\n"),
            (False, b"221 bye\r\n"),
        ],
        1400,
    )
    (rec,) = recs
    assert (rec["auth_mechanism"], rec["auth_user"], rec["auth_success"]) == (
        "XOAUTH2",
        "dora@example.org",
        True,
    )
    assert "SECRET" not in str(rec)


def feed_peak(
    chunks: list[tuple[int, bytes]], repeat: tuple[int, bytes], times: int
) -> tuple[list[dict], int]:
    """Feed a prefix, then `times` copies of one chunk; return records and the traced memory peak."""
    s = Session(SmtpAnalyzer())
    records = s.feed(encode_text(FLOW, CREATED, 1.0))
    for sender, data in chunks:
        records += s.feed(encode_text(FLOW, DATA, 1.0, sender, data))
    tracemalloc.start()
    try:
        ev = encode_text(FLOW, DATA, 1.0, repeat[0], repeat[1])
        for _ in range(times):
            records += s.feed(ev)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    records += s.feed(encode_text(FLOW, DESTROYED, 2.0))
    return records, peak


HELLO = [(2, b"220 mx\r\n"), (1, b"EHLO c\r\n"), (2, b"250 ok\r\n")]
MULTIPART = (1, b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n")
IN_DATA = [*HELLO, (1, b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"), (2, b"250 a\r\n250 b\r\n354 go\r\n")]


@pytest.mark.parametrize(
    ("name", "prefix", "chunk", "times", "weird"),
    [
        ("header block without end", IN_DATA, (1, b"X-Long: " + b"a" * 65000), 160, "header_too_long"),
        ("part headers without end", [*IN_DATA, MULTIPART],
         (1, b"X: " + b"y" * 65000 + b"\r\n"), 160, "part_header_too_long"),
        ("endless body", IN_DATA, (1, b"Subject: x\r\n\r\n" + b"z" * 65000 + b"\r\n"), 160, None),
        ("endless multiline reply", HELLO, (2, b"250-" + b"r" * 1000 + b"\r\n"), 2000, None),
        ("endless reply line", HELLO, (2, b"r" * 65000), 160, "reply_line_too_long"),
        ("client does not wait after DATA", [*HELLO, (1, b"DATA\r\n")], (1, b"q" * 65000 + b"\r\n"), 160,
         "client_did_not_wait"),
        ("commands never answered", HELLO, (1, b"NOOP\r\n" * 10000), 3, "too_many_pending_commands"),
        ("endless command line", HELLO, (1, b"c" * 65000), 160, "line_too_long"),
        ("endless BDAT chunk", [*HELLO, (1, b"MAIL FROM:<a@b>\r\nBDAT 99999999999\r\n")], (1, b"\0" * 65000),
         160, None),
    ],
)  # fmt: skip
def test_peer_that_never_stops_is_bounded(name, prefix, chunk, times, weird) -> None:
    """crafted: up to 10 MB of one pathological pattern; memory stays bounded and the cause is named once."""
    records, peak = feed_peak(prefix, chunk, times)
    assert peak < 4 * 1024 * 1024, f"{name}: peak {peak} bytes"
    weirds = [r["name"] for r in records if r.get("_log") == "weird"]
    if weird:
        assert weird in weirds, (name, weirds)
    assert len(weirds) == len(set(weirds)), "each weird is reported once per flow"


def test_session_without_transaction_gives_one_record_and_silent_one_none() -> None:
    """crafted: EHLO/RSET/QUIT gives one record (the session's start, its HELO); a banner alone none."""
    recs, _ = session_records(
        [
            (False, b"220 mx\r\n"),
            (True, b"EHLO c.example\r\n"),
            (False, b"250 ok\r\n"),
            (True, b"RSET\r\n"),
            (False, b"250 flushed\r\n"),
            (True, b"QUIT\r\n"),
            (False, b"221 bye\r\n"),
        ],
        1400,
    )
    (rec,) = recs
    assert (rec["helo"], rec["trans_depth"], rec["last_reply"]) == ("c.example", 1, "250 flushed")
    assert "mailfrom" not in rec and rec["tls"] is False
    banner_only, _ = session_records([(False, b"220 mx\r\n")], 1400)
    assert banner_only == []


def test_received_path_and_address_headers() -> None:
    """crafted: Zeek's path rule (second wrapped address when several, IPv6: prefix, consecutive
    duplicates dropped), folded To with a quoted comma, X-Originating-IP in brackets."""
    from celltap.cell.analyzers.smtp_fields import header_fields
    from celltap.cell.analyzers.smtp_mime import parse_header_block

    block = (
        b"Received: from a.example ([192.0.2.1]) by b.example ([198.51.100.7]) with ESMTP\r\n"
        b"Received: from c.example (c.example [IPv6:2001:db8::5])\r\n\tby d.example\r\n"
        b"Received: from e.example (e.example [IPv6:2001:db8::5]) by f.example\r\n"
        b"Received: by local.example; Wed, 02 Dec 2026 01:00:00 +0000\r\n"
        b'To: "Doe, Jane" <jane@example.org>,\r\n bob@example.net\r\n'
        b"X-Originating-IP: [203.0.113.44]\r\n"
        b"User-Agent: Mozilla/5.0 Thunderbird\r\n"
    )
    path = ["10.0.0.2", "10.0.0.1"]
    fields, weirds = header_fields(parse_header_block(block), path)
    assert path == ["10.0.0.2", "10.0.0.1", "198.51.100.7", "2001:db8::5"]
    assert fields["to"] == ['"Doe, Jane" <jane@example.org>', "bob@example.net"]
    assert fields["x_originating_ip"] == "203.0.113.44"
    assert fields["first_received"] == "by local.example; Wed, 02 Dec 2026 01:00:00 +0000"
    assert fields["second_received"].startswith("from e.example")
    assert fields["is_webmail"] is False and weirds == []


CLIENT_TOKENS = [
    b"EHLO x\r\n", b"HELO\r\n", b"MAIL FROM:<a@b>\r\n", b"mail from:\r\n", b"RCPT TO:<c@d>\r\n", b"RCPT\r\n",
    b"DATA\r\n", b"BDAT 5\r\nabcde", b"BDAT 3 LAST\r\nxyz", b"BDAT x\r\n", b"RSET\r\n", b"QUIT\r\n",
    b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"AUTH LOGIN dXNlcg==\r\n", b"*\r\n", b"dXNlcg==\r\n", b".\r\n",
    b"..x\r\n", b"\r\n", b"\n", b".", b"\x16\x03\x01", b"--",
    b"Content-Type: multipart/mixed; boundary=q\r\n\r\n--q\r\n",
]  # fmt: skip
SERVER_TOKENS = [
    b"220 hi\r\n", b"250 ok\r\n", b"250-a\r\n", b"354 go\r\n", b"334 \r\n", b"235 ok\r\n", b"535 no\r\n",
    b"421 bye\r\n", b"550 no\r\n", b"xx\r\n", b"2", b"\r\n",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(0, 400, 20))
def test_random_smtp_token_sessions_never_raise(seed: int) -> None:
    """crafted: sessions of random SMTP-shaped tokens in both directions (20 per seed, random
    segmentation): no exception, every record JSON-serializable."""
    import orjson

    for s in range(seed, seed + 20):
        rng = random.Random(s)
        tokens = [*CLIENT_TOKENS, crafted_mime()[: rng.randint(1, 3000)]]
        turns = []
        for _ in range(rng.randint(1, 30)):
            client = rng.random() < 0.5
            pool = tokens if client else SERVER_TOKENS
            turns.append((client, b"".join(rng.choice(pool) for _ in range(rng.randint(1, 4)))))
        recs, _ = session_records(turns, rng.choice([1, 3, 50, 1400]))
        for r in recs:
            orjson.dumps(r)


def dropped() -> float:
    """celltap_analyzer_parse_errors_total{analyzer="smtp", reason="hand_on_not_drained"}."""
    from prometheus_client import REGISTRY

    labels = {"analyzer": "smtp", "reason": "hand_on_not_drained"}
    return REGISTRY.get_sample_value("celltap_analyzer_parse_errors_total", labels) or 0.0


def test_hand_on_bytes_are_bounded_when_nobody_drains_them() -> None:
    """crafted: after an accepted STARTTLS, 40 MB of TLS-looking bytes with no front end draining
    `handed_on` (socket mode today): at most MAX_UNDRAINED kept, the rest counted as dropped."""
    from celltap.cell.analyzers.smtp_analyzer import MAX_UNDRAINED

    s = Session(SmtpAnalyzer())
    s.feed(encode_text(FLOW, CREATED, 1.0))
    for sender, data in [*HELLO, (1, b"STARTTLS\r\n"), (2, b"220 go ahead\r\n")]:
        s.feed(encode_text(FLOW, DATA, 1.0, sender, data))
    before = dropped()
    chunk = encode_text(FLOW, DATA, 1.0, 1, b"\x16" + b"t" * 65534)
    for _ in range(640):
        s.feed(chunk)
    kept = sum(len(d) for *_, d, _ in s.analyzer.handed_on)
    assert MAX_UNDRAINED - 65535 < kept <= MAX_UNDRAINED
    assert dropped() - before >= 640 - MAX_UNDRAINED // 65535
    s.analyzer.handed_on = []  # a front end drains: handing on resumes
    s.feed(chunk)
    assert sum(len(d) for *_, d, _ in s.analyzer.handed_on) == 65535
