"""Fuzz harness: NetFlow v5 datagrams through the collector's decoding, both the per-datagram path and
the recvmmsg batch path (see fuzz/collector_ingest.py for what counts as a finding)."""

from __future__ import annotations

import struct

try:
    from fuzz import collector_ingest as common
except ImportError:  # run from inside fuzz/
    import collector_ingest as common  # type: ignore[no-redef]

# The inspect sink (JSON lines of every record) is the oracle, not the parser under test: it still runs on
# every record, as plain Python (fuzz/run.py), instead of costing half of each input instrumented.
UNINSTRUMENTED = ("celltap.collector.json_output",)
# Inputs up to 1 KB: a header, a template set and some records, or several short datagrams, reach
# every branch of the decoder; libFuzzer's own limit grows towards 3-4 KB over a long run, and each
# input is decoded three ways, so longer inputs cost the run most of its rate (180 inputs/s at 3 KB).
FUZZ_MAX_LEN = 1024
VERSION = 5
RECORD = struct.Struct("!IIIHHIIIIHHBBBBHHBBH")


def test_one_input(data: bytes) -> None:
    """Decode the datagrams in `data`; raises only for a finding."""
    common.run_one(data, VERSION)


def _message(seq: int, count: int, sampling: int) -> bytes:
    hdr = struct.pack("!HHIIIIBBH", 5, count, 5000, 1_700_000_000, 0, seq, 1, 2, sampling)
    recs = b"".join(
        RECORD.pack(0x0A000001 + i, 0xC0A80001, 0, 3, 4, 10 + i, 1000 + i, 100, 200, 1234, 80, 0, 0x1B, 6, 0,
                    65000, 65001, 24, 16, 0)
        for i in range(count)
    )  # fmt: skip
    return hdr + recs


def seeds() -> list[bytes]:
    """v5 messages laid out as RFC-less Cisco v5 (header + 48-byte records), sampled and unsampled."""
    return [
        common.join_datagrams([_message(0, 2, 0), _message(2, 1, 0)]),
        common.join_datagrams([_message(7, 30, (1 << 14) | 64)]),
    ]
