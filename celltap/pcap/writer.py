"""pcap (micro- or nanosecond) and pcapng writers, per frame or per batch."""

from __future__ import annotations

import struct
import sys
from typing import BinaryIO

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from celltap.pcap.batch import LINKTYPE_ETHERNET, FrameBatch, scatter_rows
from celltap.pcap.reader import PCAP_MAGIC_NS, PCAP_MAGIC_US


def pack_pcap_records(batch: FrameBatch, nanosecond: bool = False, snaplen: int = 262144) -> np.ndarray:
    """The pcap records (16-byte header + captured bytes) of every frame, as one uint8 array."""
    n = len(batch)
    if n == 0:
        return np.empty(0, np.uint8)
    caplen = np.minimum(batch.caplens, snaplen).astype(np.int64)
    rec = caplen + 16
    starts = np.empty(n, np.int64)
    starts[0] = 0
    np.cumsum(rec[:-1], out=starts[1:])
    out = np.empty(int(rec.sum()), np.uint8)
    sec, rem = np.divmod(batch.ts_ns, 1_000_000_000)
    hdr = np.empty((n, 4), "<u4")
    hdr[:, 0] = sec
    hdr[:, 1] = rem if nanosecond else rem // 1000
    hdr[:, 2] = caplen
    hdr[:, 3] = batch.wirelens
    hv = hdr.view(np.uint8).reshape(n, 16)
    if np.all(caplen == caplen[0]):
        # Uniform lengths: the output is a plain 2-D array of records.
        view = out.reshape(n, 16 + int(caplen[0]))
        view[:, :16] = hv
        if caplen[0]:
            view[:, 16:] = sliding_window_view(batch.buf, int(caplen[0]))[batch.offsets]
        return out
    sliding_window_view(out, 16, writeable=True)[starts] = hv
    scatter_rows(out, starts + 16, batch.buf, batch.offsets, caplen)
    return out


class PcapWriter:
    """Write a classic pcap file; `nanosecond=True` writes the 0xa1b23c4d variant."""

    def __init__(
        self,
        target: str | BinaryIO,
        linktype: int = LINKTYPE_ETHERNET,
        snaplen: int = 262144,
        nanosecond: bool = False,
    ) -> None:
        if isinstance(target, str):
            self.stream: BinaryIO = sys.stdout.buffer if target == "-" else open(target, "wb")
            self._owns = target != "-"
        else:
            self.stream, self._owns = target, False
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
        self.stream.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        self.frames = 0

    def write(self, ts_ns: int, frame: bytes, wirelen: int | None = None) -> None:
        """Append one frame captured at ts_ns (nanoseconds since the epoch)."""
        sec, rem = divmod(int(ts_ns), 1_000_000_000)
        frac = rem if self.nanosecond else rem // 1000
        cap = frame[: self.snaplen]
        self.stream.write(struct.pack("<IIII", sec, frac, len(cap), wirelen or len(frame)))
        self.stream.write(cap)
        self.frames += 1

    def write_batch(self, batch: FrameBatch) -> None:
        """Append every frame of `batch` with a few vectorised copies."""
        if len(batch):
            self.stream.write(pack_pcap_records(batch, self.nanosecond, self.snaplen).data)
            self.frames += len(batch)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self.stream.flush()

    def close(self) -> None:
        """Flush and close (unless writing to a stream we did not open)."""
        self.stream.flush()
        if self._owns:
            self.stream.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PcapngWriter:
    """Write a pcapng file with one section and one interface (nanosecond if asked)."""

    def __init__(
        self,
        target: str | BinaryIO,
        linktype: int = LINKTYPE_ETHERNET,
        nanosecond: bool = False,
        snaplen: int = 262144,
    ) -> None:
        if isinstance(target, str):
            self.stream: BinaryIO = open(target, "wb")
            self._owns = True
        else:
            self.stream, self._owns = target, False
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.stream.write(
            struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
        )
        opts = b""
        if nanosecond:
            opts = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
        blen = 20 + len(opts)
        self.stream.write(
            struct.pack("<IIHHI", 1, blen, linktype, 0, snaplen) + opts + struct.pack("<I", blen)
        )
        self.frames = 0

    def write(self, ts_ns: int, frame: bytes, wirelen: int | None = None) -> None:
        """Append one frame as an Enhanced Packet Block."""
        ticks = int(ts_ns) if self.nanosecond else int(ts_ns) // 1000
        cap = frame[: self.snaplen]
        pad = (-len(cap)) % 4
        blen = 32 + len(cap) + pad
        self.stream.write(
            struct.pack(
                "<IIIIIII", 6, blen, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(cap), wirelen or len(frame)
            )
            + cap
            + b"\0" * pad
            + struct.pack("<I", blen)
        )
        self.frames += 1

    def write_batch(self, batch: FrameBatch) -> None:
        """Append every frame of `batch` (per frame: pcapng is not our hot output format)."""
        for i in range(len(batch)):
            self.write(int(batch.ts_ns[i]), batch.frame(i), int(batch.wirelens[i]))

    def close(self) -> None:
        """Flush and close."""
        self.stream.flush()
        if self._owns:
            self.stream.close()

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
