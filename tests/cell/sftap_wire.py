"""Parsers of SF-TAP's interface formats written from SF-TAP's own source, not from celltap's reading.

Sources (SF-TAP flow abstractor, C++; the NICT fork kanaya-nict/sftap carries the ICMP and reason code
of upstream SF-TAP/flow-abstractor, whose fabs_appif.hpp declares the same CLOSED_REASON enum and the
same write_event signature):

* src/fabs_appif.cpp, fabs_appif::write_event, text branch: the header is built as
  "ip1=" inet_ntop(addr1) ",ip2=" inet_ntop(addr2), then ",port1=" ",port2=" (ntohs, decimal) only
  `if (l4 == IPPROTO_TCP || l4 == IPPROTO_UDP)`, ",hop=" (int)hop, ",l3=ipv4|ipv6",
  ",l4=tcp|udp|icmp|icmpv6", then ",event=CREATED" | ",event=DESTROYED" + ",reason=NORMAL|RESET|
  TIMEOUT|COMPROMISED" | ",event=DATA,from=" "1,"|"2,"|"none," "match=up|down|none" ",len=" bodylen;
  then ",time=" boost::lexical_cast<std::string>(tm->tv_sec + tm->tv_usec * 0.000001) and "\\n".
  lexical_cast of a double prints it like printf("%.17g") (17 significant digits, no trailing
  zeros); SF-TAP's tutorial shows `time=1449325525.8732619`, which is exactly that of tv_usec 873262.
  The body (bodylen bytes) follows `if (bodylen > 0 && ifrule->m_is_body)`.
* src/fabs_id.hpp, struct fabs_appif_header, __attribute__((packed, aligned(32))), 64 bytes on x86-64:
  l3_addr1 [16], l3_addr2 [16] (IPv4 in b32, the rest zeroed by memset in stream_info's constructor /
  in_datagram / in_icmp), timeval tm (two 64-bit machine-order integers), l4_port1, l4_port2 (big
  endian), event, from, len (machine order), hop, l3_proto, l4_proto, match, reason, then 3 bytes the
  writer never sets (upstream: unused; the fork: vlanid + unused) - zero from the memset.
* `from` (header->from = id_dir.m_dir): FROM_ADDR1 0, FROM_ADDR2 1, FROM_NONE 3. DATA: the sender.
  CREATED: written by appif_consumer::send_tcp_data with its id_dir argument, the DATA event that
  completed classification, so 0 or 1 (send_tcp_data is never called with FROM_NONE). DESTROYED:
  fabs_tcp::input_tcp_event sets id_dir.m_dir = FROM_NONE before in_event(STREAM_DESTROYED, ...).
* match: write_event is called with MATCH_NONE for CREATED and DESTROYED; reason with CLOSED_NORMAL (0)
  for CREATED and DATA; len 0 (bodylen) for CREATED and DESTROYED; TCP DATA is never empty
  (in_stream_event returns on `bytes->get_len() <= 0`).
* ICMP (fabs_id::set_iph): no ports are read, l4_port stays 0 (memset); appif_consumer::in_icmp writes
  DATA with MATCH_NONE and the whole ICMP message as body.
* Endpoint order (fabs_id::set_iph): addr1 is the smaller fabs_peer by memcmp: the 16 address bytes,
  then the port in network byte order.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

L3_TEXT = {b"ipv4": 0, b"ipv6": 41}  # IPPROTO_IP, IPPROTO_IPV6
L4_TEXT = {b"tcp": 6, b"udp": 17, b"icmp": 1, b"icmpv6": 58}
L4_NAME = {v: k.decode() for k, v in L4_TEXT.items()}
EVENTS = {0: "CREATED", 1: "DESTROYED", 2: "DATA"}
MATCH = {0: "up", 1: "down", 2: "none"}
REASON = {0: "NORMAL", 1: "RESET", 2: "TIMEOUT", 3: "COMPROMISED"}
FROM_ADDR1, FROM_ADDR2, FROM_NONE = 0, 1, 3
HEADER = struct.Struct("<16s16sqq2s2sBBHBBBBB3s")  # fabs_appif_header, x86-64


@dataclass
class WireEvent:
    """One event as SF-TAP would have written it."""

    ip1: str
    ip2: str
    port1: int
    port2: int
    hop: int
    l3: str
    l4: str
    event: str
    time: str  # the text exactly as written (text format) or %.17g of the timeval (binary)
    sec: int = 0  # binary only: the timeval
    usec: int = 0
    sender: int = 0  # DATA: 1 or 2; binary CREATED: 1 or 2; otherwise 0
    match: str = "none"
    reason: str = ""
    length: int = 0
    body: bytes = b""

    @property
    def flow(self) -> tuple:
        """(ip1, port1, ip2, port2, hop, l3, l4)."""
        return (self.ip1, self.port1, self.ip2, self.port2, self.hop, self.l3, self.l4)


def sftap_time(sec: int, usec: int) -> str:
    """boost::lexical_cast<std::string>(sec + usec * 0.000001): printf %.17g of that double."""
    return f"{sec + usec * 0.000001:.17g}"


def _addr(family: int, text: bytes) -> str:
    s = text.decode()
    canon = socket.inet_ntop(family, socket.inet_pton(family, s))
    assert s == canon, f"address {s!r} is not as inet_ntop prints it ({canon!r})"
    return s


def _field(line: bytes, pos: int, key: bytes) -> tuple[bytes, int]:
    """The value of `key=` at pos, up to the next ',' (or the end of the line)."""
    assert line.startswith(key + b"=", pos), f"expected {key!r} at {pos} in {line!r}"
    start = pos + len(key) + 1
    end = line.find(b",", start)
    end = len(line) if end < 0 else end
    return line[start:end], end + 1


def _decimal(v: bytes) -> int:
    assert v.isdigit() and (v == b"0" or not v.startswith(b"0")), f"not lexical_cast's decimal: {v!r}"
    return int(v)


def parse_text_line(line: bytes) -> WireEvent:
    """One header line (without "\\n"), field by field in write_event's order."""
    pos = 0
    ip1, pos = _field(line, pos, b"ip1")
    ip2, pos = _field(line, pos, b"ip2")
    ports = line.startswith(b"port1=", pos)
    p1 = p2 = 0
    if ports:
        v, pos = _field(line, pos, b"port1")
        p1 = _decimal(v)
        v, pos = _field(line, pos, b"port2")
        p2 = _decimal(v)
    v, pos = _field(line, pos, b"hop")
    hop = _decimal(v)
    l3, pos = _field(line, pos, b"l3")
    l4, pos = _field(line, pos, b"l4")
    assert l3 in L3_TEXT and l4 in L4_TEXT, line
    assert ports == (l4 in (b"tcp", b"udp")), f"ports are written for TCP and UDP only: {line!r}"
    family = socket.AF_INET if l3 == b"ipv4" else socket.AF_INET6
    ev, pos = _field(line, pos, b"event")
    e = WireEvent(_addr(family, ip1), _addr(family, ip2), p1, p2, hop, l3.decode(), l4.decode(), "", "")
    if ev == b"DESTROYED":
        v, pos = _field(line, pos, b"reason")
        assert v.decode() in REASON.values(), line
        e.reason = v.decode()
    elif ev == b"DATA":
        v, pos = _field(line, pos, b"from")
        assert v in (b"1", b"2"), f"from=1|2 (`none` only for FROM_NONE, never on DATA): {line!r}"
        e.sender = int(v)
        v, pos = _field(line, pos, b"match")
        assert v.decode() in MATCH.values(), line
        e.match = v.decode()
        v, pos = _field(line, pos, b"len")
        e.length = _decimal(v)
    else:
        assert ev == b"CREATED", line
    e.event = ev.decode()
    t, pos = _field(line, pos, b"time")
    assert pos == len(line) + 1, f"nothing may follow time=: {line!r}"
    text = t.decode()
    assert text == f"{float(text):.17g}", f"time {text!r} is not lexical_cast<std::string>(double)"
    e.time = text
    if l4 in (b"icmp", b"icmpv6"):
        assert e.event == "DATA" and e.match == "none", f"ICMP: DATA with MATCH_NONE only: {line!r}"
    if l4 == b"tcp" and e.event == "DATA":
        assert e.length > 0, "TCP DATA is never empty (in_stream_event)"
    return e


