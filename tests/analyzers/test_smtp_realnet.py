"""The SMTP analyzer on real traffic: postfix + swaks + Python clients in network namespaces (smtp_bed).

Oracles: postfix's own log (which senders/recipients/messages it accepted or refused, SASL results,
TLS), tshark's SMTP/IMF dissection (commands as sent, reply codes, headers, TCP payloads), and
Python's `email` package on the message files the clients sent. Records come from the real path
(`celltap cell --read` + `celltap analyzer smtp`); the STARTTLS hand-on is checked in-process on a
tshark-reassembled event stream (the socket front ends do not carry hand-on bytes yet).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from celltap.cell.analyzers.smtp_analyzer import SmtpAnalyzer
from celltap.cell.sdk.session import Session

from tests.analyzers import cell_path, smtp_bed
from tests.analyzers.pcap_events import pcap_to_events
from tests.analyzers.smtp_oracle import (
    client_payloads,
    data_contents,
    postfix_log,
    reply_frames,
    sent_message,
    tshark_smtp,
)
from tests.conftest import require_root, require_tool

pytestmark = [pytest.mark.netns, pytest.mark.tshark]


@pytest.fixture(scope="module")
def bed() -> Iterator[smtp_bed.Bed]:
    require_root()
    for tool in ("postfix", "swaks", "tshark", "tcpdump", "saslpasswd2", "openssl"):
        require_tool(tool)
    built = smtp_bed.build()
    yield built
    shutil.rmtree(built.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def records(bed: smtp_bed.Bed, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    # the bed's smtpd also listens on 2525 (no TLS) and 2526 (broken TLS): classify those ports too
    with mock.patch.dict(cell_path.RULES, {"smtp": [("TCP", "25,587,2525,2526", None, None)]}):
        return cell_path.cell_records("smtp", bed.pcap, Path(tmp_path_factory.mktemp("smtpcell")), "text")


@pytest.fixture(scope="module")
def postfix(bed: smtp_bed.Bed) -> dict:
    return postfix_log(bed.maillog)


@pytest.fixture(scope="module")
def tshark(bed: smtp_bed.Bed) -> dict:
    return tshark_smtp(bed.pcap)


def smtp_of(records: list[dict], bed: smtp_bed.Bed, scenario: str) -> list[dict]:
    """The smtp.log records of one scenario's client, in order."""
    ip = bed.client(scenario)
    return [r for r in records if "_log" not in r and r["id.orig_h"] == ip]


def files_of(records: list[dict], bed: smtp_bed.Bed, scenario: str) -> list[dict]:
    ip = bed.client(scenario)
    return [r for r in records if r.get("_log") == "files" and r["id.orig_h"] == ip]


def header(msg: dict, name: str) -> str | None:
    """The last occurrence of a header in the sent message (Zeek keeps the last)."""
    values = [v for k, v in msg["headers"] if k == name]
    return values[-1] if values else None


# ------------------------------------------------------------------ reply tracking (issue 13 class 5)


def test_rejected_recipients_are_not_reported_as_accepted(bed, records, postfix) -> None:
    """Pipelined RCPTs, two of three refused (554, 450): postfix's log says which it took."""
    for scenario in ("rejects", "attach", "bdat"):
        pf = postfix[bed.client(scenario)]
        recs = [r for r in smtp_of(records, bed, scenario) if r.get("msg_accepted")]
        assert [set(r["rcptto"]) for r in recs] == [m["to"] for m in pf.delivered], scenario
        assert [r["msg_id"] for r in recs] == [m["message_id"] for m in pf.delivered]
        assert [r["mailfrom"] for r in recs] == [m["from"] for m in pf.delivered]
        refused = {to for to, _ in pf.rejected_rcpt}
        ours = {a for r in smtp_of(records, bed, scenario) for a in r.get("rcptto_rejected", [])}
        assert ours == refused, scenario
    assert {to for to, _ in postfix[bed.client("rejects")].rejected_rcpt} == {
        "nobody@test.example",
        "later@test.example",
    }


def test_rejected_sender(bed, records, postfix) -> None:
    (rec,) = smtp_of(records, bed, "badsender")
    assert postfix[bed.client("badsender")].rejected_mail == ["badsender@test.example"]
    assert rec["mailfrom_rejected"] == "badsender@test.example"
    assert "mailfrom" not in rec and "msg_accepted" not in rec


