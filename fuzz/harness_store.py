"""Fuzz the packet store's readers: query text (5-tuple, URL parameters), store files, index files.

The first byte picks what the rest is: 0 query text for `parse_flow` and the endpoint's parameter
parser; 1 the bytes of a capture file in a store directory; 2 the bytes of an index beside a valid
capture file. Only QueryError is an expected outcome of a query; any other exception is a finding
(a damaged file must be indexed again or skipped, never crash a retrieval).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from urllib.parse import parse_qs

from celltap.cell.store.query import Query, QueryError, parse_flow, query_dir
from celltap.cell.store.serve import query_from_params

from celltap.pcap.batch import FrameBatch
from celltap.pcap.writer import PcapWriter

# Vectorised code compares numpy arrays: fuzz/run.py keeps those comparisons out of atheris's hook,
# which leaks on each (kilobytes per input here, an out-of-memory within a long run).
ARRAY_COMPARES = True

# In memory where the machine has a tmpfs: every input writes and reads these files (page-cache reads
# either way; tmpfs saves the file system's journal and writeback on each of millions of inputs).
# Under fuzz/run.py, in the scratch directory it removes after the run (libFuzzer ends the worker
# without exit handlers); imported elsewhere (the crasher replay), removed at exit.
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_DIR = tempfile.mkdtemp(prefix="celltap-fuzz-store-", dir=os.environ.get("CELLTAP_FUZZ_SCRATCH") or _TMP)
atexit.register(shutil.rmtree, _DIR, True)
_PCAP = os.path.join(_DIR, "cell0-00000000.pcap")
_IDX = os.path.join(_DIR, "cell0-00000000.idx")
_KEY = parse_flow("tcp 10.0.0.1:1234 10.0.0.2:80")


_CAPTURE: bytes | None = None


def _valid_capture() -> bytes:
    """Two TCP frames of the flow _KEY names, as a nanosecond pcap (written once, then reused)."""
    global _CAPTURE
    if _CAPTURE is None:
        _CAPTURE = _write_capture()
    return _CAPTURE


def _write_capture() -> bytes:
    ip = bytes.fromhex("45000028000100004006") + bytes(2) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    tcp = (1234).to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(8) + bytes([0x50, 0x02]) + bytes(6)
    frame = bytes(12) + b"\x08\x00" + ip + tcp
    path = os.path.join(_DIR, "seed.pcap")
    with PcapWriter(path, nanosecond=True) as w:
        w.write_batch(FrameBatch.from_frames([frame, frame], [10**18, 10**18 + 5]))
    with open(path, "rb") as fh:
        return fh.read()


def _query_all() -> None:
    for q in (Query(key=_KEY), Query(uid="C00000000001"), Query(key=_KEY, t_from=10**18, t_to=10**18)):
        try:
            query_dir(_DIR, q)
        except QueryError:
            pass


def test_one_input(data: bytes) -> None:
    """Any exception escaping is a finding."""
    mode, body = (data[0] % 3, data[1:]) if data else (0, b"")
    for stale in (_PCAP, _IDX):
        if os.path.exists(stale):
            os.unlink(stale)
    if mode == 0:
        text = body.decode("latin-1")
        for parse in (lambda: parse_flow(text), lambda: query_from_params(parse_qs(text))):
            try:
                parse()
            except QueryError:
                pass
        return
    with open(_PCAP, "wb") as fh:
        fh.write(body if mode == 1 else _valid_capture())
    if mode == 2:
        with open(_IDX, "wb") as fh:
            fh.write(body)
    _query_all()


def seeds() -> list[bytes]:
    """Query texts, a valid store capture, and its valid index."""
    from celltap.cell.store.query import index_of

    cap = _valid_capture()
    with open(_PCAP, "wb") as fh:
        fh.write(cap)
    idx = index_of(_PCAP)
    assert idx is not None
    idx.save(_IDX)
    with open(_IDX, "rb") as fh:
        idx_bytes = fh.read()
    return [
        b"\x00tcp 10.0.0.1:80 10.0.0.2:5000",
        b"\x00udp [2001:db8::1]:53 [2001:db8::2]:5353",
        b"\x00uid=C8XtWOfKcKzt&from=1&to=2",
        b"\x00flow=tcp+10.0.0.1:80+10.0.0.2:1&from=x",
        b"\x01" + cap,
        b"\x02" + idx_bytes,
    ]
