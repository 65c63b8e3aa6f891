"""Strict parsers of the cell's interface formats, written from the SF-TAP paper and fabs_appif_header.

tests/cell/sftap_wire.py is the stricter, byte-exact reading of SF-TAP's source; this one keeps the
simple Event shape the scenario tests use.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

TEXT_HEADER = re.compile(
    rb"ip1=(?P<ip1>[0-9a-f.:]+),ip2=(?P<ip2>[0-9a-f.:]+),(?:port1=(?P<port1>\d+),port2=(?P<port2>\d+),)?"
    rb"hop=(?P<hop>\d+),l3=(?P<l3>ipv4|ipv6),l4=(?P<l4>tcp|udp|icmp|icmpv6),"
    rb"event=(?P<event>CREATED|DATA|DESTROYED)"
    rb"(?:,from=(?P<from>[12]),match=(?P<match>up|down|none),len=(?P<len>\d+))?"
    rb"(?:,reason=(?P<reason>NORMAL|RESET|TIMEOUT|COMPROMISED))?"
    rb",time=(?P<time>\d+(?:\.\d+)?)"  # SF-TAP: %.17g of the timeval as a double
)
# SF-TAP fabs_appif_header: addr1[16] addr2[16] timeval(2 x int64) port1 port2 (BE) event from len hop l3 l4
# match, unused[4] (celltap: reason in unused[0])
BIN = struct.Struct("<16s16sqq2s2sBBHBBBBB3s")


@dataclass
class Event:
    """One parsed interface event."""

    flow: tuple  # (ip1, port1, ip2, port2, hop, l3, l4)
    event: str
    sender: int = 0
    match: str = "none"
    reason: str = ""
    time: float = 0.0
    data: bytes = b""


def parse_text(stream: bytes, body: bool = True) -> list[Event]:
    """Parse a text interface stream; raises AssertionError on any deviation from the format."""
    out = []
    pos = 0
    while pos < len(stream):
        nl = stream.index(b"\n", pos)
        line = stream[pos:nl]
        m = TEXT_HEADER.fullmatch(line)
        assert m, f"bad header line {line!r}"
        g = m.groupdict()
        pos = nl + 1
        ev = g["event"].decode()
        assert (g["port1"] is not None) == (g["l4"] in (b"tcp", b"udp")), f"ports: TCP / UDP only: {line!r}"
        assert g["time"].decode() == f"{float(g['time']):.17g}", f"time not as SF-TAP prints it: {line!r}"
        assert (g["from"] is not None) == (ev == "DATA"), line
        assert (g["reason"] is not None) == (ev == "DESTROYED"), line
        flow = (
            g["ip1"].decode(),
            int(g["port1"] or 0),
            g["ip2"].decode(),
            int(g["port2"] or 0),
            int(g["hop"]),
            g["l3"].decode(),
            g["l4"].decode(),
        )
        e = Event(flow, ev, time=float(g["time"]))
        if ev == "DATA":
            e.sender = int(g["from"])
            e.match = g["match"].decode()
            n = int(g["len"])
            if body:
                e.data = stream[pos : pos + n]
                assert len(e.data) == n, "truncated body"
                pos += n
        elif ev == "DESTROYED":
            e.reason = g["reason"].decode()
        out.append(e)
    return out


def parse_binary(stream: bytes, body: bool = True) -> list[Event]:
    """Parse a binary interface stream (64-byte SF-TAP headers)."""
    assert BIN.size == 64
    out = []
    pos = 0
    l3n = {0: "ipv4", 41: "ipv6"}
    l4n = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}
    evn = {0: "CREATED", 1: "DESTROYED", 2: "DATA"}
    matchn = {0: "up", 1: "down", 2: "none"}
    reasonn = {0: "NORMAL", 1: "RESET", 2: "TIMEOUT", 3: "COMPROMISED"}
    while pos < len(stream):
        a1, a2, sec, usec, p1, p2, ev, frm, length, hop, l3, l4, match, reason, pad = BIN.unpack_from(
            stream, pos
        )
        pos += 64
        assert pad == b"\0\0\0"
        assert 0 <= usec < 1_000_000
        l3s = l3n[l3]
        if l3s == "ipv4":
            assert a1[4:] == bytes(12) and a2[4:] == bytes(12)
            ip1, ip2 = str(ipaddress.IPv4Address(a1[:4])), str(ipaddress.IPv4Address(a2[:4]))
        else:
            ip1, ip2 = str(ipaddress.IPv6Address(a1)), str(ipaddress.IPv6Address(a2))
        flow = (ip1, int.from_bytes(p1, "big"), ip2, int.from_bytes(p2, "big"), hop, l3s, l4n[l4])
        e = Event(flow, evn[ev], time=sec + usec / 1e6, match=matchn[match])
        if e.event == "DATA":
            assert frm in (0, 1)
            e.sender = frm + 1
            if body:
                e.data = stream[pos : pos + length]
                assert len(e.data) == length
                pos += length
        else:
            assert length == 0
            if e.event == "DESTROYED":
                e.reason = reasonn[reason]
        out.append(e)
    return out


def streams(events: list[Event]) -> dict[tuple, tuple[bytes, bytes]]:
    """Concatenated DATA per flow: {flow: (bytes from endpoint 1, bytes from endpoint 2)}."""
    out: dict[tuple, list[bytearray]] = {}
    for e in events:
        if e.event == "DATA":
            out.setdefault(e.flow, [bytearray(), bytearray()])[e.sender - 1] += e.data
    return {k: (bytes(v[0]), bytes(v[1])) for k, v in out.items()}
