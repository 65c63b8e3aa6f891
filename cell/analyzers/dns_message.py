"""Sans-IO DNS message parser (RFC 1035, EDNS RFC 6891) with bounded name decompression.

Theory of operation: `parse_message` walks the message once, front to back. Names are decompressed by
`read_name`, which follows compression pointers wherever they point inside the message (backwards as
RFC 1035 intends, and forwards, which real resolvers accept) but at most `MAX_POINTER_JUMPS` times:
a loop is cut there. A name that cannot be finished (loop, pointer out of the message, bad label
type, over 255 bytes) keeps the labels read so far; if the name's end in the record is known (a
pointer always ends a name in place) the message goes on, else parsing stops and the sections read
so far are kept. Every such problem is listed in the result's `weird`, so the caller can report it
and still log what was decoded. Only a message shorter than its 12-byte header raises `DnsError`.

Resource data is rendered as the text Zeek's dns.log uses (`rdata_text`): A/AAAA the address,
CNAME/NS/PTR/DNAME the name, MX the exchange, SOA the mname, SRV the target, TXT/SPF
`"TXT <len> <string>"` per string; every other type in RFC 3597's generic form `\\# <len> <hex>`.
The OPT pseudo-RR becomes `edns` (payload size, extended rcode, version, DO, named options).

The parser is hand-written for speed (dnspython is used only as the tests' oracle).
"""

from __future__ import annotations

import struct
from socket import AF_INET6, inet_ntop

MAX_POINTER_JUMPS = 127  # a 255-byte name has at most 127 labels, so at most 127 pointers
MAX_NAME_LENGTH = 255
MAX_RRS = 4096  # more RRs than a 64 KiB message can hold at 11 bytes each: the counts are lies

TYPE_NAMES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    17: "RP",
    28: "AAAA",
    29: "LOC",
    33: "SRV",
    35: "NAPTR",
    39: "DNAME",
    41: "OPT",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    51: "NSEC3PARAM",
    52: "TLSA",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    249: "TKEY",
    250: "TSIG",
    251: "IXFR",
    252: "AXFR",
    255: "*",  # Zeek's name for ANY
    257: "CAA",
}
# Zeek's DNS::classes names
CLASS_NAMES = {1: "C_INTERNET", 2: "C_CSNET", 3: "C_CHAOS", 4: "C_HESIOD", 254: "C_NONE", 255: "C_ANY"}
OPCODE_NAMES = {0: "query", 1: "inverse-query", 2: "status", 4: "notify", 5: "dynamic-update", 6: "dso"}
# RFC 6895 rcodes (header 4 bits + OPT's 8 extended bits); Zeek's DNS::base_errors names
RCODE_NAMES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    16: "BADVERS",
    17: "BADKEY",
    18: "BADTIME",
    19: "BADMODE",
    20: "BADNAME",
    21: "BADALG",
    22: "BADTRUNC",
    23: "BADCOOKIE",
}
# EDNS option codes (IANA "DNS EDNS0 Option Codes")
OPTION_NAMES = {
    3: "NSID",
    5: "DAU",
    6: "DHU",
    7: "N3U",
    8: "ECS",
    9: "EXPIRE",
    10: "COOKIE",
    11: "KEEPALIVE",
    12: "PADDING",
    13: "CHAIN",
    14: "KEY_TAG",
    15: "EDE",
    18: "REPORTCHANNEL",
}

_HEADER = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")
_H = struct.Struct(">H")


class DnsError(ValueError):
    """The message cannot be parsed at all; `reason` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NameProblem(ValueError):
    """A name that could not be finished: `partial` holds the labels read (joined; "" if none), `end`
    its end in the record (-1 when unknown, so the message cannot go on)."""

    def __init__(self, reason: str, partial: str, end: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.end = end


def type_name(t: int) -> str:
    """Zeek's name of a query/RR type (`query-N` for an unknown one, as Zeek's table default)."""
    return TYPE_NAMES.get(t) or f"query-{t}"


def class_name(c: int) -> str:
    """Zeek's name of a query class."""
    return CLASS_NAMES.get(c) or f"query-class-{c}"


