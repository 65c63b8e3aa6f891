"""Message framing for IPFIX (RFC 7011), NetFlow v9 (RFC 3954) and NetFlow v5: headers and set walking."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from celltap.ipfix.errors import MalformedError
from celltap.ipfix.template import Template, make_fields

IPFIX_VERSION = 10
V9_VERSION = 9
V5_VERSION = 5
IPFIX_HEADER = struct.Struct("!HHIII")  # version, length, exportTime, sequence, observation domain
V9_HEADER = struct.Struct("!HHIIII")  # version, count, sysUptime, unixSecs, sequence, source id
# version, count, uptime, secs, nsecs, flow sequence, engine type, engine id, sampling
V5_HEADER = struct.Struct("!HHIIIIBBH")
SET_HEADER = struct.Struct("!HH")
V5_RECORD_LENGTH = 48
V5_MAX_COUNT = 30


@dataclass(frozen=True, slots=True)
class Header:
    """What the collector needs from any message header."""

    version: int
    length: int  # bytes of this message that belong to it
    export_time: int  # seconds since epoch
    sequence: int
    domain: int
    uptime_ms: int = 0  # v9 / v5 sysUptime
    sampling: int = 0  # v5 header sampling interval (0 = unsampled)


def parse_header(buf: bytes | memoryview) -> Header:
    """Parse and validate the header of one IPFIX / v9 / v5 message."""
    if len(buf) < 4:
        raise MalformedError("truncated_header", f"{len(buf)} bytes")
    (version,) = struct.unpack_from("!H", buf, 0)
    if version == IPFIX_VERSION:
        if len(buf) < IPFIX_HEADER.size:
            raise MalformedError("truncated_header", f"IPFIX header needs 16 bytes, got {len(buf)}")
        _, length, etime, seq, odid = IPFIX_HEADER.unpack_from(buf, 0)
        if length < IPFIX_HEADER.size or length > len(buf):
            raise MalformedError("bad_length", f"IPFIX message length {length}, datagram {len(buf)}")
        return Header(version, length, etime, seq, odid)
    if version == V9_VERSION:
        if len(buf) < V9_HEADER.size:
            raise MalformedError("truncated_header", f"v9 header needs 20 bytes, got {len(buf)}")
        _, _count, uptime, secs, seq, source = V9_HEADER.unpack_from(buf, 0)
        return Header(version, len(buf), secs, seq, source, uptime)
    if version == V5_VERSION:
        if len(buf) < V5_HEADER.size:
            raise MalformedError("truncated_header", f"v5 header needs 24 bytes, got {len(buf)}")
        _, count, uptime, secs, _ns, seq, etype, eid, samp = V5_HEADER.unpack_from(buf, 0)
        if count > V5_MAX_COUNT or V5_HEADER.size + count * V5_RECORD_LENGTH > len(buf):
            raise MalformedError("bad_length", f"v5 count {count} in {len(buf)} bytes")
        return Header(
            version,
            V5_HEADER.size + count * V5_RECORD_LENGTH,
            secs,
            seq,
            (etype << 8) | eid,
            uptime,
            samp & 0x3FFF,
        )
    raise MalformedError("bad_version", f"version {version}")


def split_sets(buf: bytes | memoryview, start: int, end: int, v9: bool = False) -> list[tuple[int, int, int]]:
    """(set id, payload start, payload end) for each set between start and end."""
    out = []
    pos = start
    while end - pos >= 4:
        sid, slen = SET_HEADER.unpack_from(buf, pos)
        if slen < 4:
            if v9 and not any(bytes(buf[pos:end])):
                break  # zero padding after the last flowset
            raise MalformedError("bad_set_length", f"set {sid} length {slen}")
        if pos + slen > end:
            raise MalformedError("set_past_message", f"set {sid} length {slen} runs past the message")
        out.append((sid, pos + 4, pos + slen))
        pos += slen
    if pos != end and not v9:
        raise MalformedError("trailing_bytes", f"{end - pos} bytes after the last set")
    return out


def v5_template() -> Template:
    """NetFlow v5's fixed record layout as a template of IANA elements (id 0, never on the wire)."""
    specs = [
        (8, 4),
        (12, 4),
        (15, 4),
        (10, 2),
        (14, 2),
        (2, 4),
        (1, 4),
        (22, 4),
        (21, 4),
        (7, 2),
        (11, 2),
        (210, 1),
        (6, 1),
        (4, 1),
        (5, 1),
        (16, 2),
        (17, 2),
        (9, 1),
        (13, 1),
        (210, 2),
    ]
    return Template(0, make_fields([(e, ln, 0) for e, ln in specs]))


V5_TEMPLATE = v5_template()


def message_lengths(buf: bytes | memoryview) -> int | None:
    """For a TCP stream: total length of the IPFIX message starting at buf[0], or None if unknown yet."""
    if len(buf) < 4:
        return None
    version, length = struct.unpack_from("!HH", buf, 0)
    if version != IPFIX_VERSION:
        raise MalformedError("bad_version", f"version {version} on an IPFIX stream")
    if length < IPFIX_HEADER.size:
        raise MalformedError("bad_length", f"IPFIX message length {length}")
    return length


class StreamFramer:
    """Sans-IO splitter of an IPFIX byte stream (TCP, RFC 7011 section 10.4) into messages."""

    def __init__(self, max_buffer: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max = max_buffer

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the complete messages now available."""
        self._buf += data
        out = []
        while True:
            length = message_lengths(self._buf)
            if length is None or len(self._buf) < length:
                break
            out.append(bytes(self._buf[:length]))
            del self._buf[:length]
        if len(self._buf) > self._max:
            raise MalformedError("stream_overflow", f"{len(self._buf)} bytes buffered without a message")
        return out

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buf)
