"""HTTP/1.x message syntax as real clients and servers send it: start lines, header blocks, framing.

Theory of operation: pure functions over bytes/str, no state. The flow state machine
(cell/analyzers/http_analyzer.py) finds a head's end with `head_end` (the first empty line, terminated
by CRLF or a lone LF: RFC 9112 §2.2 lets a recipient accept a lone LF), splits it into its start line
and fields with `parse_head` (obs-fold continuation lines are unfolded, §5.2), reads the start line
with `parse_request_line` / `parse_status_line`, and decides the body's framing with
`transfer_coding` / `content_length` (§6.1–6.3). Problems come back as Zeek-style weird names, never
as exceptions.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

# an RFC 9110 token (method, field name)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(r"HTTP/([0-9]+\.[0-9]+)\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")


def head_end(data: bytes, pos: int) -> tuple[int, int]:
    """(end of the head's last line, start of what follows the empty line) of the first empty line at or
    after `pos`, the empty line ending in CRLF or a lone LF; (-1, -1) when no empty line is complete."""
    crlf = data.find(b"\n\r\n", pos)
    if crlf < 0:
        lf = data.find(b"\n\n", pos)
        return (lf, lf + 2) if lf >= 0 else (-1, -1)
    lf = data.find(b"\n\n", pos, crlf + 1)
    return (lf, lf + 2) if lf >= 0 else (crlf, crlf + 3)


def parse_head(head: bytes) -> tuple[str, dict[str, str], str | None]:
    """(start line, fields, weird name or None) of a head given without its last line's terminator.

    Fields: lower-cased names, repeated fields joined with ", "; a line that is not `name: value` is
    left out (reported); an obs-fold line (starting with a blank) continues the previous field's value.
    Lines end in CRLF or a lone LF (one C-level split when every line ends in CRLF, the common case).
    """
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    if text.count("\n") != len(lines) - 1:  # some line ends in a lone LF
        lines = text.replace("\r\n", "\n").split("\n")
    fields: dict[str, str] = {}
    last = ""
    problem = None
    for line in lines[1:]:
        i = line.find(":")
        if i <= 0 or line[0] in " \t":
            if line[:1] in (" ", "\t") and last:
                fields[last] += " " + line.strip(" \t\r")  # obs-fold: RFC 9112 §5.2, replace with SP
                continue
            problem = "bad_header_line"
            continue
        name = line[:i].lower()
        if " " in name or "\t" in name:
            problem = "bad_header_line"  # a blank between name and colon (RFC 9112 §5.1)
            last = ""
            continue
        value = line[i + 1 :].strip(" \t\r")
        if name in fields:
            fields[name] += ", " + value
        else:
            fields[name] = value
        last = name
    return lines[0], fields, problem


def parse_request_line(line: str) -> tuple[str, str | None, str | None, str | None] | None:
    """(method, request-target or None, version or None, weird name or None); None if not a request line.

    Versions are given as after "HTTP/" ("1.1"); a line of method and target alone is HTTP/0.9 ("0.9").
    """
    parts = line.split()
    if not parts:
        return None
    method = parts[0]
    if not (method.isalpha() and method.isascii()) and not _TOKEN.match(method):
        return None
    n = len(parts)
    if n == 3:
        version = parts[2]
        if len(version) == 8 and version.startswith("HTTP/") and version[6] == "." and version[5].isdigit():
            if version[7].isdigit():
                return method, parts[1], version[5:], None
        m = _VERSION.match(version)
        if m is not None:
            return method, parts[1], m.group(1), None
        return None
    if n == 2:
        m = _VERSION.match(parts[1])
        if m is not None:
            return method, None, m.group(1), "missing_HTTP_uri"
        return method, parts[1], "0.9", None if method == "GET" else "HTTP09_method_not_GET"
    if n == 1:
        return method, None, None, "missing_HTTP_uri"
    m = _VERSION.match(parts[-1])
    if m is not None:  # a target with unencoded blanks: keep them, as servers that accept it do
        target = line.strip(" \t\r")[len(method) :].strip(" \t")
        target = target[: target.rfind(" ")].rstrip(" \t") if " " in target else target
        return method, target, m.group(1), "blank_in_HTTP_uri"
    return None


def parse_status_line(line: str) -> tuple[str, int, str] | None:
    """(version after "HTTP/", status code, reason phrase); None if the line is not a status line."""
    if line[8:9] == " " and line[12:13] in (" ", "") and line.startswith("HTTP/"):  # "HTTP/x.y nnn ..."
        code = line[9:12]
        if code.isdigit() and code.isascii():
            return line[5:8], int(code), line[13:].strip(" \t")
    if not line.startswith("HTTP/"):
        return None
    version, _, rest = line[5:].partition(" ")
    rest = rest.lstrip(" ")
    code = rest[:3]
    if len(code) != 3 or not code.isdigit() or (len(rest) > 3 and rest[3] not in " \t"):
        return None
    return version, int(code), rest[4:].strip(" \t\r")


def transfer_coding(value: str) -> tuple[bool, list[str]]:
    """(chunked is the final coding, the codings in order, lower-cased) of a Transfer-Encoding value."""
    codings = [c.strip(" \t").split(";", 1)[0].strip(" \t").lower() for c in value.split(",")]
    codings = [c for c in codings if c]
    return bool(codings) and codings[-1] == "chunked", codings


def content_length(value: str) -> int | None:
    """The body length a Content-Length value gives (equal repeated values allowed), None if invalid."""
    if value.isdigit() and value.isascii():
        return int(value)
    values = {v.strip(" \t") for v in value.split(",")}
    if len(values) != 1:
        return None
    (v,) = values
    return int(v) if v.isdigit() and v.isascii() else None


def chunk_size(line: bytes) -> int | None:
    """The size of a chunk from its size line (extensions after ';' ignored), None if invalid."""
    size = line.split(b";", 1)[0].strip(b" \t\r")
    return int(size, 16) if _HEX.match(size) else None


def unescape_uri(target: str) -> str:
    """The request-target with %XX escapes decoded (as Zeek logs `uri`); invalid UTF-8 as \\xNN."""
    if "%" not in target:
        return target
    return unquote_to_bytes(target.encode("latin-1")).decode("utf-8", "backslashreplace")
