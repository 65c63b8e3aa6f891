"""Fuzz the SF-TAP interface formats as the analyzer side reads them (cell/sdk text and binary decoders).

Input: byte 0 = mode (bit 0: binary, bit 1: a `body: no` interface), byte 1 = where to split the
stream in two feeds. A decoder may refuse a stream only with WireError (a ValueError naming the
damage); anything else escaping is a finding. When the whole stream decodes, feeding it in two
pieces must give the same events (the decoders' contract: "any split of the stream"), and every
event must be well-formed (a known kind, a sender of 1 or 2 for DATA, data no longer than announced).
"""

from __future__ import annotations

from celltap.cell.sdk.binary_format import BinaryDecoder, encode_binary
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId, WireError
from celltap.cell.sdk.text_format import TextDecoder, encode_text


class Inconsistent(AssertionError):
    """The decoders' result depends on the split, or an event is malformed."""


def _decode(binary: bool, body: bool, parts: list[bytes]) -> list[tuple] | None:
    dec = BinaryDecoder(body) if binary else TextDecoder(body)
    out = []
    try:
        for part in parts:
            for e in dec.feed(part):
                out.append((e.event, e.flow, e.time, e.sender, bytes(e.data), e.match, e.reason))
    except WireError:
        return None
    return out


def test_one_input(data: bytes) -> None:
    """Decode whole and split; compare; check every event."""
    if len(data) < 2:
        return
    binary, body = bool(data[0] & 1), not data[0] & 2
    stream = data[2:]
    cut = data[1] * len(stream) // 256
    whole = _decode(binary, body, [stream])
    split = _decode(binary, body, [stream[:cut], stream[cut:]])
    if whole is None:
        return
    if split != whole:
        raise Inconsistent(f"split at {cut}: {len(split or [])} events vs {len(whole)} whole")
    for kind, _flow, _t, sender, payload, _m, _r in whole:
        if kind not in (CREATED, DATA, DESTROYED):
            raise Inconsistent(f"event kind {kind!r}")
        if kind == DATA and sender not in (1, 2):
            raise Inconsistent(f"DATA from {sender!r}")
        if payload and not body:
            raise Inconsistent("a body: no interface produced data")


def seeds() -> list[bytes]:
    """Streams of TCP, UDP and ICMP flows (IPv4 and IPv6) in both formats, with and without bodies."""
    out = []
    flows = [
        FlowId("10.0.0.1", "10.0.0.2", 40000, 80, 0, "ipv4", "tcp"),
        FlowId("2001:db8::1", "2001:db8::2", 5353, 53, 1, "ipv6", "udp"),
        FlowId("10.0.0.1", "10.0.0.9", 0, 0, 0, "ipv4", "icmp"),
    ]
    for binary, enc in ((False, encode_text), (True, encode_binary)):
        for body in (True, False):
            s = b""
            for f in flows:
                t = 1_700_000_000.5
                s += enc(f, CREATED, t)
                for sender, payload in (
                    (1, b"GET / HTTP/1.1\r\n\r\n"),
                    (2, b"HTTP/1.1 204 No Content\r\n\r\n"),
                ):
                    ev = enc(f, DATA, t, sender, payload, "up" if sender == 1 else "down")
                    s += ev if body else ev[: len(ev) - len(payload)]
                s += enc(f, DESTROYED, t, reason="RESET")
            out.append(bytes(((1 if binary else 0) | (0 if body else 2), 100)) + s)
    return out
