"""Fuzz the L7 loopback input: any bytes a loopback writer could send, in either format.

Input: byte 0 = mode (bit 0: binary format), byte 1 = where to split the stream in two feeds. The
parser (cell/loopback_input.py) must never raise, must give the same injections and drop counts
however the stream is split, must hold no more than one header plus `max_len` bytes, and every
injection it returns must be one the abstractor accepts without error: each goes into a real
Abstractor (its flow path, hop limit, classification), which must not raise either.
"""

from __future__ import annotations

from celltap.cell.abstractor import Abstractor
from celltap.cell.loopback_input import MAX_HEADER_LINE, LoopbackParser
from celltap.cell.sdk.binary_format import encode_binary
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId
from celltap.cell.sdk.text_format import encode_text
from celltap.cell.sftap_config import parse_config

# Vectorised code compares numpy arrays: fuzz/run.py keeps those comparisons out of atheris's hook,
# which leaks on each (kilobytes per input here, an out-of-memory within a long run).
ARRAY_COMPARES = True

MAX_LEN = 4096
_CONFIG = {
    "global": {"hop_limit": 3},
    "http": {"proto": "TCP", "up": "^GET", "down": "^HTTP", "if": "http"},
    "tcp_default": {"if": "default", "proto": "TCP"},
    "udp_default": {"if": "udp", "proto": "UDP"},
    "icmp": {"if": "icmp"},
}
_ABSTRACTOR: Abstractor | None = None


class Inconsistent(AssertionError):
    """The parser's result depends on how the stream was split, or it holds too much."""


def _parse(fmt: str, parts: list[bytes]) -> tuple[list, dict]:
    p = LoopbackParser(fmt, MAX_LEN)
    out = []
    for part in parts:
        out += p.feed(part)
        if len(p._buf) > MAX_HEADER_LINE + MAX_LEN + 64:
            raise Inconsistent(f"parser holds {len(p._buf)} bytes")
    return out, dict(p.drops)


def test_one_input(data: bytes) -> None:
    """Parse whole and split; compare; inject the events into an abstractor."""
    global _ABSTRACTOR
    if len(data) < 2:
        return
    fmt = "binary" if data[0] & 1 else "text"
    stream = data[2:]
    cut = data[1] * len(stream) // 256
    whole = _parse(fmt, [stream])
    split = _parse(fmt, [stream[:cut], stream[cut:]])
    if whole != split:
        raise Inconsistent(f"split at {cut} gives {split[1]} / {len(split[0])} events, whole {whole[1]}")
    if _ABSTRACTOR is None:
        _ABSTRACTOR = Abstractor(parse_config(_CONFIG))
    a = _ABSTRACTOR
    for e in whole[0]:
        a.inject(e.event, e.l3, e.l4, e.a1, e.p1, e.a2, e.p2, e.hop, e.sender or 1, e.data, e.time_ns or 1)
    a.finish()
    a.take_ended()
    for sink in a.sinks.values():
        sink.take()


def seeds() -> list[bytes]:
    """Loopback streams of a TCP and a UDP flow in both formats (CREATED, DATA both ways, DESTROYED)."""
    out = []
    for fmt, enc in (("text", encode_text), ("binary", encode_binary)):
        for l4, port in (("tcp", 80), ("udp", 53)):
            flow = FlowId("10.0.0.1", "10.0.0.2", 40000, port, 0, "ipv4", l4)
            flow6 = FlowId("2001:db8::1", "2001:db8::2", 40000, port, 1, "ipv6", l4)
            t = 1_700_000_000.25
            s = b""
            for f in (flow, flow6):
                s += enc(f, CREATED, t)
                s += enc(f, DATA, t, 1, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "up")
                s += enc(f, DATA, t, 2, b"HTTP/1.1 200 OK\r\n\r\n", "down")
                s += enc(f, DESTROYED, t)
            out.append(bytes((1 if fmt == "binary" else 0, 128)) + s)
    return out