def rcode_name(rcode: int) -> str:
    """Zeek's name of an rcode."""
    return RCODE_NAMES.get(rcode) or f"unknown-{rcode}"


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """Read a possibly compressed name at pos; return (name, position after it in the record).

    Raises NameProblem (with the labels read so far) for loops, bad pointers and bad labels.
    """
    labels: list[str] = []
    end = -1
    jumps = 0
    length = 0
    n = len(msg)
    while True:
        if pos >= n:
            raise NameProblem("truncated_name", ".".join(labels), end)
        b = msg[pos]
        if b == 0:
            pos += 1
            break
        if b >= 0xC0:
            if pos + 1 >= n:
                raise NameProblem("truncated_name", ".".join(labels), end)
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                raise NameProblem("compression_loop", ".".join(labels), end)
            pos = ((b & 0x3F) << 8) | msg[pos + 1]
            if pos >= n:
                raise NameProblem("bad_pointer", ".".join(labels), end)
            continue
        if b & 0xC0:
            raise NameProblem("bad_label_type", ".".join(labels), end)
        length += b + 1
        if length > MAX_NAME_LENGTH:
            raise NameProblem("name_too_long", ".".join(labels), end)
        label = msg[pos + 1 : pos + 1 + b]
        if len(label) != b:
            raise NameProblem("truncated_name", ".".join(labels), end)
        labels.append(label.decode("latin-1"))
        pos += 1 + b
    return (".".join(labels) if labels else "<Root>"), (end if end >= 0 else pos)


def _generic(rd: bytes) -> str:
    return f"\\# {len(rd)} {rd.hex()}" if rd else "\\# 0"


def _strings(kind: str, rd: bytes) -> str:
    out = []
    pos, n = 0, len(rd)
    while pos < n:
        ln = rd[pos]
        if pos + 1 + ln > n:
            raise ValueError("bad character-string")
        out.append(f"{kind} {ln} {rd[pos + 1 : pos + 1 + ln].decode('utf-8', 'replace')}")
        pos += 1 + ln
    return " ".join(out)


def rdata_text(msg: bytes, rtype: int, start: int, rdlen: int) -> str:
    """The rdata of one RR as Zeek's dns.log writes it (see the module docstring).

    Raises ValueError / NameProblem when the rdata does not have its type's shape.
    """
    if rtype == 1:
        if rdlen != 4:
            raise ValueError("bad A")
        return "%d.%d.%d.%d" % tuple(msg[start : start + 4])  # noqa: UP031 - fastest here
    if rtype == 28:
        if rdlen != 16:
            raise ValueError("bad AAAA")
        return inet_ntop(AF_INET6, msg[start : start + 16])
    if rtype in (2, 5, 12, 39):
        return read_name(msg, start)[0]
    if rtype == 15:
        if rdlen < 3:
            raise ValueError("bad MX")
        return read_name(msg, start + 2)[0]
    if rtype == 6:
        return read_name(msg, start)[0]
    if rtype == 33:
        if rdlen < 7:
            raise ValueError("bad SRV")
        return read_name(msg, start + 6)[0]
    if rtype == 16:
        return _strings("TXT", msg[start : start + rdlen])
    if rtype == 99:
        return _strings("SPF", msg[start : start + rdlen])
    return _generic(msg[start : start + rdlen])


def _ecs(data: bytes) -> dict:
    family, source, scope = struct.unpack_from(">HBB", data, 0)
    addr = data[4:]
    out: dict = {"family": family, "source_prefix": source, "scope_prefix": scope}
    if family == 1 and len(addr) <= 4:
        out["address"] = "%d.%d.%d.%d" % tuple(addr.ljust(4, b"\0"))  # noqa: UP031
    elif family == 2 and len(addr) <= 16:
        out["address"] = inet_ntop(AF_INET6, addr.ljust(16, b"\0"))
    else:
        out["address_hex"] = addr.hex()
    return out


def edns_option(code: int, data: bytes) -> dict:
    """One EDNS option, named and decoded where its layout is known (else its data in hex)."""
    name = OPTION_NAMES.get(code)
    out: dict = {"code": code, "name": name or f"OPT{code}", "length": len(data)}
    try:
        if code == 3:  # NSID: opaque, usually ASCII
            out["data"] = data.hex()
            if data.isascii() and data.decode("ascii").isprintable():
                out["text"] = data.decode("ascii")
        elif code == 8 and len(data) >= 4:
            out.update(_ecs(data))
        elif code == 10:  # 8-byte client cookie, then 8..32 bytes of server cookie
            out["client"] = data[:8].hex()
            if len(data) > 8:
                out["server"] = data[8:].hex()
        elif code == 12:
            pass  # PADDING: only its length matters
        elif code == 11 and len(data) == 2:
            out["timeout"] = _H.unpack(data)[0]  # units of 100 ms
        elif code == 15 and len(data) >= 2:
            out["info_code"] = _H.unpack_from(data)[0]
            out["text"] = data[2:].decode("utf-8", "replace")
        elif data:
            out["data"] = data.hex()
    except (struct.error, ValueError):
        out["data"] = data.hex()
    return out


