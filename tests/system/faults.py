"""Faults caused for real: damaged frames in a capture, bad IPFIX sent to a collector."""

from __future__ import annotations

import random
import socket
import struct
import time
from pathlib import Path

from celltap.loadgen.link import Link
from celltap.loadgen.tcpconv import TcpConversation

from celltap.pcap import read_all
from celltap.pcap.writer import PcapWriter

# Ethernet + an IPv4 header cut after 10 of its 20 bytes: every decoder must call it truncated.
TRUNCATED_IPV4 = (
    bytes(6) + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + b"\x45\x00\x00\x28\x00\x01\x00\x00\x40\x06"
)


def bad_http_flow(start_ns: int) -> list[tuple[int, bytes]]:
    """A complete TCP flow whose HTTP request has a line that is not a header (a parse error)."""
    link = Link(
        b"\x02\x00\x00\x00\x00\x07",
        b"\x02\x00\x00\x00\x00\x08",
        bytes((10, 99, 0, 1)),
        bytes((192, 0, 2, 99)),
    )
    conv = TcpConversation(link, 40001, 80, random.Random(7), start_ns=start_ns)
    conv.handshake()
    conv.send(True, b"GET / HTTP/1.1\r\nHost: bad.example\r\nthis line is not a header\r\n\r\n")
    conv.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    conv.fin(True)
    return conv.frames


def append_faults(src: Path, dst: Path, truncated: int) -> int:
    """Copy `src` to `dst`, then add `truncated` truncated IPv4 frames and one malformed HTTP flow."""
    batches = read_all(str(src))
    last = max(int(b.ts_ns.max()) for b in batches if len(b))
    n = 0
    with PcapWriter(str(dst), linktype=batches[0].linktype, nanosecond=True) as w:
        for b in batches:
            w.write_batch(b)
            n += len(b)
        for i in range(truncated):
            w.write(last + 1000 * (i + 1), TRUNCATED_IPV4)
            n += 1
        for ts, frame in bad_http_flow(last + 1_000_000):
            w.write(ts, frame)
            n += 1
    return n


def _ipfix(seq: int, odid: int, sets: list[bytes]) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), int(time.time()), seq, odid) + body


def _set(set_id: int, payload: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(payload)) + payload


def send_bad_ipfix(port: int, odid: int = 77, seq0: int = 0) -> None:
    """Send, from one exporter: a template + 1 record, a message skipping 49 records (sequence loss),
    a data set whose template was never sent, and a datagram that is not IPFIX at all.

    A labelled counter appears at its first event already at 1, so Prometheus sees no increase
    until a second round (seq0 past the first round's numbers) raises it again."""
    template = _set(2, struct.pack("!HHHH", 256, 1, 8, 4))  # template 256: sourceIPv4Address
    record = socket.inet_aton("192.0.2.7")
    msgs = [
        _ipfix(seq0, odid, [template, _set(256, record)]),
        _ipfix(seq0 + 50, odid, [_set(256, record)]),
        _ipfix(seq0 + 51, odid, [_set(999, record)]),
        b"not an IPFIX message",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for m in msgs:
            s.sendto(m, ("127.0.0.1", port))
            time.sleep(0.05)
