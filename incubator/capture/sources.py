"""Open a capture spec: `afpacket:IF`, `netmap:IF` or `pcap:FILE`, all giving FrameBatches."""

from __future__ import annotations

import os
from collections.abc import Iterator

from celltap.pcap import open_capture
from celltap.pcap.batch import FrameBatch

REPLAY_CHUNK = 256 << 10


class CaptureUnavailable(RuntimeError):
    """The capture method cannot be used on this machine (the message says why)."""


class PcapSource:
    """A capture file read in batches (a replay of recorded traffic through the live path)."""

    def __init__(self, path: str) -> None:
        self.name = f"pcap:{path}"
        # Small chunks: a replay is sent on as fast as it is read, and a 4 MiB chunk arrives at a
        # cell's UDP socket as one burst larger than a default socket buffer (about 400 KB).
        self.reader = open_capture(path, chunk_size=REPLAY_CHUNK)
        self._it: Iterator[FrameBatch] = iter(self.reader)
        self.done = False

    def next_batch(self) -> FrameBatch | None:
        """The next batch, or None at end of file (then `done` is True)."""
        try:
            return next(self._it)
        except StopIteration:
            self.done = True
            return None

    def close(self) -> None:
        """Close the file."""
        self.reader.close()


def netmap_available() -> str | None:
    """None if netmap can be used, else the reason it cannot."""
    if not os.path.exists("/dev/netmap"):
        return "/dev/netmap does not exist (the netmap kernel module is not loaded on this host)"
    return None


def parse_capture(spec: str) -> tuple[str, str]:
    """('afpacket' | 'netmap' | 'xdp' | 'pcap', argument) of a capture spec."""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in ("afpacket", "netmap", "xdp", "pcap") or not arg:
        raise ValueError(f"capture {spec!r}: expected afpacket:IFACE, netmap:IFACE, xdp:IFACE or pcap:FILE")
    return kind, arg
