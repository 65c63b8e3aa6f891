"""Encoders of SF-TAP interface events (text and binary), sans-IO: flow identity + event -> bytes.

Byte for byte what SF-TAP's flow abstractor writes (fabs_appif.cpp, fabs_appif::write_event;
tests/cell/sftap_wire.py parses it the way that code writes it).

Text (one header line, then `len` body bytes for DATA when `body: yes`):
    ip1=A,ip2=B,port1=P,port2=Q,hop=H,l3=ipv4,l4=tcp,event=CREATED,time=T
    ...,event=DATA,from=1|2,match=up|down|none,len=N,time=T
    ...,event=DESTROYED,reason=NORMAL|RESET|TIMEOUT|COMPROMISED,time=T
ICMP and ICMPv6 headers have no port1/port2 (write_event prints ports for TCP and UDP only). T is
SF-TAP's `boost::lexical_cast<std::string>(tv_sec + tv_usec * 0.000001)`: the double printed with
"%.17g" (17 significant digits, trailing zeros dropped: 1449325525.8732619, 1449325525.873261).

Binary: SF-TAP's 64-byte `fabs_appif_header` (packed, x86-64): addr1[16], addr2[16], tv_sec int64 LE,
tv_usec int64 LE, port1 u16 BE, port2 u16 BE, event u8 (0 CREATED, 1 DESTROYED, 2 DATA), from u8
(FROM_ADDR1 0, FROM_ADDR2 1, FROM_NONE 3), len u16 LE, hop u8, l3 u8 (0 IPv4, 41 IPv6), l4 u8, match u8
(0 up, 1 down, 2 none), reason u8 (0 NORMAL, 1 RESET, 2 TIMEOUT, 3 COMPROMISED), 3 zero bytes.
`from` is the id_dir of the call: on DATA the sender; on CREATED the side whose data completed the
classification (send_tcp_data's argument); on DESTROYED FROM_NONE (fabs_tcp::input_tcp_event).
`len` is 16 bits, so DATA longer than 65535 bytes is split into several events.
"""

from __future__ import annotations

import socket
import struct

MAX_EVENT_DATA = 0xFFFF

MATCH_UP, MATCH_DOWN, MATCH_NONE = 0, 1, 2
MATCH_NAMES = (b"up", b"down", b"none")

REASON_NORMAL, REASON_RESET, REASON_TIMEOUT, REASON_COMPROMISED = 0, 1, 2, 3
REASON_NAMES = ("NORMAL", "RESET", "TIMEOUT", "COMPROMISED")
_REASON_B = tuple(r.encode() for r in REASON_NAMES)

L3_NAMES = {4: "ipv4", 6: "ipv6"}
L3_CODES = {4: 0, 6: 41}
L4_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}

_TV = struct.Struct("<qq")
_TAIL = struct.Struct("<BBHBBBBB3x")
FROM_NONE = 3


_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
_ntop = socket.inet_ntop
_TEXT_TAIL = {
    (l3, l4): f",l3={n3},l4={n4},event=" for l3, n3 in L3_NAMES.items() for l4, n4 in L4_NAMES.items()
}


# servers recur across flows: their text is made once (one table per IP version)
_ADDR_TEXT: dict[int, dict[bytes, str]] = {4: {}, 6: {}}
_ADDR_TEXT_MAX = 1 << 16


def _addr_miss(l3: int, addr: bytes) -> str:
    known = _ADDR_TEXT[l3]
    t = _ntop(_AF4, addr[:4]) if l3 == 4 else _ntop(_AF6, addr[:16])
    if len(known) >= _ADDR_TEXT_MAX:
        known.clear()
    known[addr] = t
    return t


def text_prefix(l3: int, l4: int, addr1: bytes, port1: int, addr2: bytes, port2: int, hop: int) -> bytes:
    """The text header up to `event=`, shared by every event of one flow."""
    known = _ADDR_TEXT[l3]
    a = known.get(addr1) or _addr_miss(l3, addr1)
    b = known.get(addr2) or _addr_miss(l3, addr2)
    tail = _TEXT_TAIL.get((l3, l4))
    if tail is None:
        tail = f",l3={L3_NAMES[l3]},l4={L4_NAMES.get(l4, str(l4))},event="
    if l4 == 6 or l4 == 17:
        return f"ip1={a},ip2={b},port1={port1},port2={port2},hop={hop}{tail}".encode()
    return f"ip1={a},ip2={b},hop={hop}{tail}".encode()  # ICMP: SF-TAP prints ports for TCP / UDP only


class WireId:
    """Per-flow precomputed header pieces of one format, so each event costs one format and one join."""

    __slots__ = ("bin_addrs", "bin_ports", "hop", "l3code", "l4", "text_prefix")

    def __init__(
        self,
        l3: int,
        l4: int,
        addr1: bytes,
        port1: int,
        addr2: bytes,
        port2: int,
        hop: int,
        fmt: str = "text",
    ) -> None:
        self.hop = hop
        self.l4 = l4
        self.l3code = L3_CODES[l3]
        if fmt == "text":
            self.text_prefix = text_prefix(l3, l4, addr1, port1, addr2, port2, hop)
            self.bin_addrs = self.bin_ports = b""
        else:
            self.text_prefix = b""
            self.bin_addrs = addr1.ljust(16, b"\0") + addr2.ljust(16, b"\0")
            self.bin_ports = struct.pack(">HH", port1, port2)


