"""SF-TAP binary interface format (64-byte header + body): sans-IO decoder and encoder.

Layout, following SF-TAP's `fabs_appif_header` (flow-abstractor, x86-64, packed, 64 bytes):

    0  addr1[16]   IPv4 in the first 4 bytes, rest zero; IPv6 all 16
    16 addr2[16]
    32 tv_sec      int64 little-endian  (struct timeval, machine order)
    40 tv_usec     int64 little-endian
    48 port1       uint16 big-endian
    50 port2       uint16 big-endian
    52 event       uint8  0 CREATED, 1 DESTROYED, 2 DATA
    53 from        uint8  0 = endpoint 1, 1 = endpoint 2, 3 = none (SF-TAP's FROM_ADDR1 / 2 / FROM_NONE):
                          DATA: the sender; CREATED: the side whose data completed the classification;
                          DESTROYED: 3
    54 len         uint16 little-endian (machine order)
    56 hop         uint8
    57 l3          uint8  IPPROTO_IP (0) for IPv4, IPPROTO_IPV6 (41)
    58 l4          uint8  6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6
    59 match       uint8  0 up, 1 down, 2 none
    60 reason      uint8  0 NORMAL, 1 RESET, 2 TIMEOUT, 3 COMPROMISED (SF-TAP's unused[0])
    61 padding[3]

Framing is by `len` alone, so a header whose fields are bad (an unknown event or l3 code, `from` not
0 or 1 on DATA) costs only its own event: it is counted in `dropped` by reason and its body skipped.
Nothing the peer sends raises.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter

from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, MAX_CACHED_FLOWS, Event, FlowId, WireError

MAX_TIME = 1e11  # seconds since the epoch: larger or negative times are a bad header
HEADER = struct.Struct("<16s16sqqHHBBHBBBBB3x")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 64

EVENT_CODES = {CREATED: 0, DESTROYED: 1, DATA: 2}
_EVENTS = {v: k for k, v in EVENT_CODES.items()}
MATCH_CODES = {"up": 0, "down": 1, "none": 2}
_MATCHES = {v: k for k, v in MATCH_CODES.items()}
REASON_CODES = {"NORMAL": 0, "RESET": 1, "TIMEOUT": 2, "COMPROMISED": 3}
_REASONS = {v: k for k, v in REASON_CODES.items()}
L3_CODES = {"ipv4": 0, "ipv6": 41}
_L3 = {v: k for k, v in L3_CODES.items()}
L4_CODES = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
_L4 = {v: k for k, v in L4_CODES.items()}


def _flow_from_header(h: bytes) -> FlowId:
    l3 = _L3.get(h[57])
    if l3 is None:
        raise WireError(f"unknown l3 protocol {h[57]} in binary header")
    if l3 == "ipv4":
        ip1 = str(ipaddress.IPv4Address(h[0:4]))
        ip2 = str(ipaddress.IPv4Address(h[16:20]))
    else:
        ip1 = str(ipaddress.IPv6Address(h[0:16]))
        ip2 = str(ipaddress.IPv6Address(h[16:32]))
    port1, port2 = struct.unpack_from(">HH", h, 48)
    return FlowId(ip1, ip2, port1, port2, h[56], l3, _L4.get(h[58], str(h[58])))


class BinaryDecoder:
    """Turn the binary byte stream into Events; feed() may be called with any split of the stream.

    `body=False` reads a `body: no` interface: headers carry `len` but no bytes follow them.
    """

    def __init__(self, body: bool = True) -> None:
        self.body = body
        self._buf = bytearray()
        self._flows: dict[bytes, FlowId] = {}
        self.dropped: Counter[str] = Counter()  # bad headers by reason, drained by the owner

    def forget(self, key: bytes) -> None:
        """Drop the cached identity of a finished flow."""
        self._flows.pop(key, None)

    def feed(self, data: bytes) -> list[Event]:
        """Consume bytes and return every event completed by them."""
        buf = self._buf
        buf += data
        out: list[Event] = []
        pos = 0
        n = len(buf)
        unpack = HEADER.unpack_from
        flows = self._flows
        body = self.body
        while n - pos >= HEADER_SIZE:
            _a1, _a2, sec, usec, _p1, _p2, ev, frm, length, _hop, _l3, _l4, match, reason = unpack(buf, pos)
            size = length if body else 0  # the bytes that follow this header in the stream
            if n - pos - HEADER_SIZE < size:
                break
            head = bytes(buf[pos : pos + HEADER_SIZE])
            start = pos + HEADER_SIZE
            pos = start + size
            kind = _EVENTS.get(ev)
            if kind is None:
                self.dropped["unknown_event"] += 1
                continue
            if kind is DATA and frm > 1:
                self.dropped["bad_from"] += 1
                continue
            key = head[0:32] + head[48:52] + head[56:59]
            flow = flows.get(key)
            if flow is None:
                try:
                    flow = _flow_from_header(head)
                except WireError:
                    self.dropped["bad_l3"] += 1
                    continue
                if len(flows) >= MAX_CACHED_FLOWS:
                    flows.clear()  # UDP flows never end: bound the cache, re-parsing is cheap
                flows[key] = flow
            t = sec + usec * 1e-6
            if not 0.0 <= t < MAX_TIME:
                self.dropped["bad_time"] += 1
                continue
            if kind is DATA:
                out.append(
                    Event(
                        DATA,
                        key,
                        flow,
                        t,
                        frm + 1,
                        bytes(buf[start:pos]),
                        _MATCHES.get(match, "none"),
                        length=length,
                    )
                )
            else:
                out.append(
                    Event(kind, key, flow, t, reason=_REASONS.get(reason, "NORMAL") if ev == 1 else "")
                )
        del buf[:pos]
        return out


def encode_binary(
    flow: FlowId,
    event: str,
    time: float,
    sender: int = 0,
    data: bytes = b"",
    match: str = "none",
    reason: str = "NORMAL",
) -> bytes:
    """Encode one event in the binary format (the cell's job; used by tests, benches and replays)."""
    if flow.l3 == "ipv4":
        a1 = ipaddress.IPv4Address(flow.ip1).packed
        a2 = ipaddress.IPv4Address(flow.ip2).packed
    else:
        a1 = ipaddress.IPv6Address(flow.ip1).packed
        a2 = ipaddress.IPv6Address(flow.ip2).packed
    sec = int(time)
    usec = round((time - sec) * 1e6)
    if len(data) > 0xFFFF:
        raise ValueError("binary DATA events carry at most 65535 bytes; split the data")
    head = HEADER.pack(
        a1,
        a2,
        sec,
        usec,
        0,
        0,
        EVENT_CODES[event],
        sender - 1 if sender and event != DESTROYED else 3,
        len(data),
        flow.hop,
        L3_CODES[flow.l3],
        L4_CODES[flow.l4],
        MATCH_CODES[match],
        REASON_CODES.get(reason, 0) if event == DESTROYED else 0,
    )
    head = head[:48] + struct.pack(">HH", flow.port1, flow.port2) + head[52:]
    return head + (data if event == DATA else b"")
