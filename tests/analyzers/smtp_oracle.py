"""Oracles for the SMTP analyzer: postfix's own log, tshark's SMTP/IMF dissection, and Python's `email`
package on the messages exactly as the clients sent them. Nothing here reads our analyzer's output.
"""

from __future__ import annotations

import email
import hashlib
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from email import policy
from pathlib import Path

DECODE_AS = ["-d", "tcp.port==2525,smtp", "-d", "tcp.port==2526,smtp"]  # the bed's other smtpd ports


def tshark_fields(pcap: str, display_filter: str, fields: list[str]) -> list[dict[str, list[str]]]:
    """tshark -T fields rows (all occurrences) with the bed's extra SMTP ports decoded as SMTP."""
    cmd = ["tshark", "-r", pcap, "-n", *DECODE_AS, "-Y", display_filter, "-T", "fields",
           "-E", "separator=\x1e", "-E", "aggregator=\x1f", "-E", "occurrence=a"]  # fmt: skip
    for f in fields:
        cmd += ["-e", f]
    rows = []
    for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split("\n"):
        if line:
            values = line.split("\x1e")
            rows.append({f: (v.split("\x1f") if v else []) for f, v in zip(fields, values, strict=True)})
    return rows


@dataclass
class PostfixClient:
    """What postfix logged about one client address."""

    delivered: list[dict] = field(default_factory=list)  # per queued message: from, to (set), message_id
    rejected_rcpt: list[tuple[str, int]] = field(default_factory=list)  # (recipient, code)
    rejected_mail: list[str] = field(default_factory=list)
    rejected_msg: list[str] = field(default_factory=list)  # queue ids refused at the end of data
    sasl_ok: list[tuple[str, str]] = field(default_factory=list)  # (method, username)
    sasl_failed: list[tuple[str, str]] = field(default_factory=list)
    tls: bool = False
    errors_421: bool = False


def postfix_log(path: str) -> dict[str, PostfixClient]:
    """Parse postfix's maillog into per-client facts (queue ids are followed across processes)."""
    out: dict[str, PostfixClient] = defaultdict(PostfixClient)
    owner: dict[str, str] = {}  # queue id -> client address
    msgs: dict[str, dict] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        m = re.search(r": ([0-9A-F]+): client=\S+\[([\d.]+)\](.*)", line)
        if m:
            qid, ip, rest = m.groups()
            owner[qid] = ip
            msgs[qid] = {"qid": qid, "to": set(), "message_id": None, "from": None, "queued": False}
            sasl = re.search(r"sasl_method=(\S+), sasl_username=(\S+)", rest)
            if sasl:
                out[ip].sasl_ok.append((sasl.group(1), sasl.group(2)))
            continue
        m = re.search(
            r"reject: (RCPT|MAIL) from \S+\[([\d.]+)\]: (\d{3}) .*?from=<([^>]*)>(?: to=<([^>]*)>)?", line
        )
        if m:
            kind, ip, code, frm, to = m.groups()
            if kind == "RCPT":
                out[ip].rejected_rcpt.append((to, int(code)))
            else:
                out[ip].rejected_mail.append(frm)
            continue
        m = re.search(r": ([0-9A-F]+): reject: header .* from \S+\[([\d.]+)\]", line)
        if m:
            out[m.group(2)].rejected_msg.append(m.group(1))
            continue
        m = re.search(
            r"warning: \S+\[([\d.]+)\]: SASL (\S+) authentication failed: .*sasl_username=(\S+)", line
        )
        if m:
            out[m.group(1)].sasl_failed.append((m.group(2), m.group(3)))
            continue
        m = re.search(r"TLS connection established from \S+\[([\d.]+)\]", line)
        if m:
            out[m.group(1)].tls = True
            continue
        m = re.search(r"too many errors .* from \S+\[([\d.]+)\]", line)
        if m:
            out[m.group(1)].errors_421 = True
            continue
        m = re.search(
            r": ([0-9A-F]+): (message-id=<([^>]*)>|from=<([^>]*)>, size|to=<([^>]*)>, .*status=sent)", line
        )
        if m and m.group(1) in msgs:
            msg = msgs[m.group(1)]
            if m.group(3) is not None:
                msg["message_id"] = "<" + m.group(3) + ">"
            elif m.group(4) is not None:
                msg["from"], msg["queued"] = m.group(4), True
            else:
                msg["to"].add(m.group(5))
    for qid, msg in msgs.items():
        if msg["queued"]:
            out[owner[qid]].delivered.append(msg)
    return dict(out)


