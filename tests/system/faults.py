"""Faults caused for real: damaged frames in a capture, bad IPFIX sent to a collector."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from celltap.pcap import read_all
from celltap.pcap.writer import PcapWriter

# Ethernet + an IPv4 header cut after 10 of its 20 bytes: every decoder must call it truncated.
TRUNCATED_IPV4 = (
    bytes(6) + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + b"\x45\x00\x00\x28\x00\x01\x00\x00\x40\x06"
)


def append_damaged_frames(src: Path, dst: Path, count: int) -> int:
    """Copy `src` to `dst` with `count` truncated IPv4 frames at the end; frames written."""
    batches = read_all(str(src))
    last = max(int(b.ts_ns.max()) for b in batches if len(b))
    n = 0
    with PcapWriter(str(dst), linktype=batches[0].linktype, nanosecond=True) as w:
        for b in batches:
            w.write_batch(b)
            n += len(b)
        for i in range(count):
            w.write(last + 1000 * (i + 1), TRUNCATED_IPV4)
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
