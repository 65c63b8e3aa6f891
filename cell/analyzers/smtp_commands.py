"""SMTP command lines: verb and argument, envelope addresses, BDAT sizes, the user name of an AUTH.

Theory of operation: pure functions over one command line (already split at its LF, CR removed).
Verbs are case-insensitive (RFC 5321 2.4), as are `FROM:` / `TO:`; the address is taken from the
angle brackets when there are some (`<>` is the null reverse-path, given as ""), else the first
token after the colon; a source route (`<@a,@b:user@c>`) is dropped. AUTH user names are decoded
from the SASL exchange for PLAIN, LOGIN, CRAM-MD5 and XOAUTH2; passwords and tokens never leave
these functions.
"""

from __future__ import annotations

import base64
import binascii

MAX_BDAT = 1 << 62


def split_command(line: bytes) -> tuple[str, str]:
    """(upper-cased verb, argument) of one command line."""
    text = line.decode("utf-8", "replace").strip()
    verb, _, arg = text.partition(" ")
    if "\t" in verb:
        verb, _, more = verb.partition("\t")
        arg = (more + " " + arg).strip()
    return verb.upper(), arg.strip()


def path_address(arg: str, keyword: str) -> str | None:
    """The address of `MAIL FROM:<a@b> SIZE=1` / `RCPT TO:<c@d>` (keyword FROM/TO), or None if absent."""
    head, sep, rest = arg.partition(":")
    if not sep or head.strip().upper() != keyword:
        return None
    rest = rest.strip()
    if rest.startswith("<"):
        end = rest.find(">")
        addr = rest[1:end] if end >= 0 else rest[1:].split(" ", 1)[0]
    else:
        addr = rest.split(" ", 1)[0] if rest else ""
    if addr.startswith("@") and ":" in addr:  # RFC 5321 4.1.2 source route
        addr = addr.rsplit(":", 1)[1]
    return addr


def bdat_args(arg: str) -> tuple[int, bool] | None:
    """(chunk size, LAST) of `BDAT 1000 LAST`, or None if the argument is malformed (RFC 3030)."""
    parts = arg.split()
    if not parts or len(parts) > 2 or not parts[0].isdigit():
        return None
    size = int(parts[0])
    if size > MAX_BDAT:
        return None
    if len(parts) == 2:
        if parts[1].upper() != "LAST":
            return None
        return size, True
    return size, False


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value.strip(), validate=False)
    except (binascii.Error, ValueError):
        return None


def auth_user(mechanism: str, responses: list[str]) -> str | None:
    """The user name a SASL exchange carries (client responses in order, initial response first)."""
    if not responses:
        return None
    raw = _b64(responses[0])
    if raw is None:
        return None
    if mechanism == "PLAIN":
        parts = raw.split(b"\0")
        name = parts[1] if len(parts) >= 3 else None  # authzid NUL authcid NUL passwd
    elif mechanism in ("LOGIN", "CRAM-MD5"):
        name = raw.split(b" ", 1)[0] if mechanism == "CRAM-MD5" else raw
    elif mechanism == "XOAUTH2":
        name = next((p[5:] for p in raw.split(b"\x01") if p.startswith(b"user=")), None)
    else:
        return None
    if not name:
        return None
    return name.decode("utf-8", "replace")