def unfold(value: str) -> str:
    """RFC 5322 unfolding (CRLF before whitespace removed), stripped."""
    return re.sub(r"\r?\n(?=[ \t])", "", value).strip()


def sent_message(path: Path) -> dict:
    """Headers and leaf MIME entities of a message file, parsed by Python's `email` package; `size` is
    the file's size (exact for the Python clients; swaks converts LF to CRLF: see `data_contents`)."""
    raw = path.read_bytes()
    msg = email.message_from_bytes(raw, policy=policy.compat32)
    headers = [(k.lower(), unfold(str(v))) for k, v in msg.items()]
    leaves = [
        {
            "mime_type": part.get_content_type(),
            "filename": part.get_filename(),
            "size": len(part.get_payload(decode=True) or b""),
            "sha256": hashlib.sha256(part.get_payload(decode=True) or b"").hexdigest(),
        }
        for part in msg.walk()
        if not part.is_multipart()
    ]
    return {"raw": raw, "headers": headers, "leaves": leaves, "size": len(raw)}


def tshark_smtp(pcap: str) -> dict[str, dict]:
    """Per client address: commands (verb as sent, parameter), reply codes, IMF headers, AUTH user names."""
    out: dict[str, dict] = defaultdict(lambda: {"commands": [], "codes": [], "imf": [], "auth_users": []})
    rows = tshark_fields(
        pcap,
        "smtp or imf",
        [
            "ip.src",
            "ip.dst",
            "tcp.srcport",
            "smtp.req.command",
            "smtp.req.parameter",
            "smtp.response.code",
            "smtp.auth.username",
            "imf.from",
            "imf.to",
            "imf.cc",
            "imf.subject",
            "imf.message_id",
            "imf.date",
            "imf.reply_to",
            "imf.in_reply_to",
        ],
    )
    for r in rows:
        src, dst = r["ip.src"][0], r["ip.dst"][0]
        if r["tcp.srcport"][0] in ("25", "2525", "2526"):
            out[dst]["codes"] += [int(c) for c in r["smtp.response.code"]]
            continue
        s = out[src]
        params = r["smtp.req.parameter"]
        for i, verb in enumerate(r["smtp.req.command"]):
            s["commands"].append((verb, params[i] if i < len(params) else ""))
        s["auth_users"] += r["smtp.auth.username"]
        if r["imf.subject"] or r["imf.from"]:
            s["imf"].append(
                {k.split(".", 1)[1]: (v[0] if v else None) for k, v in r.items() if k.startswith("imf.")}
            )
    return dict(out)


def client_payloads(pcap: str, client: str, after_frame: int = 0) -> tuple[bytes, bytes]:
    """(client->server, server->client) TCP payload bytes of one client's flow after a frame, as tshark
    reassembles them (retransmissions dropped by tshark's analysis flags)."""
    cmd = [
        "tshark", "-r", pcap, "-n", "-Y",
        f"ip.addr=={client} && tcp.len>0 && frame.number>{after_frame} && !tcp.analysis.retransmission",
        "-T", "fields", "-e", "ip.src", "-e", "tcp.payload",
    ]  # fmt: skip
    up, down = bytearray(), bytearray()
    for line in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines():
        src, _, hexdata = line.partition("\t")
        (up if src == client else down).extend(bytes.fromhex(hexdata.replace(":", "")))
    return bytes(up), bytes(down)


def reply_frames(pcap: str, client: str, code: int) -> list[int]:
    """Frame numbers of the replies with `code` sent to `client`, in order."""
    shown = f"ip.dst=={client} && smtp.response.code=={code}"
    cmd = ["tshark", "-r", pcap, "-n", *DECODE_AS, "-Y", shown, "-T", "fields", "-e", "frame.number"]
    return [int(x) for x in subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()]


def data_contents(pcap: str, client: str) -> list[bytes]:
    """The messages a client sent with DATA, from tshark's TCP payloads: the bytes after each `DATA`
    line up to the CRLF of the line before the lone dot (RFC 5321 4.1.1.4), dot-stuffing removed."""
    up, _ = client_payloads(pcap, client)
    out = []
    pos = 0
    while True:
        m = re.compile(rb"(?im)^data\r\n").search(up, pos)
        if m is None:
            return out
        end = up.find(b"\r\n.\r\n", m.end() - 2)
        body = up[m.end() : end + 2]
        if body.startswith(b".."):
            body = body[1:]
        out.append(body.replace(b"\r\n..", b"\r\n."))
        pos = end + 5
