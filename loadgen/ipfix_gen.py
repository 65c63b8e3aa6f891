"""Synthetic router exports: pools of ready IPFIX / NetFlow v9 messages with known totals."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from celltap.ipfix.encoder import MessageEncoder, RefreshPolicy
from celltap.ipfix.message import IPFIX_VERSION
from celltap.ipfix.template import Template, template_from_names

ROUTER_TEMPLATE_ID = 300

# What a typical router template carries (Cisco / Juniper style 5-tuple flow cache export).
ROUTER_FIELDS: list[tuple[str, int | None]] = [
    ("sourceIPv4Address", None),
    ("destinationIPv4Address", None),
    ("ipNextHopIPv4Address", None),
    ("ingressInterface", None),
    ("egressInterface", None),
    ("packetDeltaCount", None),
    ("octetDeltaCount", None),
    ("flowStartMilliseconds", None),
    ("flowEndMilliseconds", None),
    ("sourceTransportPort", None),
    ("destinationTransportPort", None),
    ("tcpControlBits", None),
    ("protocolIdentifier", None),
    ("ipClassOfService", None),
    ("bgpSourceAsNumber", None),
    ("bgpDestinationAsNumber", None),
]


def router_template() -> Template:
    """The fixed-length template loadgen's emulated routers export (id 300)."""
    return template_from_names(ROUTER_TEMPLATE_ID, ROUTER_FIELDS)


def random_records(rng: np.random.Generator, n: int, now_ms: int) -> dict[str, np.ndarray]:
    """n plausible flow records as columns."""
    pk = rng.integers(1, 200, n, dtype=np.uint64)
    return {
        "sourceIPv4Address": rng.integers(0x0A000000, 0x0AFFFFFF, n, dtype=np.uint32),
        "destinationIPv4Address": rng.integers(0xC0000000, 0xDFFFFFFF, n, dtype=np.uint32),
        "ipNextHopIPv4Address": np.full(n, 0x0A0000FE, np.uint32),
        "ingressInterface": rng.integers(1, 48, n, dtype=np.uint32),
        "egressInterface": rng.integers(1, 48, n, dtype=np.uint32),
        "packetDeltaCount": pk,
        "octetDeltaCount": pk * rng.integers(40, 1500, n, dtype=np.uint64),
        "flowStartMilliseconds": np.full(n, now_ms - 60_000, np.uint64)
        + rng.integers(0, 30_000, n, dtype=np.uint64),
        "flowEndMilliseconds": np.full(n, now_ms, np.uint64),
        "sourceTransportPort": rng.integers(1024, 65535, n, dtype=np.uint16),
        "destinationTransportPort": rng.choice(np.array([53, 80, 443, 25, 123], np.uint16), n),
        "tcpControlBits": rng.integers(0, 0x3F, n, dtype=np.uint16),
        "protocolIdentifier": rng.choice(np.array([6, 17], np.uint8), n),
        "ipClassOfService": np.zeros(n, np.uint8),
        "bgpSourceAsNumber": rng.integers(64512, 65534, n, dtype=np.uint32),
        "bgpDestinationAsNumber": rng.integers(1, 64000, n, dtype=np.uint32),
    }


@dataclass
class MessagePool:
    """Pre-encoded data messages of one exporter, replayed in a loop with rewritten sequence numbers."""

    templates: bytes  # a message carrying only the templates
    messages: list[bytearray]
    records: list[int]
    octets: list[int]
    packets: list[int]
    version: int
    sequence: int = 0

    def next_message(self, i: int) -> bytearray:
        """Message i of the loop, stamped with the next sequence number."""
        m = self.messages[i % len(self.messages)]
        # IPFIX counts data records before this message; v9 counts packets.
        struct.pack_into("!I", m, 8 if self.version == IPFIX_VERSION else 12, self.sequence & 0xFFFFFFFF)
        self.sequence += self.records[i % len(self.messages)] if self.version == IPFIX_VERSION else 1
        return m

    def stamp_templates(self) -> bytes:
        """The templates message with the current sequence number (v9 counts it as a packet)."""
        m = bytearray(self.templates)
        struct.pack_into("!I", m, 8 if self.version == IPFIX_VERSION else 12, self.sequence & 0xFFFFFFFF)
        if self.version != IPFIX_VERSION:
            self.sequence += 1
        return bytes(m)


def build_pool(
    domain: int, seed: int, now: float, n_messages: int = 64, version: int = IPFIX_VERSION, mtu: int = 1400
) -> MessagePool:
    """Encode n_messages full data messages for one exporter (no templates inside them)."""
    t = router_template()
    enc = MessageEncoder(domain, [t], version, mtu, RefreshPolicy(None, None))
    templates = enc.templates_message(now)
    per_msg = (mtu - enc.header_size - 4) // (t.record_length or 1)
    rng = np.random.default_rng(seed)
    cols = random_records(rng, per_msg * n_messages, int(now * 1000))
    msgs = enc.encode(t.template_id, cols, now)
    recs, octs, pkts = [], [], []
    for i in range(len(msgs)):
        sl = slice(i * per_msg, (i + 1) * per_msg)
        recs.append(per_msg)
        octs.append(int(cols["octetDeltaCount"][sl].sum()))
        pkts.append(int(cols["packetDeltaCount"][sl].sum()))
    return MessagePool(templates, [bytearray(m) for m in msgs], recs, octs, pkts, version)
