"""Export messages found in a capture: UDP payloads, and IPFIX over TCP reassembled in order."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

from celltap.decode.scalar import decode_frame
from celltap.ipfix.errors import MalformedError
from celltap.ipfix.message import StreamFramer
from celltap.pcap import open_capture

log = logging.getLogger("celltap.collector")
PROTO_TCP = 6
PROTO_UDP = 17


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def messages_from_capture(
    path: str | Path,
    ports: set[int] | None = None,
) -> Iterator[tuple[float, str, bytes]]:
    """(timestamp, exporter address, message) for each UDP datagram / TCP-carried IPFIX message.

    With `ports`, only traffic to those destination ports is taken; otherwise every UDP payload is
    offered to the decoder (which counts what is not IPFIX/NetFlow as malformed).
    """
    streams: dict[tuple, tuple[StreamFramer, int]] = {}
    skipped = 0
    for batch in open_capture(str(path)):
        for i in range(len(batch)):
            frame = batch.frame(i)
            d = decode_frame(frame, batch.linktype, int(batch.wirelens[i]))
            if d.payload_off < 0 or d.l4 not in (PROTO_UDP, PROTO_TCP) or d.is_frag:
                skipped += 1
                continue
            if ports is not None and d.dport not in ports:
                continue
            payload = frame[d.payload_off : d.payload_off + d.payload_len]
            ts = int(batch.ts_ns[i]) / 1e9
            exporter = _addr(d.src)
            if d.l4 == PROTO_UDP:
                yield ts, exporter, payload
                continue
            if not payload:
                continue
            key = (d.src, d.sport, d.dst, d.dport)
            framer = streams.get(key)
            if framer is None:
                framer = streams[key] = (StreamFramer(), d.tcp_seq)
            fr, nxt = framer
            if d.tcp_seq != nxt:
                continue  # retransmission or out of order: this reader only follows in-order streams
            streams[key] = (fr, (nxt + len(payload)) & 0xFFFFFFFF)
            try:
                for msg in fr.feed(payload):
                    yield ts, exporter, msg
            except MalformedError as exc:
                log.warning("TCP stream %s: %s; stream dropped", key, exc)
                del streams[key]
    if skipped:
        log.info("%d frames without a UDP/TCP payload skipped", skipped)