def _ts_text(ts_ns: int) -> bytes:
    """SF-TAP's time: the double tv_sec + tv_usec * 0.000001, printed with %.17g (lexical_cast)."""
    us = ts_ns // 1000
    return b"%.17g" % (us // 1_000_000 + us % 1_000_000 * 0.000001)


def text_created(w: WireId, ts_ns: int) -> bytes:
    """CREATED header line."""
    return w.text_prefix + b"CREATED,time=" + _ts_text(ts_ns) + b"\n"


def text_destroyed(w: WireId, reason: int, ts_ns: int) -> bytes:
    """DESTROYED header line."""
    name = REASON_NAMES[reason].encode()
    return b"%sDESTROYED,reason=%s,time=%s\n" % (w.text_prefix, name, _ts_text(ts_ns))


def text_whole_flow(
    prefix: bytes,
    start_ns: int,
    sender: int,
    match: int,
    data: bytes,
    data_ts_ns: int,
    end_ns: int,
    reason: int,
    body: bool,
) -> list[bytes]:
    """CREATED, one DATA (when `data` is not empty) and DESTROYED of a flow, as interface bytes.

    `data` fits one DATA event (at most MAX_EVENT_DATA bytes).
    """
    t_data = _ts_text(data_ts_ns) if data else b""
    return text_whole_flow_at(
        prefix, _ts_text(start_ns), sender, match, data, t_data, _ts_text(end_ns), reason, body
    )


def text_whole_flow_at(
    prefix: bytes,
    t_start: bytes,
    sender: int,
    match: int,
    data: bytes,
    t_data: bytes,
    t_end: bytes,
    reason: int,
    body: bool,
) -> list[bytes]:
    """`text_whole_flow` with its three times already as text (`_ts_text`, cell/event_times.py)."""
    if not data:
        r = _REASON_B[reason]
        return [b"%sCREATED,time=%s\n%sDESTROYED,reason=%s,time=%s\n" % (prefix, t_start, prefix, r, t_end)]
    head = b"%sCREATED,time=%s\n%sDATA,from=%d,match=%s,len=%d,time=%s\n" % (
        prefix,
        t_start,
        prefix,
        sender,
        MATCH_NAMES[match],
        len(data),
        t_data,
    )
    tail = b"%sDESTROYED,reason=%s,time=%s\n" % (prefix, _REASON_B[reason], t_end)
    return [head, data, tail] if body else [head, tail]


def text_data(
    out: list[bytes], w: WireId, sender: int, match: int, data: bytes, ts_ns: int, body: bool
) -> int:
    """Append DATA event(s) to `out`; return the number of events."""
    n = len(data)
    if n <= MAX_EVENT_DATA:
        out.append(
            b"%sDATA,from=%d,match=%s,len=%d,time=%s\n"
            % (w.text_prefix, sender, MATCH_NAMES[match], n, _ts_text(ts_ns))
        )
        if body:
            out.append(data)
        return 1
    count = 0
    for pos in range(0, n, MAX_EVENT_DATA):
        count += text_data(out, w, sender, match, data[pos : pos + MAX_EVENT_DATA], ts_ns, body)
    return count


def _bin_head(w: WireId, event: int, sender: int, length: int, match: int, reason: int, ts_ns: int) -> bytes:
    us = ts_ns // 1000
    return (
        w.bin_addrs
        + _TV.pack(us // 1_000_000, us % 1_000_000)
        + w.bin_ports
        + _TAIL.pack(event, sender, length, w.hop, w.l3code, w.l4, match, reason)
    )


def binary_created(w: WireId, ts_ns: int, sender: int = 0) -> bytes:
    """CREATED header; `sender` (1 or 2) is the side whose data completed the classification, 0 none."""
    return _bin_head(w, 0, sender - 1 if sender else FROM_NONE, 0, MATCH_NONE, 0, ts_ns)


def binary_destroyed(w: WireId, reason: int, ts_ns: int) -> bytes:
    """DESTROYED header."""
    return _bin_head(w, 1, FROM_NONE, 0, MATCH_NONE, reason, ts_ns)


def binary_data(
    out: list[bytes], w: WireId, sender: int, match: int, data: bytes, ts_ns: int, body: bool
) -> int:
    """Append DATA event(s) to `out`; return the number of events."""
    n = len(data)
    count = 0
    for pos in range(0, max(n, 1), MAX_EVENT_DATA):
        chunk = data[pos : pos + MAX_EVENT_DATA]
        out.append(_bin_head(w, 2, sender - 1, len(chunk), match, 0, ts_ns))
        if body:
            out.append(chunk)
        count += 1
    return count
