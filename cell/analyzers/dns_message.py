"""Sans-IO DNS message parser (RFC 1035 and friends) with bounded name decompression."""

from __future__ import annotations

import ipaddress
import struct

MAX_POINTER_JUMPS = 32
MAX_NAME_LENGTH = 255

TYPE_NAMES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    41: "OPT",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    252: "AXFR",
    255: "ANY",
    257: "CAA",
}
CLASS_NAMES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}

_HEADER = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")


class DnsError(ValueError):
    """The message is malformed; `reason` is the counter label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _type_name(t: int) -> str:
    return TYPE_NAMES.get(t) or f"TYPE{t}"


def read_name(msg: bytes, pos: int) -> tuple[str, int]:
    """Read a possibly compressed name at pos; return (name, position after it in the record)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    length = 0
    n = len(msg)
    while True:
        if pos >= n:
            raise DnsError("truncated_name")
        b = msg[pos]
        if b == 0:
            pos += 1
            break
        if b & 0xC0 == 0xC0:
            if pos + 1 >= n:
                raise DnsError("truncated_name")
            target = ((b & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            # Pointers must go strictly backwards and be few: a loop or a forward chain is an attack.
            if jumps > MAX_POINTER_JUMPS or target >= pos:
                raise DnsError("compression_loop")
            if end < 0:
                end = pos + 2
            pos = target
            continue
        if b & 0xC0:
            raise DnsError("bad_label_type")
        label = msg[pos + 1 : pos + 1 + b]
        if len(label) != b:
            raise DnsError("truncated_name")
        length += b + 1
        if length > MAX_NAME_LENGTH:
            raise DnsError("name_too_long")
        labels.append(label.decode("latin-1"))
        pos += 1 + b
    return (".".join(labels) if labels else "<Root>"), (end if end >= 0 else pos)


def _rdata(msg: bytes, rtype: int, start: int, rdlen: int) -> object:
    end = start + rdlen
    rd = msg[start:end]
    if rtype == 1 and rdlen == 4:
        return str(ipaddress.IPv4Address(rd))
    if rtype == 28 and rdlen == 16:
        return str(ipaddress.IPv6Address(rd))
    if rtype in (2, 5, 12):
        return read_name(msg, start)[0]
    if rtype == 15 and rdlen >= 3:
        return {
            "preference": struct.unpack_from(">H", msg, start)[0],
            "exchange": read_name(msg, start + 2)[0],
        }
    if rtype in (16, 99):
        strings = []
        pos = 0
        while pos < rdlen:
            ln = rd[pos]
            if pos + 1 + ln > rdlen:
                raise DnsError("bad_rdata")
            strings.append(rd[pos + 1 : pos + 1 + ln].decode("utf-8", "replace"))
            pos += 1 + ln
        return strings
    if rtype == 6:
        mname, pos = read_name(msg, start)
        rname, pos = read_name(msg, pos)
        if pos + 20 > end:
            raise DnsError("bad_rdata")
        serial, refresh, retry, expire, minimum = struct.unpack_from(">IIIII", msg, pos)
        return {
            "mname": mname,
            "rname": rname,
            "serial": serial,
            "refresh": refresh,
            "retry": retry,
            "expire": expire,
            "minimum": minimum,
        }
    if rtype == 33 and rdlen >= 7:
        prio, weight, port = struct.unpack_from(">HHH", msg, start)
        return {"priority": prio, "weight": weight, "port": port, "target": read_name(msg, start + 6)[0]}
    if rtype in (1, 28, 15, 33):
        raise DnsError("bad_rdata")
    return rd.hex()


def _edns(rclass: int, ttl: int, msg: bytes, start: int, rdlen: int) -> dict:
    options = []
    pos, end = start, start + rdlen
    while pos + 4 <= end:
        code, olen = struct.unpack_from(">HH", msg, pos)
        if pos + 4 + olen > end:
            raise DnsError("bad_edns_option")
        options.append({"code": code, "length": olen})
        pos += 4 + olen
    return {
        "udp_payload_size": rclass,
        "extended_rcode": ttl >> 24,
        "version": (ttl >> 16) & 0xFF,
        "do": bool(ttl & 0x8000),
        "options": options,
    }


def parse_message(msg: bytes) -> dict:
    """Parse one DNS message into a JSON-ready dict; raises DnsError with a reason."""
    if len(msg) < 12:
        raise DnsError("short_message")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(msg, 0)
    out: dict = {
        "id": ident,
        "qr": flags >> 15,
        "opcode": OPCODES.get((flags >> 11) & 0xF, str((flags >> 11) & 0xF)),
        "flags": {
            "aa": bool(flags & 0x400),
            "tc": bool(flags & 0x200),
            "rd": bool(flags & 0x100),
            "ra": bool(flags & 0x80),
            "z": bool(flags & 0x40),
            "ad": bool(flags & 0x20),
            "cd": bool(flags & 0x10),
        },
        "rcode": RCODES.get(flags & 0xF, str(flags & 0xF)),
    }
    pos = 12
    n = len(msg)
    questions = []
    for _ in range(qd):
        name, pos = read_name(msg, pos)
        if pos + 4 > n:
            raise DnsError("truncated_question")
        qtype, qclass = struct.unpack_from(">HH", msg, pos)
        pos += 4
        questions.append(
            {"name": name, "type": _type_name(qtype), "class": CLASS_NAMES.get(qclass & 0x7FFF, str(qclass))}
        )
    out["questions"] = questions
    for section, count in (("answers", an), ("authority", ns), ("additional", ar)):
        rrs = []
        for _ in range(count):
            name, pos = read_name(msg, pos)
            if pos + 10 > n:
                raise DnsError("truncated_rr")
            rtype, rclass, ttl, rdlen = _RR.unpack_from(msg, pos)
            pos += 10
            if pos + rdlen > n:
                raise DnsError("truncated_rr")
            if rtype == 41:
                out["edns"] = _edns(rclass, ttl, msg, pos, rdlen)
            else:
                rrs.append(
                    {
                        "name": name,
                        "type": _type_name(rtype),
                        "class": CLASS_NAMES.get(rclass, str(rclass)),
                        "ttl": ttl,
                        "data": _rdata(msg, rtype, pos, rdlen),
                    }
                )
            pos += rdlen
        out[section] = rrs
    if pos != n:
        out["trailing_bytes"] = n - pos
    return out
