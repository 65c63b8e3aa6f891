"""Fuzz the pcap / pcapng readers: any bytes as a capture file.

A reader may refuse a capture only with CaptureFormatError (any other exception is a finding), and
whatever it yields must be safe to use: every frame it announces lies inside the buffer it hands out
(offset >= 0, 0 <= caplen, offset + caplen <= buffer size) and every batch's columns agree in length.
Inputs go through the streaming path (a file object without a descriptor) and, for inputs whose
first byte is odd, through a real file (the mapped path) as well; both must yield the same frames.
"""

from __future__ import annotations

import io
import os
import tempfile

from celltap.pcap import CaptureFormatError, PcapngWriter, PcapWriter, open_capture

# Vectorised code compares numpy arrays: fuzz/run.py keeps those comparisons out of atheris's hook,
# which leaks on each (kilobytes per input here, an out-of-memory within a long run).
ARRAY_COMPARES = True

# The mapped path reads a real file: on a tmpfs where there is one (millions of inputs, no journal).
_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class UnsafeBatch(AssertionError):
    """A batch announces bytes outside its buffer."""


def _frames(source: object) -> tuple[list[bytes], str]:
    out: list[bytes] = []
    try:
        with open_capture(source) as cap:  # type: ignore[arg-type]
            for b in cap:
                n = len(b)
                size = len(b.buf)
                for col in (b.caplens, b.wirelens, b.ts_ns):
                    if len(col) != n:
                        raise UnsafeBatch("batch columns of different lengths")
                if n:
                    lo, hi = int(b.offsets.min()), int((b.offsets + b.caplens).max())
                    if lo < 0 or int(b.caplens.min()) < 0 or hi > size:
                        raise UnsafeBatch(f"frames span [{lo}, {hi}) of a {size}-byte buffer")
                out += [b.frame(i) for i in range(n)]
    except CaptureFormatError as exc:
        return out, f"error at {exc.offset}"
    return out, "ok"


def test_one_input(data: bytes) -> None:
    """Read `data` as a capture; both paths must agree and yield only safe frames."""
    streamed = _frames(io.BufferedReader(io.BytesIO(data)))
    if data and data[0] & 1:
        fd, path = tempfile.mkstemp(suffix=".pcap", dir=_TMP)
        try:
            os.write(fd, data)
            os.close(fd)
            mapped = _frames(path)
        finally:
            os.unlink(path)
        if mapped != streamed:
            raise AssertionError(f"mapped and streamed reads differ: {mapped[1]} vs {streamed[1]}")


def seeds() -> list[bytes]:
    """Small pcap (us / ns, both byte orders) and pcapng captures of loadgen traffic."""
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    frames = [(t, f) for t, f in get("mixed").generate(3, 4)][:12]
    out = []
    for kind in ("pcap", "pcap_ns", "pcapng", "pcapng_ns"):
        buf = io.BytesIO()
        ns = kind.endswith("_ns")
        w = PcapngWriter(buf, nanosecond=ns) if kind.startswith("pcapng") else PcapWriter(buf, nanosecond=ns)
        for t, f in frames:
            w.write(t, f)
        w.close()
        out.append(buf.getvalue())
        out.append(b"\x01" + buf.getvalue()[1:])  # odd first byte: also read through a real file
    return out