def test_data_refused_when_no_recipient_was_accepted(bed, records, postfix, tshark) -> None:
    """swaks --pipeline: MAIL, RCPT (554), DATA (554 no valid recipients): no message is reported."""
    (rec,) = smtp_of(records, bed, "norcpt")
    t = tshark[bed.client("norcpt")]
    assert [v.upper() for v, _ in t["commands"]][1:4] == ["MAIL", "RCPT", "DATA"]
    assert t["codes"][2:5] == [250, 554, 554]  # MAIL, RCPT, DATA replies as tshark decodes them
    assert postfix[bed.client("norcpt")].delivered == []
    assert rec["mailfrom"] == "alice@client.example"
    assert rec["rcptto_rejected"] == ["nobody@test.example"] and "rcptto" not in rec
    assert rec["msg_accepted"] is False and "msg_id" not in rec


def test_message_refused_at_end_of_data(bed, records, postfix, tshark) -> None:
    (rec,) = smtp_of(records, bed, "rejected_msg")
    sent = sent_message(bed.messages["rejected_msg"][0])
    assert (
        postfix[bed.client("rejected_msg")].rejected_msg and not postfix[bed.client("rejected_msg")].delivered
    )
    assert tshark[bed.client("rejected_msg")]["codes"][-2] == 550
    assert rec["msg_accepted"] is False
    assert rec["last_reply"].startswith("550 ")
    assert rec["subject"] == header(sent, "subject") == "reject-me please"


def test_server_421_closes_and_unanswered_commands_are_not_accepted(bed, records, postfix, tshark) -> None:
    """Pipelined bad commands hit postfix's hard error limit (421, close); the RCPT after is unanswered."""
    (rec,) = smtp_of(records, bed, "closed")
    assert postfix[bed.client("closed")].errors_421
    t = tshark[bed.client("closed")]
    assert t["codes"][-1] == 421
    assert ("RCPT", "TO:<carol@test.example>") in t["commands"]
    assert rec["rcptto"] == ["bob@test.example"]
    assert rec["rcptto_rejected"] == ["carol@test.example"]
    assert rec["last_reply"].startswith("421 ")


