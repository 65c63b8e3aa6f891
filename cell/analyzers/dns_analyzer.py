"""DNS analyzer: one record per message over UDP or TCP (2-byte length framing); the QR bit says who
the client is."""

from __future__ import annotations

import struct

from cell.analyzers.dns_message import DnsError, parse_message
from cell.analyzers.endpoints import endpoint
from cell.sdk.events import FlowId
from cell.sdk.flows import FlowAnalyzer

MAX_TCP_BUFFER = 65535 + 2


class DnsTcpFlow:
    """Length-prefixed DNS messages in each direction of a TCP flow."""

    __slots__ = ("analyzer", "bufs", "flow")

    def __init__(self, analyzer: DnsAnalyzer, flow: FlowId) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.bufs = {1: b"", 2: b""}

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        buf = self.bufs[sender] + data
        pos = 0
        while len(buf) - pos >= 2:
            (length,) = struct.unpack_from(">H", buf, pos)
            if len(buf) - pos - 2 < length:
                break
            self.analyzer.message(self.flow, sender, buf[pos + 2 : pos + 2 + length], time, "tcp")
            pos += 2 + length
        self.bufs[sender] = buf[pos:]

    def end(self, reason: str, time: float) -> None:
        """Count a message cut off by the end of the flow."""
        if any(self.bufs.values()):
            self.analyzer.error("truncated_tcp_message")


class DnsAnalyzer(FlowAnalyzer):
    """DNS over UDP (one datagram, one message) and TCP."""

    name = "dns"

    def stream(self, flow: FlowId, time: float) -> DnsTcpFlow:
        """Start a TCP DNS flow."""
        return DnsTcpFlow(self, flow)

    def datagram(self, flow: FlowId, sender: int, data: bytes, time: float) -> None:
        """One UDP datagram is one message."""
        self.message(flow, sender, data, time, "udp")

    def message(self, flow: FlowId, sender: int, data: bytes, time: float, transport: str) -> None:
        """Parse one message and record it, or count and report why it is malformed."""
        try:
            parsed = parse_message(data)
        except DnsError as exc:
            self.error(exc.reason)
            self.records.append(
                {
                    "error": exc.reason,
                    "time": time,
                    "transport": transport,
                    "src": endpoint(flow, sender),
                    "dst": endpoint(flow, 3 - sender),
                    "length": len(data),
                }
            )
            return
        client = 3 - sender if parsed["qr"] else sender
        record = {
            "time": time,
            "transport": transport,
            "client": endpoint(flow, client),
            "server": endpoint(flow, 3 - client),
        }
        record.update(parsed)
        self.records.append(record)