def parse_text(stream: bytes, body: bool = True) -> list[WireEvent]:
    """A text interface stream: header lines, DATA bodies after them when `body: yes`."""
    out = []
    pos = 0
    while pos < len(stream):
        nl = stream.index(b"\n", pos)
        e = parse_text_line(stream[pos:nl])
        pos = nl + 1
        if e.event == "DATA" and e.length > 0 and body:
            e.body = stream[pos : pos + e.length]
            assert len(e.body) == e.length, "truncated body"
            pos += e.length
        out.append(e)
    return out


def parse_binary(stream: bytes, body: bool = True) -> list[WireEvent]:
    """A binary interface stream: 64-byte fabs_appif_header, then `len` body bytes on DATA."""
    assert HEADER.size == 64
    out = []
    pos = 0
    while pos < len(stream):
        assert len(stream) - pos >= 64, "truncated header"
        a1, a2, sec, usec, p1, p2, ev, frm, length, hop, l3, l4, match, reason, tail = HEADER.unpack_from(
            stream, pos
        )
        pos += 64
        assert tail == b"\0\0\0", f"bytes 61..63 are never written by SF-TAP (memset 0): {tail!r}"
        assert 0 <= usec < 1_000_000 and sec >= 0
        assert l3 in (0, 41) and l4 in L4_NAME, (l3, l4)
        if l3 == 0:
            assert a1[4:] == bytes(12) and a2[4:] == bytes(12), "IPv4 in b32, the rest zero"
            ip1, ip2 = socket.inet_ntop(socket.AF_INET, a1[:4]), socket.inet_ntop(socket.AF_INET, a2[:4])
        else:
            ip1, ip2 = socket.inet_ntop(socket.AF_INET6, a1), socket.inet_ntop(socket.AF_INET6, a2)
        port1, port2 = int.from_bytes(p1, "big"), int.from_bytes(p2, "big")
        if l4 in (1, 58):
            assert port1 == port2 == 0, "ICMP: fabs_id::set_iph reads no ports"
        assert (a1, p1) <= (a2, p2), "addr1 is the smaller fabs_peer (memcmp)"
        kind = EVENTS[ev]
        e = WireEvent(
            ip1, ip2, port1, port2, hop, "ipv4" if l3 == 0 else "ipv6", L4_NAME[l4], kind,
            sftap_time(sec, usec), sec, usec, length=length, match=MATCH[match],
        )  # fmt: skip
        if kind == "DATA":
            assert frm in (FROM_ADDR1, FROM_ADDR2) and reason == 0, (frm, reason)
            e.sender = frm + 1
            if body:
                e.body = stream[pos : pos + length]
                assert len(e.body) == length, "truncated body"
                pos += length
        else:
            assert length == 0 and match == 2, "CREATED / DESTROYED: len 0, MATCH_NONE"
            if kind == "CREATED":
                assert frm in (FROM_ADDR1, FROM_ADDR2) and reason == 0, (frm, reason)
                e.sender = frm + 1
            else:
                assert frm == FROM_NONE, f"DESTROYED: FROM_NONE, got {frm}"
                e.reason = REASON[reason]
        if l4 in (1, 58):
            assert kind == "DATA" and e.match == "none", "ICMP: DATA with MATCH_NONE only"
        out.append(e)
    return out
