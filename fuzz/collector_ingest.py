"""Shared driver of the collector fuzz harnesses (IPFIX, NetFlow v9, NetFlow v5).

One fuzz input is a sequence of datagrams, each prefixed by a 2-byte big-endian length (a short tail
is one more datagram).  Every datagram is forced to the harness's version and goes through both ways
a UDP worker decodes: first one by one through `Ingestor.feed` (the recvfrom path, which warms up the
templates), then all together as one recvmmsg batch laid out in slot rows exactly as `BatchReceiver`
lays them out, through `udp_server.ingest_received` (the vectorised slot path or, when the batch does
not qualify, the general path).  IPFIX input also goes through the TCP path (StreamFramer, a session
that then ends).  Every decoded batch is then printed as JSON lines (the inspect sink)
and serialised for the analysis nodes and back (`RecordBatch.to_wire` / `from_wire`).

A finding is anything the collector would not survive or would get wrong silently: an exception out
of the sinks, a decoder exception that the ingestor had to catch (`internal_error`), or memory
accounting that does not return to zero once every domain has expired.
"""

from __future__ import annotations

import io
import logging
import struct
import time

import numpy as np
from celltap.collector.ingest import IngestConfig, Ingestor
from celltap.collector.json_output import JsonLinesSink
from celltap.collector.stats import INTERNAL_ERROR
from celltap.collector.template_store import InMemoryTemplateStore
from celltap.collector.udp_server import ingest_received

from celltap.ipfix.records import RecordBatch

# Every drop is logged (rate-limited) by design; a fuzzer makes millions, and their text is no finding.
logging.getLogger("celltap.collector").setLevel(logging.CRITICAL)

EXPORTER = "192.0.2.1"
EXPORTER_INT = 0xC0000201


def split_datagrams(data: bytes, version: int, limit: int = 16) -> list[bytes]:
    """Length-prefixed datagrams (at most `limit`), each given the harness's version number."""
    out = []
    pos = 0
    while pos < len(data) and len(out) < limit:
        if len(data) - pos >= 2:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        else:
            n = len(data) - pos
        chunk = bytearray(data[pos : pos + n])
        pos += n
        if len(chunk) >= 2:
            chunk[0:2] = struct.pack("!H", version)
        out.append(bytes(chunk))
    return out


def join_datagrams(datagrams: list[bytes]) -> bytes:
    """Inverse of split_datagrams (for building seeds)."""
    return b"".join(struct.pack("!H", len(d)) + d for d in datagrams)