def test_pipelined_commands_pair_with_their_replies(bed, records, tshark) -> None:
    """swaks --pipeline sends MAIL/RCPT/RCPT/RCPT/DATA in one segment; replies pair in order."""
    rows = subprocess.run(
        ["tshark", "-r", bed.pcap, "-n", "-Y", f"ip.src=={bed.client('rejects')} && smtp.req.command",
         "-T", "fields", "-e", "smtp.req.command", "-E", "occurrence=a", "-E", "aggregator=|"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "MAIL|RCPT|RCPT|RCPT|DATA" in rows
    (rec,) = smtp_of(records, bed, "rejects")
    assert rec["rcptto"] == ["bob@test.example"]
    assert rec["rcptto_rejected"] == ["nobody@test.example", "later@test.example"]
    assert rec["msg_accepted"] is True


def test_multiline_replies_and_auth_continuations_are_not_commands(bed, records) -> None:
    """Every EHLO reply is multiline and AUTH LOGIN/CRAM-MD5 send 334 continuations: no reply is left
    unmatched and no line is taken for a command."""
    weirds = [r for r in records if r.get("_log") == "weird"]
    assert weirds == []
    for scenario in ("auth_login", "auth_cram", "auth_plain"):
        (rec,) = smtp_of(records, bed, scenario)
        assert rec["mailfrom"] == "alice@client.example" and rec["rcptto"] == ["bob@test.example"]
        assert rec["last_reply"].startswith("250 ")


# ------------------------------------------------------------------ STARTTLS


def test_starttls_accepted_hands_the_rest_of_the_flow_to_tls(bed, records, postfix) -> None:
    (rec,) = smtp_of(records, bed, "tls")
    assert postfix[bed.client("tls")].tls
    assert rec["tls"] is True and "mailfrom" not in rec
    assert rec["last_reply"].startswith("220 ")
    # in-process on tshark's reassembly: the bytes handed on equal tshark's payloads after the 220
    analyzer = SmtpAnalyzer()
    session = Session(analyzer)
    session.feed(pcap_to_events(bed.pcap, "text", f"ip.addr=={bed.client('tls')}"))
    session.disconnected()
    after = reply_frames(bed.pcap, bed.client("tls"), 220)[1]  # the first 220 is the banner
    up, down = client_payloads(bed.pcap, bed.client("tls"), after)
    flows = {f for f, *_ in analyzer.handed_on}
    assert len(flows) == 1
    (flow,) = flows
    client_end = 1 if flow.ip1 == bed.client("tls") else 2
    ours_up = b"".join(d for _, s, d, _ in analyzer.handed_on if s == client_end)
    ours_down = b"".join(d for _, s, d, _ in analyzer.handed_on if s != client_end)
    assert ours_up[:1] == b"\x16" and ours_down[:1] == b"\x16"  # TLS handshake records both ways
    assert ours_up == up
    assert ours_down == down


@pytest.mark.parametrize(("scenario", "code"), [("tls502", 502), ("tls454", 454)])
def test_refused_starttls_keeps_the_session_in_clear(scenario, code, bed, records, postfix, tshark) -> None:
    (rec,) = smtp_of(records, bed, scenario)
    t = tshark[bed.client(scenario)]
    starttls = [
        i
        for i, (v, p) in enumerate(t["commands"])
        if (v.upper(), p.upper()) in (("STAR", "TLS"), ("STARTTLS", ""))
    ]
    assert starttls and code in t["codes"]
    (delivered,) = postfix[bed.client(scenario)].delivered
    assert rec["tls"] is False
    assert rec["msg_id"] == delivered["message_id"] and set(rec["rcptto"]) == delivered["to"]
    assert rec["msg_accepted"] is True


# ------------------------------------------------------------------ AUTH


@pytest.mark.parametrize(
    ("scenario", "mech", "ok"),
    [("auth_plain", "PLAIN", True), ("auth_login", "LOGIN", True), ("auth_cram", "CRAM-MD5", True),
     ("auth_fail", "LOGIN", False)],
)  # fmt: skip
def test_auth_mechanism_user_and_result_match_postfix(
    scenario, mech, ok, bed, records, postfix, tshark
) -> None:
    (rec,) = smtp_of(records, bed, scenario)
    pf = postfix[bed.client(scenario)]
    ((method, user),) = pf.sasl_ok if ok else pf.sasl_failed
    assert (rec["auth_mechanism"], rec["auth_user"], rec["auth_success"]) == (method, user, ok)
    assert method == mech
    if mech == "LOGIN":  # tshark shows the LOGIN user name (base64) in smtp.auth.username
        assert base64.b64decode(tshark[bed.client(scenario)]["auth_users"][0]).decode() == user


# ------------------------------------------------------------------ BDAT, transactions, data framing


def test_bdat_chunks_are_framed_by_length(bed, records, postfix) -> None:
    """Two BDAT transactions (the first in two chunks holding lone-dot lines, the second pipelined with
    its MAIL/RCPT in one write): postfix's own byte count and the message files agree with ours."""
    recs = smtp_of(records, bed, "bdat")
    assert len(recs) == 2
    sent = [sent_message(p) for p in bed.messages["bdat"]]
    for rec, msg in zip(recs, sent, strict=True):
        queued = re.search(r"Ok: (\d+) bytes queued", rec["last_reply"])
        assert queued and int(queued.group(1)) == msg["size"] == rec["msg_size"]
        assert rec["msg_id"] == header(msg, "message-id")
        assert rec["msg_accepted"] is True
    assert [r["trans_depth"] for r in recs] == [1, 2]
    assert recs[1]["rcptto"] == ["carol@test.example"] and recs[1]["rcptto_rejected"] == [
        "nobody@test.example"
    ]
    assert [m["message_id"] for m in postfix[bed.client("bdat")].delivered] == [r["msg_id"] for r in recs]
    (att,) = recs[0]["attachments"]
    (leaf,) = [x for x in sent[0]["leaves"] if x["filename"]]
    assert (att["filename"], att["mime_type"], att["size"]) == (
        leaf["filename"],
        leaf["mime_type"],
        leaf["size"],
    )


def test_several_transactions_rset_and_lowercase_commands(bed, records, postfix, tshark) -> None:
    """smtplib sends lowercase verbs; two messages with an RSET'd transaction between them."""
    t = tshark[bed.client("multi")]
    assert {"mail", "rcpt", "data", "rset"} <= {v for v, _ in t["commands"]}
    recs = smtp_of(records, bed, "multi")
    delivered = postfix[bed.client("multi")].delivered
    assert [r.get("msg_id") for r in recs] == [delivered[0]["message_id"], None, delivered[1]["message_id"]]
    assert [set(r["rcptto"]) for r in recs] == [
        delivered[0]["to"],
        {"carol@test.example"},
        delivered[1]["to"],
    ]
    assert "msg_accepted" not in recs[1]  # the RSET transaction sent no message
    # Zeek's trans_depth: messages transferred before this record, plus one
    assert [r["trans_depth"] for r in recs] == [1, 2, 2]
    for rec, path in zip([recs[0], recs[2]], bed.messages["multi"], strict=True):
        assert rec["msg_size"] == sent_message(path)["size"]  # dot-stuffing removed, exactly


def test_end_of_data_split_across_segments(bed, records, postfix) -> None:
    """`\\r\\n`, `.`, `\\r\\n` in separate TCP segments, a dot-stuffed line starting a segment,
    lowercase `mail from:` without angle brackets and a `size=` parameter."""
    payloads = subprocess.run(
        ["tshark", "-r", bed.pcap, "-n", "-Y", f"ip.src=={bed.client('split')} && tcp.len>0",
         "-T", "fields", "-e", "tcp.payload"], capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "2e" in payloads and "0d0a" in payloads  # the lone "." and CRLF segments are real
    (rec,) = smtp_of(records, bed, "split")
    (msg_path,) = bed.messages["split"]
    (delivered,) = postfix[bed.client("split")].delivered
    assert rec["mailfrom"] == delivered["from"] == "alice@client.example"
    assert rec["msg_size"] == sent_message(msg_path)["size"]
    assert rec["msg_id"] == delivered["message_id"] and rec["msg_accepted"] is True


# ------------------------------------------------------------------ Zeek smtp.log depth (issue 14)


def test_headers_path_and_attachments_match_the_message_sent(bed, records, tshark) -> None:
    (rec,) = smtp_of(records, bed, "attach")
    msg = sent_message(bed.messages["attach"][0])
    (imf,) = tshark[bed.client("attach")]["imf"]
    for ours, name, theirs in [
        ("from", "from", imf["from"]),
        ("subject", "subject", imf["subject"]),
        ("msg_id", "message-id", imf["message_id"]),
        ("date", "date", imf["date"]),
        ("reply_to", "reply-to", imf["reply_to"]),
        ("in_reply_to", "in-reply-to", imf["in_reply_to"]),
    ]:
        assert rec[ours] == header(msg, name) == theirs, ours
    assert rec["cc"] == ["Carol <carol@test.example>", '"Doe, John" <john@test.example>']
    assert ", ".join(rec["cc"]) == header(msg, "cc") == imf["cc"]
    assert rec["to"] == header(msg, "to").split(",")
    agents = [v for k, v in msg["headers"] if k in ("x-mailer", "user-agent", "x-user-agent")]
    assert rec["user_agent"] == agents[-1]
    received = [v for k, v in msg["headers"] if k == "received"]
    assert (rec["first_received"], rec["second_received"]) == (received[-1], received[-2])
    assert rec["x_originating_ip"] == "192.0.2.77"  # the header swaks was given
    # Zeek's path: responder, originator, then one address per Received header (top to bottom)
    assert rec["path"] == [smtp_bed.SERVER, bed.client("attach"), "198.51.100.2", "203.0.113.9"]
    assert rec["is_webmail"] is True  # User-Agent: SquirrelMail (Zeek's webmail_user_agents)
    # every leaf entity: declared type and decoded size as Python's email package decodes them
    files = files_of(records, bed, "attach")
    assert [(f["mime_type"], f.get("filename"), f["seen_bytes"]) for f in files] == [
        (x["mime_type"], x["filename"], x["size"]) for x in msg["leaves"]
    ]
    assert rec["fuids"] == [f["fuid"] for f in files]
    # the attachments are the files swaks was given: names and sizes on disk
    assert [(a["filename"], a["size"]) for a in rec["attachments"]] == [
        (name, (bed.workdir / name).stat().st_size) for name, _, _ in smtp_bed.ATTACHMENTS
    ]
    # hashes of the decoded content: Python's email decoding, and the attachment files themselves
    assert [f["sha256"] for f in files] == [x["sha256"] for x in msg["leaves"]]
    by_fuid = {f["fuid"]: f for f in files}
    for a, (name, _, _) in zip(rec["attachments"], smtp_bed.ATTACHMENTS, strict=True):
        content = (bed.workdir / name).read_bytes()
        f = by_fuid[a["fuid"]]
        assert (f["md5"], f["sha1"], f["sha256"]) == (
            hashlib.md5(content).hexdigest(),
            hashlib.sha1(content).hexdigest(),
            hashlib.sha256(content).hexdigest(),
        ), name
    assert [rec["msg_size"]] == [len(m) for m in data_contents(bed.pcap, bed.client("attach"))]
    assert rec["tls"] is False and rec["trans_depth"] == 1


def test_records_join_to_their_connection(bed, records) -> None:
    from communityid import CommunityID, FlowTuple

    cid = CommunityID()
    for rec in records:
        if rec.get("_log") == "weird":
            continue
        tup = FlowTuple.make_tcp(rec["id.orig_h"], rec["id.resp_h"], rec["id.orig_p"], rec["id.resp_p"])
        assert rec["community_id"] == cid.calc(tup)
        assert rec["uid"].startswith("C") and rec["id.resp_p"] in (25, 2525, 2526)


def test_one_direction_only_reports_commands_as_unanswered(bed, tmp_path) -> None:
    """Derived from the real capture (server-to-client packets removed, as on an asymmetric link):
    without replies every recipient counts as sent and no reply or acceptance is claimed."""
    one = tmp_path / "client-only.pcap"
    subprocess.run(
        ["tshark", "-r", bed.pcap, "-Y", f"ip.src=={bed.client('rejects')}", "-w", str(one)],
        check=True, capture_output=True,
    )  # fmt: skip
    analyzer = SmtpAnalyzer()
    session = Session(analyzer)
    recs = session.feed(pcap_to_events(str(one), "text", "tcp")) + session.disconnected()
    (rec,) = [r for r in recs if "_log" not in r]
    sent = sent_message(bed.messages["rejects"][0])
    assert rec["rcptto"] == ["bob@test.example", "nobody@test.example", "later@test.example"]
    assert "last_reply" not in rec and "msg_accepted" not in rec
    assert rec["msg_id"] == header(sent, "message-id")
    assert [rec["msg_size"]] == [len(m) for m in data_contents(str(one), bed.client("rejects"))]


def test_one_direction_starttls_is_recognised_by_the_tls_record_that_follows(bed, tmp_path) -> None:
    """Derived from the real capture (client packets only): no 220 is seen, so the client's next byte
    decides; a TLS handshake record (0x16) follows STARTTLS and everything after it is handed on."""
    one = tmp_path / "client-only-tls.pcap"
    subprocess.run(
        ["tshark", "-r", bed.pcap, "-Y", f"ip.src=={bed.client('tls')}", "-w", str(one)],
        check=True, capture_output=True,
    )  # fmt: skip
    analyzer = SmtpAnalyzer()
    session = Session(analyzer)
    recs = session.feed(pcap_to_events(str(one), "text", "tcp")) + session.disconnected()
    (rec,) = [r for r in recs if "_log" not in r]
    assert rec["tls"] is True and "last_reply" not in rec
    up, _ = client_payloads(str(one), bed.client("tls"))
    after = up[up.index(b"STARTTLS\r\n") + len(b"STARTTLS\r\n") :]
    assert after[:1] == b"\x16"
    assert b"".join(d for _, _, d, _ in analyzer.handed_on) == after


def test_celltap_analyze_joins_smtp_files_tls_and_conn(bed, tmp_path, postfix) -> None:
    """`celltap analyze` (built-in rules) on the bed's capture: every smtp.log and files.log record joins
    one conn.log record by uid and Community ID; the STARTTLS flow's TLS, handed on through the L7
    loopback, is in tls.log; the messages postfix queued are the smtp.log records with msg_accepted."""
    import json
    import sys

    out = tmp_path / "logs"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "analyze", bed.pcap, "-o", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]

    def log(name: str) -> list[dict]:
        path = out / f"{name}.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    conn = {r["uid"]: r for r in log("conn")}
    smtp, files, tls = log("smtp"), log("files"), log("tls")
    assert {r["id.orig_h"] for r in smtp} == {bed.client(s) for s in smtp_bed.CLIENTS}
    for rec in smtp + files:
        assert rec["uid"] in conn and conn[rec["uid"]]["community_id"] == rec["community_id"]
    assert sorted(f["fuid"] for f in files) == sorted(x for r in smtp for x in r["fuids"])
    queued = {m["message_id"] for c in postfix.values() for m in c.delivered}
    accepted = [r for r in smtp if r.get("msg_accepted")]
    assert {r["msg_id"] for r in accepted} <= queued
    assert len(accepted) == len(queued) - 1  # the message sent after STARTTLS is encrypted
    # the TLS after STARTTLS reached the TLS analyzer (either record shape: Zeek's or SF-TAP's)
    tls_clients = {r.get("id.orig_h") or r.get("client", {}).get("ip") for r in tls}
    assert bed.client("tls") in tls_clients