def _edns(rclass: int, ttl: int, msg: bytes, start: int, rdlen: int, weird: list[str]) -> dict:
    options = []
    pos, end = start, start + rdlen
    while pos + 4 <= end:
        code, olen = struct.unpack_from(">HH", msg, pos)
        if pos + 4 + olen > end:
            weird.append("bad_edns_option")
            break
        options.append(edns_option(code, msg[pos + 4 : pos + 4 + olen]))
        pos += 4 + olen
    else:
        if pos != end:
            weird.append("bad_edns_option")
    return {
        "udp_payload_size": rclass,
        "extended_rcode": ttl >> 24,
        "version": (ttl >> 16) & 0xFF,
        "do": bool(ttl & 0x8000),
        "options": options,
    }


def _owner_name(msg: bytes, pos: int, weird: list[str], seen: dict[int, str]) -> tuple[str, int]:
    """The name at pos and the position after it; a problem is noted and the partial name returned.

    `seen` maps offsets to the names decoded there in this message: the usual owner name, a pointer
    to the question name (C0 0C), is then decoded once per message.
    """
    if pos + 1 < len(msg) and msg[pos] >= 0xC0:
        target = ((msg[pos] & 0x3F) << 8) | msg[pos + 1]
        name = seen.get(target)
        if name is not None:
            return name, pos + 2
    else:
        target = pos
    try:
        name, end = read_name(msg, pos)
    except NameProblem as exc:
        weird.append(exc.reason)
        return exc.partial, exc.end
    seen[target] = name
    return name, end


def parse_message(msg: bytes) -> dict:
    """Parse one DNS message into a dict; raises DnsError only if it is shorter than a header.

    Keys: id, flags (the 16-bit header flags), qr, opcode, rcode (with OPT's extended bits), questions
    [(name, qtype, qclass)], answers / auth / addl [(name, rtype, rclass, ttl, rdata text)], edns (dict
    or None), counts (the header's four counts), weird (list of problems; parsing stopped at the first
    one that left the position unknown), trailing (bytes after the last RR).
    """
    if len(msg) < 12:
        raise DnsError("short_message")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(msg, 0)
    weird: list[str] = []
    out: dict = {
        "id": ident,
        "flags": flags,
        "qr": flags >> 15,
        "opcode": (flags >> 11) & 0xF,
        "rcode": flags & 0xF,
        "questions": [],
        "answers": [],
        "auth": [],
        "addl": [],
        "edns": None,
        "counts": (qd, an, ns, ar),
        "weird": weird,
        "trailing": 0,
    }
    n = len(msg)
    pos = 12
    seen: dict[int, str] = {}
    questions = out["questions"]
    for _ in range(min(qd, MAX_RRS)):
        name, pos = _owner_name(msg, pos, weird, seen)
        if pos < 0 or pos + 4 > n:
            weird.append("truncated_question")
            return out
        qtype, qclass = struct.unpack_from(">HH", msg, pos)
        pos += 4
        questions.append((name, qtype, qclass))
    for section, count in (("answers", an), ("auth", ns), ("addl", ar)):
        rrs = out[section]
        for _ in range(min(count, MAX_RRS)):
            name, pos = _owner_name(msg, pos, weird, seen)
            if pos < 0 or pos + 10 > n:
                weird.append("truncated_rr")
                return out
            rtype, rclass, ttl, rdlen = _RR.unpack_from(msg, pos)
            pos += 10
            if pos + rdlen > n:
                weird.append("truncated_rr")
                return out
            if rtype == 41:
                if out["edns"] is not None:
                    weird.append("multiple_opt_rrs")
                edns = out["edns"] = _edns(rclass, ttl, msg, pos, rdlen, weird)
                out["rcode"] = (edns["extended_rcode"] << 4) | (flags & 0xF)
            else:
                try:
                    text = rdata_text(msg, rtype, pos, rdlen)
                except NameProblem as exc:
                    weird.append(exc.reason)
                    text = exc.partial
                except ValueError:
                    weird.append("bad_rdata")
                    text = _generic(msg[pos : pos + rdlen])
                rrs.append((name, rtype, rclass, ttl, text))
            pos += rdlen
    out["trailing"] = n - pos
    return out
