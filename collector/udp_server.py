"""UDP ingestion: SO_REUSEPORT sockets with a large receive buffer, many datagrams per wakeup."""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable

from celltap.collector.config import ListenAddress
from celltap.collector.ingest import Ingestor
from celltap.collector.recvmmsg import BatchReceiver
from celltap.collector.recvmmsg import available as recvmmsg_available
from celltap.collector.slot_batch import feed_slots
from celltap.collector.stats import BUFFER_FULL, INTERNAL_ERROR, SINK_ERROR, STOPPED

from celltap.ipfix.records import RecordBatch
from celltap.socket_drops import udp_receive_drops

log = logging.getLogger("celltap.collector")
MAX_DATAGRAM = 65535
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def open_udp_socket(addr: ListenAddress, receive_buffer: int, reuseport: bool = True) -> socket.socket:
    """A non-blocking UDP socket bound to addr, sharing the port with the other workers."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        # FORCE passes net.core.rmem_max when we run as root, which a collector usually needs.
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, receive_buffer)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if got < receive_buffer:
        log.warning("receive buffer is %d bytes, not %d: raise net.core.rmem_max", got, receive_buffer)
    sock.bind((addr.host, addr.port))
    sock.setblocking(False)
    return sock


def ingest_received(
    ingestor: Ingestor, rx: BatchReceiver, n: int, now: float, vectorised: bool = True
) -> list:
    """Decode the n datagrams of rx's last recv(): the vectorised slot path when the whole batch
    qualifies, else the general path.  Never raises: a failure of the slot path costs its datagrams,
    counted as internal_error (the general path counts its own failures per message)."""
    if vectorised:
        got = rx.rows(n)
        if got is not None:
            rows, lens, addrs, names = got
            try:
                batches = feed_slots(ingestor, rows, lens, addrs, names, now)
            except Exception as exc:
                ingestor.stats.dropped_messages[INTERNAL_ERROR] += n
                ingestor.stats.dropped_bytes[INTERNAL_ERROR] += int(lens.sum())
                ingestor.last_internal_error = exc
                log.error("vectorised decode failed, %d datagrams dropped (internal_error): %r", n, exc)
                return []
            if batches is not None:
                return batches
    msgs = rx.pairs(n)
    try:
        return ingestor.feed(msgs, now)
    finally:
        del msgs  # views of the receive buffer: the next call overwrites it


class UdpWorker:
    """One receive loop: read what is queued into a preallocated buffer, decode it as one batch."""

    def __init__(
        self,
        sock: socket.socket,
        ingestor: Ingestor,
        sink: Callable[[list[RecordBatch]], None],
        batch_datagrams: int = 256,
        buffer_bytes: int = 8 << 20,
        on_stats: Callable[[dict], None] | None = None,
        stats_interval: float = 1.0,
        use_recvmmsg: bool = True,
        vectorised: bool = True,
    ) -> None:
        self.sock = sock
        self.ingestor = ingestor
        self.sink = sink
        self.batch_datagrams = batch_datagrams
        self.on_stats = on_stats
        self.stats_interval = stats_interval
        self._drops_seen = udp_receive_drops(sock) or 0
        self.datagrams = 0
        self.rx: BatchReceiver | None = None
        self.vectorised = vectorised
        # A sink that saves the sequence state itself (see deliver) is bound to this ingest's state.
        bind = getattr(sink, "bind_sequences", None)
        self._routes_sequences = callable(bind) and ingestor.seq_state is not None
        if self._routes_sequences:
            bind(ingestor.save_checkpoint, ingestor.restore_sequences)  # type: ignore[misc]
        if use_recvmmsg and recvmmsg_available():
            self.rx = BatchReceiver(sock, slots=batch_datagrams)
        # The recvfrom_into fallback reads into one buffer; recvmmsg has its own slots.
        self.buf = bytearray(max(buffer_bytes, 2 * MAX_DATAGRAM) if self.rx is None else 0)

    def poll_once(self, timeout: float) -> int:
        """Wait up to timeout for data, then drain up to one batch; returns datagrams read."""
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            return 0
        if self.rx is not None:
            return self._poll_recvmmsg()
        mv = memoryview(self.buf)
        limit = len(self.buf) - MAX_DATAGRAM
        recv = self.sock.recvfrom_into
        msgs = []
        off = 0
        while off <= limit and len(msgs) < self.batch_datagrams:
            try:
                n, addr = recv(mv[off:], MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. ICMP-caused errors on some kernels: not fatal
                log.debug("recvfrom: %s", exc)
                break
            msgs.append((addr[0], mv[off : off + n]))
            off += n
        if msgs:
            self.deliver(self.ingestor.feed(msgs, time.time()))
            self.datagrams += len(msgs)
        count = len(msgs)
        del mv, msgs  # no view of the buffer may outlive the batch: the next read overwrites it
        return count

    def _poll_recvmmsg(self) -> int:
        rx = self.rx
        assert rx is not None
        try:
            n = rx.recv()
        except OSError as exc:
            log.debug("recvmmsg: %s", exc)
            return 0
        if not n:
            return 0
        self.deliver(ingest_received(self.ingestor, rx, n, time.time(), self.vectorised))
        self.datagrams += n
        return n

    def deliver(self, batches: list[RecordBatch]) -> None:
        """Hand decoded batches to the sink (a failing sink costs those batches, counted), then save the
        sequence state: a record is delivered or, after a restart, inside a counted gap.

        A sink that buffers records (the cluster router) takes the sequence state with the batches
        and saves it itself once the records it covers are journaled."""
        if self._routes_sequences:
            self._deliver_routed(batches)
            return
        if batches:
            try:
                self.sink(batches)
            except Exception as exc:
                lost = sum(len(b) for b in batches)
                self.ingestor.stats.dropped_records[SINK_ERROR] += lost
                log.error("record sink failed, %d records lost (counted as sink_error): %r", lost, exc)
        items = self.ingestor.checkpoint_items()
        if items:
            self.ingestor.save_checkpoint(items)

    def _deliver_routed(self, batches: list[RecordBatch]) -> None:
        items = self.ingestor.checkpoint_items()
        try:
            self.sink.route_with_sequence(batches, items)  # type: ignore[attr-defined]
        except Exception as exc:
            lost = sum(len(b) for b in batches)
            self.ingestor.stats.dropped_records[SINK_ERROR] += lost
            log.error("record sink failed, %d records lost (counted as sink_error): %r", lost, exc)
            self.ingestor.save_checkpoint(items)  # those records are counted: the state may move on

    def report(self) -> None:
        """Add kernel drops since the last report and hand the stats deltas on."""
        drops = udp_receive_drops(self.sock)
        if drops is not None and drops > self._drops_seen:
            self.ingestor.stats.dropped_messages[BUFFER_FULL] += drops - self._drops_seen
            self._drops_seen = drops
        self.ingestor.expire(time.time())
        self.ingestor.count_store_drops()
        if self.on_stats is not None:
            self.on_stats(self.ingestor.stats.drain())

    def run(self, should_stop: Callable[[], bool], drain_seconds: float = 2.0) -> None:
        """Receive until should_stop() is true, then decode what is already queued (bounded in time),
        so a clean stop loses nothing that reached the socket; stats are reported every interval."""
        next_report = time.monotonic() + self.stats_interval
        while not should_stop():
            self.poll_once(0.2)
            if time.monotonic() >= next_report:
                self.report()
                next_report = time.monotonic() + self.stats_interval
        end = time.monotonic() + drain_seconds
        while time.monotonic() < end and self.poll_once(0):
            pass
        self.discard_queued()
        self.report()

    def discard_queued(self, limit: int = 1_000_000) -> int:
        """Count, without decoding, what is still queued once the drain time is over: those datagrams
        are lost with this socket, and a stop must not lose anything uncounted."""
        n = nbytes = 0
        while n < limit:
            try:
                got = self.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            n += 1
            nbytes += len(got)
        if n:
            self.ingestor.stats.dropped_messages[STOPPED] += n
            self.ingestor.stats.dropped_bytes[STOPPED] += nbytes
            log.warning("stopping: %d datagrams still queued after the drain time were dropped (counted)", n)
        return n
