"""Fuzz harness: NetFlow v9 (RFC 3954) datagrams through the collector's decoding, both the per-datagram
path and the recvmmsg batch path (see fuzz/collector_ingest.py for what counts as a finding)."""

from __future__ import annotations

try:
    from fuzz import collector_ingest as common
except ImportError:  # run from inside fuzz/
    import collector_ingest as common  # type: ignore[no-redef]

# Vectorised code compares numpy arrays: fuzz/run.py keeps those comparisons out of atheris's hook,
# which leaks on each (kilobytes per input here, an out-of-memory within a long run).
ARRAY_COMPARES = True

# The inspect sink (JSON lines of every record) is the oracle, not the parser under test: it still runs on
# every record, as plain Python (fuzz/run.py), instead of costing half of each input instrumented.
UNINSTRUMENTED = ("celltap.collector.json_output",)
# Inputs up to 1 KB: a header, a template set and some records, or several short datagrams, reach
# every branch of the decoder; libFuzzer's own limit grows towards 3-4 KB over a long run, and each
# input is decoded three ways, so longer inputs cost the run most of its rate (180 inputs/s at 3 KB).
FUZZ_MAX_LEN = 1024
VERSION = 9


def test_one_input(data: bytes) -> None:
    """Decode the datagrams in `data`; raises only for a finding."""
    common.run_one(data, VERSION)


def seeds() -> list[bytes]:
    """Messages from our encoder and loadgen's router pool."""
    return common.ipfix_seeds(VERSION)
