"""Synthetic flow records for cluster tests (structured arrays shaped like decoded IPFIX)."""

from __future__ import annotations

import numpy as np

from celltap.ipfix import template_from_names
from celltap.ipfix.records import RecordBatch

FIELDS = [
    ("sourceIPv4Address", None), ("destinationIPv4Address", None), ("protocolIdentifier", None),
    ("sourceTransportPort", None), ("destinationTransportPort", None), ("octetDeltaCount", None),
    ("packetDeltaCount", None), ("tcpControlBits", None), ("flowStartMilliseconds", None),
    ("applicationName", 16),
]  # fmt: skip
TEMPLATE = template_from_names(256, FIELDS)
APPS = np.array([b"http", b"dns", b"tls", b"", b"smtp"], dtype="S16")


def make_records(rng: np.random.Generator, n: int, n_src: int = 300, n_dst: int = 300) -> np.ndarray:
    """n records over a few hundred sources and destinations (so exact apps stay within capacity)."""
    r = np.zeros(n, dtype=TEMPLATE.out_dtype)
    r["sourceIPv4Address"] = 0x0A000000 + rng.integers(0, n_src, n)
    r["destinationIPv4Address"] = 0xC0A80000 + rng.integers(0, n_dst, n)
    r["protocolIdentifier"] = rng.choice(np.array([6, 17, 1], np.uint8), n)
    r["sourceTransportPort"] = rng.integers(1024, 65535, n)
    r["destinationTransportPort"] = rng.integers(1, 2000, n)
    r["packetDeltaCount"] = rng.integers(1, 100, n)
    r["octetDeltaCount"] = r["packetDeltaCount"] * rng.integers(40, 1500, n)
    r["tcpControlBits"] = rng.choice(np.array([0x02, 0x12, 0x18, 0x11], np.uint16), n)
    r["flowStartMilliseconds"] = 1_700_000_000_000 + rng.integers(0, 180_000, n)
    r["applicationName"] = rng.choice(APPS, n)
    return r


def make_batch(records: np.ndarray, exporter: str = "192.0.2.1") -> RecordBatch:
    """A RecordBatch of TEMPLATE records."""
    return RecordBatch(exporter, 1, TEMPLATE.template_id, TEMPLATE, records)


BIFLOW_FIELDS = [
    *FIELDS[:7],
    ("reverseOctetDeltaCount", None),
    ("reversePacketDeltaCount", None),
    *FIELDS[7:],
]
BIFLOW_TEMPLATE = template_from_names(257, BIFLOW_FIELDS)


def make_biflow_records(rng: np.random.Generator, n: int, n_src: int = 300, n_dst: int = 300) -> np.ndarray:
    """Like make_records, as RFC 5103 biflow records: each also counts what came back."""
    one_way = make_records(rng, n, n_src, n_dst)
    r = np.zeros(n, dtype=BIFLOW_TEMPLATE.out_dtype)
    for name in one_way.dtype.names or ():
        r[name] = one_way[name]
    r["reversePacketDeltaCount"] = rng.integers(0, 200, n)
    r["reverseOctetDeltaCount"] = r["reversePacketDeltaCount"] * rng.integers(40, 1500, n)
    return r
