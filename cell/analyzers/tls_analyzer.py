"""TLS analyzer: reassembles records and handshake messages (split across segments or records) until
ClientHello and ServerHello are seen, then reports versions, SNI, ALPN, ciphers and fingerprints."""

from __future__ import annotations

import struct

from cell.analyzers.endpoints import endpoint
from cell.analyzers.tls_hello import TlsError, parse_client_hello, parse_server_hello
from cell.sdk.events import FlowId
from cell.sdk.flows import FlowAnalyzer

MAX_RECORD = (1 << 14) + 2048
MAX_HANDSHAKE_BUFFER = 64 * 1024
_CONTENT_TYPES = frozenset((20, 21, 22, 23, 24))


class _Direction:
    __slots__ = ("done", "hs", "rec")

    def __init__(self) -> None:
        self.rec = b""  # unparsed record-layer bytes
        self.hs = b""  # handshake bytes reassembled from records
        self.done = False


class TlsFlow:
    """One TCP flow's TLS handshake state."""

    __slots__ = (
        "analyzer",
        "client",
        "client_hello",
        "dirs",
        "failed",
        "flow",
        "reported",
        "server_hello",
        "time",
    )

    def __init__(self, analyzer: TlsAnalyzer, flow: FlowId, time: float) -> None:
        self.analyzer = analyzer
        self.flow = flow
        self.time = time
        self.dirs = {1: _Direction(), 2: _Direction()}
        self.client = 0
        self.client_hello: dict | None = None
        self.server_hello: dict | None = None
        self.failed = False
        self.reported = False

    def data(self, sender: int, data: bytes, time: float) -> None:
        """Feed bytes from one endpoint."""
        d = self.dirs[sender]
        if d.done or self.failed:
            return
        buf = d.rec + data
        pos = 0
        n = len(buf)
        while n - pos >= 5:
            ctype = buf[pos]
            major = buf[pos + 1]
            (length,) = struct.unpack_from(">H", buf, pos + 3)
            if ctype not in _CONTENT_TYPES or major != 3:
                self._fail("not_tls", time)
                return
            if length > MAX_RECORD:
                self._fail("record_too_long", time)
                return
            if n - pos - 5 < length:
                break
            fragment = buf[pos + 5 : pos + 5 + length]
            pos += 5 + length
            if ctype != 22:
                # ChangeCipherSpec / alert / application data: the cleartext hellos are behind us.
                d.done = True
                break
            d.hs += fragment
            if len(d.hs) > MAX_HANDSHAKE_BUFFER:
                self._fail("handshake_too_long", time)
                return
            if not self._handshakes(sender, d, time):
                return
        d.rec = b"" if d.done else buf[pos:]
        if self.client_hello is not None and self.server_hello is not None and not self.reported:
            self._report(time)

    def _handshakes(self, sender: int, d: _Direction, time: float) -> bool:
        hs = d.hs
        pos = 0
        while len(hs) - pos >= 4:
            htype = hs[pos]
            hlen = int.from_bytes(hs[pos + 1 : pos + 4], "big")
            if len(hs) - pos - 4 < hlen:
                break
            body = hs[pos + 4 : pos + 4 + hlen]
            pos += 4 + hlen
            try:
                if htype == 1 and self.client_hello is None:
                    self.client_hello = parse_client_hello(body)
                    self.client = sender
                    self.time = time
                elif htype == 2 and self.server_hello is None:
                    self.server_hello = parse_server_hello(body)
                    if not self.client:
                        self.client = 3 - sender
                    d.done = True  # what follows a ServerHello is encrypted in TLS 1.3
                    break
            except TlsError as exc:
                self._fail(exc.reason, time)
                return False
            if htype == 1:
                d.done = True
                break
        d.hs = b"" if d.done else hs[pos:]
        return True

    def _record(self) -> dict:
        client = self.client or 1
        return {
            "time": self.time,
            "client": endpoint(self.flow, client),
            "server": endpoint(self.flow, 3 - client),
        }

    def _report(self, time: float) -> None:
        self.reported = True
        rec = self._record()
        rec["client_hello"] = self.client_hello
        rec["server_hello"] = self.server_hello
        self.analyzer.records.append(rec)

    def _fail(self, reason: str, time: float) -> None:
        if self.failed:
            return
        self.failed = True
        self.analyzer.error(reason)
        rec = self._record()
        rec["error"] = reason
        rec["time"] = time
        self.analyzer.records.append(rec)
        if self.client_hello is not None and not self.reported:
            self._report(time)

    def end(self, reason: str, time: float) -> None:
        """Report a handshake cut short, and count records truncated by the end of the flow."""
        if self.failed:
            return
        if any(d.rec or d.hs for d in self.dirs.values() if not d.done):
            self._fail("truncated_record", time)
            return
        if not self.reported and (self.client_hello is not None or self.server_hello is not None):
            self._report(time)


class TlsAnalyzer(FlowAnalyzer):
    """Analyzer factory for TLS flows."""

    name = "tls"

    def stream(self, flow: FlowId, time: float) -> TlsFlow:
        """Start parsing a new TCP flow."""
        return TlsFlow(self, flow, time)
