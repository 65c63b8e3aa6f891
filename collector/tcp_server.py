"""IPFIX over TCP (RFC 7011 section 10.4): one selector loop, a stream framer per connection."""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable

from celltap.collector.config import ListenAddress
from celltap.collector.ingest import Ingestor
from celltap.collector.stats import MALFORMED, NOT_ALLOWED, SINK_ERROR

from celltap.ipfix.errors import MalformedError
from celltap.ipfix.message import StreamFramer
from celltap.ipfix.records import RecordBatch

log = logging.getLogger("celltap.collector")


class TcpServer:
    """Accept exporters, split their streams into messages, feed them to one Ingestor."""

    def __init__(
        self,
        addr: ListenAddress,
        ingestor: Ingestor,
        sink: Callable[[list[RecordBatch]], None],
        max_connections: int = 1024,
    ) -> None:
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((addr.host, addr.port))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.ingestor = ingestor
        self.sink = sink
        self.max_connections = max_connections
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.conns: dict[socket.socket, tuple[str, StreamFramer]] = {}
        self.restarts = 0

    def _close(self, conn: socket.socket) -> None:
        exporter, _ = self.conns.pop(conn)
        self.sel.unregister(conn)
        conn.close()
        if not any(e == exporter for e, _ in self.conns.values()):
            self.ingestor.forget_exporter(exporter)  # a session's templates end with the session

    def poll_once(self, timeout: float) -> None:
        """Handle whatever is ready within timeout."""
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                try:
                    conn, peer = self.listener.accept()
                except BlockingIOError:
                    continue
                if len(self.conns) >= self.max_connections or not self.ingestor.allow.allowed(peer[0]):
                    self.ingestor.stats.dropped_messages[NOT_ALLOWED] += 1
                    log.warning("TCP exporter %s refused (allow-list or connection limit)", peer[0])
                    conn.close()
                    continue
                conn.setblocking(False)
                self.conns[conn] = (peer[0], StreamFramer())
                self.sel.register(conn, selectors.EVENT_READ, peer[0])
                continue
            conn = key.fileobj  # type: ignore[assignment]
            try:
                data = conn.recv(1 << 18)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self._close(conn)  # type: ignore[arg-type]
                continue
            exporter, framer = self.conns[conn]  # type: ignore[index]
            try:
                msgs = framer.feed(data)
            except MalformedError as exc:
                self.ingestor.stats.dropped_messages[MALFORMED] += 1
                self.ingestor.stats.dropped_bytes[MALFORMED] += len(data) + framer.pending
                log.warning("TCP exporter %s: %s; connection closed", exporter, exc)
                self._close(conn)  # type: ignore[arg-type]
                continue
            if msgs:
                batches = self.ingestor.feed([(exporter, m) for m in msgs], time.time(), expires=False)
                if batches:
                    try:
                        self.sink(batches)
                    except Exception as exc:
                        lost = sum(len(b) for b in batches)
                        self.ingestor.stats.dropped_records[SINK_ERROR] += lost
                        log.error("record sink failed, %d records lost (sink_error): %r", lost, exc)

    def run(self, should_stop: Callable[[], bool], on_tick: Callable[[], None] | None = None) -> None:
        """Serve until should_stop() is true."""
        while not should_stop():
            try:
                self.poll_once(0.2)
            except Exception:  # a bug must not end the TCP listener: log it, count it, go on
                self.restarts += 1
                log.exception("TCP server loop failed; continuing")
                time.sleep(0.05)
            if on_tick is not None:
                on_tick()
        for conn in list(self.conns):
            self._close(conn)
        self.sel.close()
        self.listener.close()
