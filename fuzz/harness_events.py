"""Fuzz the SF-TAP interface reader end to end: text or binary event bytes -> Session -> an analyzer.

This is what an analyzer process does with what it reads from a cell's socket: decode events (any
framing damage must cost only the damaged events), route them through the FlowTable, run the analyzer.
The FlowTable turns an analyzer exception into a counted drop; this harness's table re-raises it
instead, so analyzer bugs reached through the event path are findings, not hidden.
"""

from __future__ import annotations

import orjson
from celltap.cell.analyzers.registry import ANALYZERS
from celltap.cell.sdk.binary_format import encode_binary
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, Event, FlowId
from celltap.cell.sdk.flows import FlowTable
from celltap.cell.sdk.session import Session
from celltap.cell.sdk.text_format import encode_text

from fuzz.seed_streams import scenario_conversations

NAMES = sorted(ANALYZERS)
PORTS = {"dns": 53, "http": 80, "sip": 5060, "smtp": 25, "tls": 443}


class StrictTable(FlowTable):
    """A FlowTable that lets an analyzer's exception escape (the fuzzer reports it)."""

    def _failed(self, ev: Event, exc: Exception) -> None:
        raise exc


def test_one_input(data: bytes) -> None:
    """Mode byte: bit 0 binary format, bits 1-3 which analyzer, bit 4 a `body: no` interface, bit 5
    the socket front end's L7 loopback encoder (handed-on streams become loopback events)."""
    if len(data) < 3:
        return
    mode, split = data[0], data[1]
    fmt = "binary" if mode & 1 else "text"
    name = NAMES[((mode >> 1) & 7) % len(NAMES)]
    analyzer = ANALYZERS[name]()
    loopback = "text" if mode & 32 else None
    session = Session(
        analyzer, fmt, body=not mode & 16, table=StrictTable(analyzer), loopback_format=loopback
    )
    stream = data[2:]
    cut = split * len(stream) // 256  # feed in two pieces: the decoders must carry state across reads
    records = session.feed(stream[:cut]) + session.feed(stream[cut:]) + session.disconnected()
    session.take_loopback()
    for record in records:
        orjson.dumps(record)


def _stream(name: str, fmt: str) -> bytes:
    enc = encode_text if fmt == "text" else encode_binary
    out = []
    for proto, turns in scenario_conversations(name, 1):
        tcp = proto == 6
        flow = FlowId("10.0.0.1", "10.0.0.2", 40000, PORTS[name], 0, "ipv4", "tcp" if tcp else "udp")
        t = 1_700_000_000.0
        if tcp:
            out.append(enc(flow, CREATED, t))
        for from_client, payload in turns[:12]:  # small seeds keep the fuzzer fast: framing is the target
            t += 0.001
            out.append(enc(flow, DATA, t, 1 if from_client else 2, payload[:600]))
        if tcp:
            out.append(enc(flow, DESTROYED, t + 0.001))
    return b"".join(out)


BAD_TEXT = [
    b"ip1=10.0.0.1,ip2=10.0.0.2,port1=40000,port2=80,hop=0,l3=ipv4,l4=tcp,event=DATA,from,len=3\nabc",
    b"ip1=10.0.0.1,ip2=10.0.0.2,port1=40000,port2=80,hop=0,l3=ipv4,l4=tcp,event=DATA,from=0,match=up,"
    b"len=3,time=1.5\nabc",
    b"ip1=10.0.0.1,ip2=10.0.0.2,port1=40000,port2=80,hop=0,l3=ipv4,l4=tcp,event=DATA,from=3,match=up,"
    b"len=3,time=1.5\nabc",
    b"ip1=10.0.0.1,ip2,port1=40000,event=CREATED,time=1\n",
]


def seeds() -> list[bytes]:
    """Each analyzer's loadgen traffic in both formats, and the known bad text events before it."""
    out = []
    for i, name in enumerate(NAMES):
        for fmt_bit, fmt in ((0, "text"), (1, "binary")):
            stream = _stream(name, fmt)
            out.append(bytes([fmt_bit | i << 1, 128]) + stream)
            if fmt == "text":
                out += [bytes([i << 1, 100]) + bad + stream for bad in BAD_TEXT]
    return out
