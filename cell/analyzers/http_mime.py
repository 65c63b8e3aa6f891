"""MIME type of an HTTP body from its first bytes (magic-bytes sniffing), named as Zeek names them.

Theory of operation: the analyzer keeps at most `SNIFF_BYTES` of each (transfer- and content-decoded)
body and calls `sniff` once when the body ends. Binary formats are recognised by their fixed leading
signatures; text formats by their first non-blank characters; anything else that is printable text is
`text/plain`, and unrecognised binary data gets no type (Zeek logs nothing for it either). The type
names and the precedence among text formats follow Zeek's file signatures
(base/frameworks/files/magic), which is what fills Zeek's orig_mime_types/resp_mime_types; the
detection itself is a small independent subset, listed in `DETECTED` and in docs/analyzers.md.
"""

from __future__ import annotations

import re

SNIFF_BYTES = 512  # bytes of each body kept for sniffing

# (leading bytes, type): checked in order, first match wins
_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "image/png"),
    (b"GIF8", "image/gif"),
    (b"\xff\xd8", "image/jpeg"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x07\x08PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/x-gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!", "application/x-rar"),
    (b"\x7fELF", "application/x-executable"),
    (b"MZ", "application/x-dosexec"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"wOFF", "application/font-woff"),
    (b"wOF2", "application/font-woff2"),
    (b"\x00asm", "application/wasm"),
    (b"-----BEGIN CERTIFICATE-----", "application/x-pem"),
)

_BOM = b"\xef\xbb\xbf"
# optional blanks and comments before the first element of a markup document
_LEAD = rb"(?:\s|<!--.*?-->)*"  # one blank or one whole comment per step: no ambiguity
_XML_DECL = rb"(?:<\?xml[^>]*\?>)?"
_HTML = re.compile(
    _LEAD + _XML_DECL + _LEAD + rb"<(?:!doctype\s+html|html|head|title|body|meta\s+http-equiv)",
    re.I | re.S,
)
_XML = re.compile(_LEAD + rb"<\?xml\s", re.S)
_JSON_OBJECT = re.compile(rb'\s*\{\s*(?:"[^"]+"|[a-zA-Z][a-zA-Z0-9\\_]*)\s*:\s*(?:["\[{0-9]|true|false)')
_JSON_ARRAY = re.compile(rb'\s*\[\s*(?:(?:"[^"]+"|[0-9]+(?:\.[0-9]+)?|true|false)\s*,|\{|\[)')
_JSON_EMPTY = re.compile(rb"\s*(?:\[\]|\{\})\s*\Z")
_TEXT = re.compile(rb"[\t\n\x0b\x0c\r\x20-\x7e]{10}")

DETECTED = (
    *sorted({t for _, t in _PREFIXES}),
    "image/webp",
    "text/html",
    "application/xml",
    "text/json",
    "text/plain",
)


_BY_FIRST: dict[int, tuple[tuple[bytes, str], ...]] = {}
for _prefix, _mime in _PREFIXES:
    _BY_FIRST[_prefix[0]] = (*_BY_FIRST.get(_prefix[0], ()), (_prefix, _mime))
_BLANKS = b" \t\r\n\x0b\x0c"


def sniff(head: bytes) -> str | None:
    """The MIME type of a body starting with `head`, or None when no signature matches."""
    if not head:
        return None
    for prefix, mime in _BY_FIRST.get(head[0], ()):
        if head.startswith(prefix):
            return mime
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    text = head[3:] if head.startswith(_BOM) else head
    first = text.lstrip(_BLANKS)[:1]
    if first == b"<":
        if _HTML.match(text):
            return "text/html"
        if _XML.match(text):
            return "application/xml"
    elif first == b"{" or first == b"[":
        if _JSON_OBJECT.match(text) or _JSON_ARRAY.match(text) or _JSON_EMPTY.match(text):
            return "text/json"
    if _TEXT.match(text):
        return "text/plain"
    return None