class SlotBatch:
    """The recvmmsg receive buffer as BatchReceiver exposes it (rows, lengths, sources), IPv4."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.n = len(datagrams)
        # BatchReceiver's slots are 65535 bytes; the decoder only relies on the row stride, so rows
        # just wide enough for the longest datagram behave the same and cost the fuzzer less.
        self.slot = max(64, *(len(d) for d in datagrams)) if datagrams else 64
        self.buf = np.zeros((max(1, self.n), self.slot), dtype=np.uint8)
        self.lens = np.zeros(max(1, self.n), dtype=np.uint32)
        for i, d in enumerate(datagrams):
            self.buf[i, : len(d)] = np.frombuffer(d, dtype=np.uint8)
            self.lens[i] = len(d)
        self.view = memoryview(self.buf.reshape(-1))

    def rows(self, n: int):
        addrs = np.full(n, EXPORTER_INT, dtype=np.uint32)
        return self.buf, self.lens[:n], addrs, {EXPORTER_INT: EXPORTER}

    def pairs(self, n: int) -> list:
        size = self.slot
        return [(EXPORTER, self.view[i * size : i * size + int(self.lens[i])]) for i in range(n)]


def check_batches(batches: list[RecordBatch], json_lines: bool = True) -> None:
    """What the sinks do with decoded batches: JSON lines (unless told not to) and the wire form to
    the nodes."""
    if json_lines:
        JsonLinesSink(io.StringIO())(batches)
    for b in batches:
        tb, rb = b.to_wire()
        back = RecordBatch.from_wire(b.exporter, b.domain, tb, rb)
        if len(back) != len(b):
            raise AssertionError(f"wire round trip changed the record count: {len(b)} -> {len(back)}")


def small_ingestor() -> Ingestor:
    """Small limits, so the fuzzer reaches them too."""
    cfg = IngestConfig(
        max_templates_per_domain=8,
        max_domains=8,
        max_domains_per_exporter=4,
        max_state_bytes=1 << 20,
        max_exporter_bytes=512 << 10,
    )
    return Ingestor(cfg, InMemoryTemplateStore())


def run_one(data: bytes, version: int) -> None:
    """The whole harness body for one version (raises only for a finding)."""
    datagrams = split_datagrams(data, version)
    if not datagrams:
        return
    ing = small_ingestor()
    now = time.time()
    for d in datagrams:
        check_batches(ing.feed([(EXPORTER, d)], now))
    slots = SlotBatch(datagrams)
    # The JSON sink is the costliest check and a pure function of the records: the per-datagram pass
    # above gave it every kind of record, so the batch passes check the wire form only.
    for vectorised in (True, False):
        batches = ingest_received(ing, slots, slots.n, now, vectorised)  # type: ignore[arg-type]
        check_batches(batches, json_lines=False)
    ing.checkpoint()
    stats = ing.stats
    if stats.dropped_messages.get(INTERNAL_ERROR) or stats.dropped_sets.get(INTERNAL_ERROR):
        raise AssertionError("decoder raised unexpectedly") from ing.last_internal_error
    ing.expire(now + 10 * 86400, force=True)
    if ing.state_bytes != 0 or ing._exporters or ing._domains:
        raise AssertionError(f"state accounting leaks: {ing.state_bytes} bytes after every domain expired")
    if version == 10:
        run_stream(datagrams, now)


def run_stream(datagrams: list[bytes], now: float) -> None:
    """The TCP path: the datagrams as one IPFIX byte stream, framed and decoded as a session, which
    then ends (its templates end with it)."""
    from celltap.ipfix.errors import MalformedError
    from celltap.ipfix.message import StreamFramer

    ing = small_ingestor()
    framer = StreamFramer(max_buffer=1 << 16)
    try:
        msgs = framer.feed(b"".join(datagrams))
    except MalformedError:
        return  # the server closes such a connection (counted there)
    check_batches(ing.feed([(EXPORTER, m) for m in msgs], now, expires=False))
    if ing.stats.dropped_messages.get(INTERNAL_ERROR) or ing.stats.dropped_sets.get(INTERNAL_ERROR):
        raise AssertionError("decoder raised unexpectedly (stream)") from ing.last_internal_error
    ing.forget_exporter(EXPORTER)
    if ing.state_bytes != 0 or ing._exporters or ing._domains:
        raise AssertionError(f"state accounting leaks after a session ended: {ing.state_bytes} bytes")


def ipfix_seeds(version: int) -> list[bytes]:
    """Seeds from our encoder (fixed, variable-length, options, enterprise fields) and loadgen's pool."""
    from celltap.loadgen.ipfix_gen import build_pool

    from celltap.ipfix import MessageEncoder, template_from_names
    from celltap.ipfix.encoder import RefreshPolicy

    now = 1_700_000_000.0
    out = []
    pool = build_pool(1, 1, now, n_messages=2, version=version)
    out.append(join_datagrams([pool.stamp_templates(), *pool.messages[:2]]))
    fixed = template_from_names(
        300,
        [
            ("sourceIPv4Address", None),
            ("destinationIPv4Address", None),
            ("octetDeltaCount", 4),
            ("packetDeltaCount", 3),
            ("protocolIdentifier", None),
        ],
    )
    n = 3
    cols = {
        "sourceIPv4Address": np.arange(n, dtype=np.uint32),
        "destinationIPv4Address": np.arange(n, dtype=np.uint32),
        "octetDeltaCount": np.arange(n, dtype=np.uint64),
        "packetDeltaCount": np.arange(n, dtype=np.uint64),
        "protocolIdentifier": np.full(n, 6, np.uint8),
    }
    enc = MessageEncoder(7, [fixed], version, refresh=RefreshPolicy(None, None))
    out.append(join_datagrams(enc.encode(300, cols, now)))
    if version == 10:
        var = template_from_names(
            301, [("sourceIPv4Address", None), ("applicationName", None), ("octetDeltaCount", None)]
        )
        enc = MessageEncoder(8, [var], version, refresh=RefreshPolicy(None, None))
        vcols = {
            "sourceIPv4Address": np.arange(n, dtype=np.uint32),
            "applicationName": np.array(["http", "dns" * 100, ""], dtype=object),
            "octetDeltaCount": np.arange(n, dtype=np.uint64),
        }
        out.append(join_datagrams(enc.encode(301, vcols, now)))
    opts = template_from_names(302, [("meteringProcessId", None), ("samplingInterval", None)], scope_count=1)
    enc = MessageEncoder(9, [opts, fixed], version, refresh=RefreshPolicy(None, None))
    ocols = {"meteringProcessId": np.array([1], np.uint32), "samplingInterval": np.array([10], np.uint32)}
    out.append(join_datagrams(enc.encode(302, ocols, now) + enc.encode(300, cols, now)))
    return out
