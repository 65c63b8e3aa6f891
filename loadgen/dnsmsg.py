"""A DNS message encoder (RFC 1035) with name compression pointers and EDNS(0) OPT records."""

from __future__ import annotations

import struct

TYPES = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
    "OPT": 41,
}
RCODE_NXDOMAIN = 3


class Uncompressed(str):
    """A domain name in RDATA that must be written without compression (SRV target, RFC 2782)."""


class DnsMessage:
    """Build one DNS message section by section; names are compressed against earlier names."""

    def __init__(self, ident: int, flags: int) -> None:
        self.ident, self.flags = ident, flags
        self.body = bytearray()
        self.counts = [0, 0, 0, 0]
        self._names: dict[str, int] = {}

    def _name(self, name: str, compress: bool = True) -> bytes:
        """Encode `name` relative to the current end of the message, pointing at known suffixes."""
        labels = [x for x in name.rstrip(".").split(".") if x]
        out = bytearray()
        for k in range(len(labels)):
            suffix = ".".join(labels[k:]).lower()
            if compress and suffix in self._names:
                out += struct.pack("!H", 0xC000 | self._names[suffix])
                return bytes(out)
            pos = 12 + len(self.body) + len(out)
            if pos < 0x3FFF:
                self._names.setdefault(suffix, pos)
            label = labels[k].encode()
            out += bytes((len(label),)) + label
        return bytes(out + b"\x00")

    def question(self, name: str, qtype: str, qclass: int = 1) -> None:
        """Add a question."""
        self.body += self._name(name) + struct.pack("!HH", TYPES[qtype], qclass)
        self.counts[0] += 1

    def record(self, section: int, name: str, rtype: str, ttl: int, rdata_parts: list[bytes | str]) -> None:
        """Add a resource record to section 1 (answer), 2 (authority) or 3 (additional).

        `rdata_parts` mixes raw bytes and domain names (str), the latter compressed in place."""
        owner = self._name(name)
        self.body += owner + struct.pack("!HHIH", TYPES[rtype], 1, ttl, 0)
        len_at = len(self.body) - 2
        for part in rdata_parts:
            if isinstance(part, str):
                self.body += self._name(part, compress=not isinstance(part, Uncompressed))
            else:
                self.body += part
        struct.pack_into("!H", self.body, len_at, len(self.body) - len_at - 2)
        self.counts[section] += 1

    def opt(self, udp_size: int = 1232, do: bool = False, cookie: bytes | None = None) -> None:
        """Add an EDNS(0) OPT pseudo-record to the additional section (with a COOKIE option if given)."""
        options = b""
        if cookie is not None:
            options = struct.pack("!HH", 10, len(cookie)) + cookie
        self.body += b"\x00" + struct.pack("!HHIH", 41, udp_size, 0x8000 if do else 0, len(options)) + options
        self.counts[3] += 1

    def to_bytes(self) -> bytes:
        """The wire form of the message."""
        return struct.pack("!HHHHHH", self.ident, self.flags, *self.counts) + bytes(self.body)


def rdata(rtype: str, value: object) -> list[bytes | str]:
    """RDATA parts for a record of `rtype` built from a simple Python value."""
    if rtype == "A":
        return [bytes(value)]  # type: ignore[arg-type]
    if rtype == "AAAA":
        return [bytes(value)]  # type: ignore[arg-type]
    if rtype in ("CNAME", "NS", "PTR"):
        return [str(value)]
    if rtype == "MX":
        pref, host = value  # type: ignore[misc]
        return [struct.pack("!H", pref), host]
    if rtype == "TXT":
        out = b""
        for s in value:  # type: ignore[attr-defined]
            b = s.encode()
            out += bytes((len(b),)) + b
        return [out]
    if rtype == "SRV":
        prio, weight, port, target = value  # type: ignore[misc]
        return [struct.pack("!HHH", prio, weight, port), Uncompressed(target)]
    if rtype == "SOA":
        mname, rname, serial = value  # type: ignore[misc]
        return [mname, rname, struct.pack("!IIIII", serial, 7200, 3600, 1209600, 300)]
    raise ValueError(f"no rdata builder for {rtype}")
