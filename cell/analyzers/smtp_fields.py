"""Zeek smtp.log fields from a message's top-level header block (base/protocols/smtp/main.zeek).

Theory of operation: the header block has already been parsed by `email` (raw values, compat32).
Headers are visited in order, as Zeek's `mime_one_header` events are: single-valued fields take the
last occurrence (Zeek overwrites), To/Cc collect comma-separated addresses (quotes, angle brackets
and comments respected, at most `MAX_ADDRESSES` each), each Received header shifts `first_received`
into `second_received`, and contributes its IP address to the path (Zeek's
`find_address_in_smtp_header`: of the addresses wrapped in [], (), {} or spaces, the second if there
are several, else the first). Values are unfolded (RFC 5322 2.2.3: CRLF removed) and stripped, not
RFC 2047-decoded, as Zeek logs them.
"""

from __future__ import annotations

import ipaddress
import re
from email.message import Message

from celltap.cell.analyzers.smtp_mime import text

MAX_ADDRESSES = 1000  # Zeek's max_to_addresses / max_cc_addresses
MAX_PATH = 1000  # Zeek's max_path_length

SINGLE = {
    "date": "date",
    "from": "from",
    "reply-to": "reply_to",
    "message-id": "msg_id",
    "in-reply-to": "in_reply_to",
    "subject": "subject",
    "x-mailer": "user_agent",
    "user-agent": "user_agent",
    "x-user-agent": "user_agent",
}
# Zeek's SMTP::webmail_user_agents (policy/protocols/smtp/software.zeek)
WEBMAIL = re.compile(
    r"^iPlanet Messenger|^Sun Java\(tm\) System Messenger Express|\(IMP\)"
    r"|^SquirrelMail|^NeoMail|ZimbraWebClient"
)
_IP_CANDIDATE = re.compile(r"(?:IPv6:)?([0-9A-Fa-f:.]*[0-9A-Fa-f][0-9A-Fa-f:.]*)")
_WRAP = {"[": "]", "(": ")", "{": "}", " ": " "}
_FOLD = re.compile(r"\r?\n(?=[ \t])")


def unfold(value: object) -> str:
    """A header value with its folding removed (RFC 5322 2.2.3) and surrounding space stripped."""
    return _FOLD.sub("", text(value)).strip()


def split_addresses(value: str) -> list[str]:
    """Split an address list on commas outside quotes, angle brackets and comments (Zeek-like)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    angle = paren = 0
    escape = False
    for ch in value:
        if escape:
            escape = False
        elif ch == "\\":
            escape = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted:
            if ch == "<":
                angle += 1
            elif ch == ">":
                angle = max(0, angle - 1)
            elif ch == "(":
                paren += 1
            elif ch == ")":
                paren = max(0, paren - 1)
            elif ch == "," and not angle and not paren:
                part = "".join(cur).strip()
                if part:
                    out.append(part)
                cur = []
                continue
        cur.append(ch)
    part = "".join(cur).strip()
    if part:
        out.append(part)
    return out


def wrapped_ips(value: str) -> list[str]:
    """IP addresses in `value` wrapped in matching [], (), {} or spaces (Zeek's check_wrapping)."""
    out = []
    for m in _IP_CANDIDATE.finditer(value):
        try:
            ip = ipaddress.ip_address(m.group(1))
        except ValueError:
            continue
        start, end = m.start(), m.end()
        before = value[start - 1] if start > 0 else ""
        after = value[end] if end < len(value) else ""
        if before in _WRAP and _WRAP[before] == after:
            out.append(str(ip))
    return out


def received_ip(value: str) -> str | None:
    """The address Zeek takes from one Received header: the second wrapped address if several."""
    ips = wrapped_ips(value)
    if len(ips) > 1:
        return ips[1]
    return ips[0] if ips else None


def header_fields(headers: Message, path: list[str]) -> tuple[dict, list[str]]:
    """Zeek's header-derived smtp.log fields, and weird names; `path` (the endpoints) is extended."""
    out: dict = {}
    weirds: list[str] = []
    to: list[str] = []
    cc: list[str] = []
    webmail = False
    for name, raw in headers.items():
        key = name.lower()
        value = unfold(raw)
        field = SINGLE.get(key)
        if field:
            out[field] = value
            # Zeek (policy/protocols/smtp/software.zeek) tests the User-Agent header only
            webmail = webmail or (key == "user-agent" and WEBMAIL.search(value) is not None)
        elif key in ("to", "cc"):
            dest = to if key == "to" else cc
            for addr in split_addresses(value):
                if addr in dest:
                    continue
                if len(dest) >= MAX_ADDRESSES:
                    weirds.append(f"smtp_too_many_{key}_addresses")
                    break
                dest.append(addr)
        elif key == "received":
            if "first_received" in out:
                out["second_received"] = out["first_received"]
            out["first_received"] = value
            ip = received_ip(value)
            if ip and path[-1] != ip:
                if len(path) >= MAX_PATH:
                    weirds.append("smtp_max_path_length_exceeded")
                else:
                    path.append(ip)
        elif key == "x-originating-ip":
            ips = [m.group(1) for m in _IP_CANDIDATE.finditer(value)]
            for ip in ips:
                try:
                    out["x_originating_ip"] = str(ipaddress.ip_address(ip))
                    break
                except ValueError:
                    continue
    if to:
        out["to"] = to
    if cc:
        out["cc"] = cc
    out["is_webmail"] = webmail
    return out, weirds
