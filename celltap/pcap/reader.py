"""Streaming pcap / pcapng reader that yields FrameBatches straight from file chunks.

No Python object is created per packet: a chunk of the file is read into one buffer, record
boundaries are found by `walk_records`, and header fields are gathered as numpy columns.  Files
larger than memory and pipes (stdin) work because only one chunk plus a partial record is held.
"""

from __future__ import annotations

import io
import mmap
import os
import stat
import struct
import sys
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from celltap.pcap.batch import FrameBatch
from celltap.pcap.walk import gather_u32, walk_records

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_IDB = 0x00000001
PCAPNG_EPB = 0x00000006
PCAPNG_SPB = 0x00000003

DEFAULT_CHUNK = 4 << 20
MAX_RECORD = 1 << 24


class CaptureFormatError(ValueError):
    """The input is not a pcap/pcapng capture, or its structure is corrupt."""


def open_capture(source: str | BinaryIO, chunk_size: int = DEFAULT_CHUNK) -> CaptureReader:
    """Open a pcap or pcapng file (path, '-' for stdin, or binary stream) for batch reading."""
    if isinstance(source, str):
        stream: BinaryIO = sys.stdin.buffer if source == "-" else open(source, "rb")
    else:
        stream = source
    return CaptureReader(stream, chunk_size)


class CaptureReader:
    """Iterates FrameBatches over a pcap or pcapng stream; the format is detected from its magic."""

    def __init__(self, stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.stream = stream
        self.chunk_size = max(chunk_size, 1 << 16)
        self._pending = b""
        head = self._read_exact(4)
        if len(head) < 4:
            raise CaptureFormatError("empty input: no pcap or pcapng header")
        magic_le = struct.unpack("<I", head)[0]
        magic_be = struct.unpack(">I", head)[0]
        self.pcapng = False
        self.linktypes: list[int] = []
        self.tsres_ns: list[tuple[int, int]] = []  # per interface: (multiplier, divisor) to ns
        if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            self.big_endian = magic_be in (PCAP_MAGIC_US, PCAP_MAGIC_NS)
            magic = magic_be if self.big_endian else magic_le
            self.nanosecond = magic == PCAP_MAGIC_NS
            rest = self._read_exact(20)
            if len(rest) < 20:
                raise CaptureFormatError("truncated pcap file header")
            e = ">" if self.big_endian else "<"
            _vmaj, _vmin, _tz, _sig, self.snaplen, linktype = struct.unpack(e + "HHiIII", rest)
            self.linktype = linktype & 0x0FFFFFFF
        elif magic_le == PCAPNG_SHB:
            self.pcapng = True
            self.nanosecond = False
            self._pending = head
            self.big_endian = False
            self.linktype = -1
            self.snaplen = 0
        else:
            raise CaptureFormatError(f"unknown capture magic 0x{magic_le:08x}")

    def _read_exact(self, n: int) -> bytes:
        data = self._pending[:n]
        self._pending = self._pending[n:]
        while len(data) < n:
            more = self.stream.read(n - len(data))
            if not more:
                break
            data += more
        return data

    def close(self) -> None:
        """Close the underlying stream unless it is stdin."""
        if self.stream is not sys.stdin.buffer:
            self.stream.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mapped(self) -> np.ndarray | None:
        """The whole file as a read-only array when it is a regular file, else None (pipes)."""
        try:
            fd = self.stream.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode) or os.fstat(fd).st_size == 0:
                return None
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return None
        # Batches keep the mapping alive through their arrays; it is unmapped when the last goes.
        return np.frombuffer(mm, dtype=np.uint8)

    def _chunks(self) -> Iterator[tuple[np.ndarray, int]]:
        """Yield (buffer, valid length) windows; the caller sends back how many bytes it consumed.

        A regular file is mapped as it is when opened (bytes appended later are not seen), and
        windows are views of the page cache: no read copies, no
        buffer allocation per chunk.  Pipes and other streams are read into fresh buffers.
        """
        mapped = self._mapped()
        if mapped is not None:
            pos = self.stream.tell() - len(self._pending)
            self._pending = b""
            total = mapped.shape[0]
            while True:
                end = min(pos + self.chunk_size, total)
                consumed = yield mapped[pos:end], end - pos
                if end >= total:
                    if end - pos - consumed:
                        raise CaptureFormatError(
                            f"capture ends inside a record ({end - pos - consumed} bytes left over)"
                        )
                    return
                if end - pos - consumed > self.chunk_size // 2:
                    self.chunk_size *= 2  # a record larger than half a window: widen the next ones
                pos += consumed
        carry = self._pending
        self._pending = b""
        while True:
            buf = bytearray(len(carry) + self.chunk_size)
            buf[: len(carry)] = carry
            view = memoryview(buf)
            got = len(carry)
            while got < len(buf):
                n = self.stream.readinto(view[got:]) if hasattr(self.stream, "readinto") else None
                if n is None:
                    more = self.stream.read(len(buf) - got)
                    n = len(more)
                    view[got : got + n] = more
                if not n:
                    break
                got += n
            eof = got < len(buf)
            arr = np.frombuffer(buf, dtype=np.uint8)
            consumed = yield arr, got
            rest = got - consumed
            if eof:
                if rest:
                    raise CaptureFormatError(f"capture ends inside a record ({rest} bytes left over)")
                return
            if rest > self.chunk_size // 2:
                # A record larger than half a chunk: grow so it fits next time.
                self.chunk_size *= 2
            carry = bytes(buf[consumed:got])

    def __iter__(self) -> Iterator[FrameBatch]:
        return self._iter_pcapng() if self.pcapng else self._iter_pcap()

    def _iter_pcap(self) -> Iterator[FrameBatch]:
        gen = self._chunks()
        try:
            arr, got = next(gen)
            while True:
                try:
                    offs, stop = walk_records(arr, 0, got, 16, 8, self.big_endian, MAX_RECORD)
                except ValueError as exc:
                    raise CaptureFormatError(f"corrupt pcap: {exc}") from exc
                if offs.size:
                    yield self._pcap_batch(arr, offs)
                arr, got = gen.send(stop)
        except StopIteration:
            return

    def _pcap_batch(self, arr: np.ndarray, offs: np.ndarray) -> FrameBatch:
        be = self.big_endian
        sec = gather_u32(arr, offs, be).astype(np.int64)
        frac = gather_u32(arr, offs + 4, be).astype(np.int64)
        caplen = gather_u32(arr, offs + 8, be).astype(np.int64)
        wirelen = gather_u32(arr, offs + 12, be).astype(np.int64)
        ts = sec * 1_000_000_000 + (frac if self.nanosecond else frac * 1000)
        return FrameBatch(arr, offs + 16, caplen, wirelen, ts, self.linktype)

    def _iter_pcapng(self) -> Iterator[FrameBatch]:
        gen = self._chunks()
        try:
            arr, got = next(gen)
            while True:
                stop = yield from self._pcapng_chunk(arr, got)
                arr, got = gen.send(stop)
        except StopIteration:
            return

    def _pcapng_chunk(self, arr: np.ndarray, got: int) -> Iterator[FrameBatch]:
        pos = 0
        mv = memoryview(arr)
        while pos + 12 <= got:
            btype = struct.unpack_from(">I" if self.big_endian else "<I", mv, pos)[0]
            if btype == PCAPNG_SHB:
                bom = mv[pos + 8 : pos + 12].tobytes()
                if bom == struct.pack("<I", PCAPNG_BOM):
                    self.big_endian = False
                elif bom == struct.pack(">I", PCAPNG_BOM):
                    self.big_endian = True
                else:
                    raise CaptureFormatError("pcapng section header with bad byte-order magic")
                self.linktypes, self.tsres_ns = [], []
            e = ">" if self.big_endian else "<"
            blen = struct.unpack_from(e + "I", mv, pos + 4)[0]
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                raise CaptureFormatError(f"corrupt pcapng: block at byte {pos} claims {blen} bytes")
            if pos + blen > got:
                break
            if btype == PCAPNG_EPB:
                try:
                    offs, stop = walk_records(arr, pos, got, 0, 4, self.big_endian, MAX_RECORD)
                except ValueError as exc:
                    raise CaptureFormatError(f"corrupt pcapng: {exc}") from exc
                types = gather_u32(arr, offs, self.big_endian)
                k = np.flatnonzero(types != PCAPNG_EPB)
                n = int(k[0]) if k.size else offs.size
                if n:
                    yield from self._epb_batches(arr, offs[:n])
                pos = int(offs[n]) if n < offs.size else stop
                continue
            if btype == PCAPNG_IDB:
                linktype, _r, snaplen = struct.unpack_from(e + "HHI", mv, pos + 8)
                self.linktypes.append(linktype)
                self.tsres_ns.append(self._if_tsresol(mv[pos + 16 : pos + blen - 4], e))
                self.snaplen = max(self.snaplen, snaplen)
                if self.linktype < 0:
                    self.linktype = linktype
            elif btype == PCAPNG_SPB:
                if not self.linktypes:
                    raise CaptureFormatError("pcapng simple packet block before any interface")
                wl = struct.unpack_from(e + "I", mv, pos + 8)[0]
                cl = min(wl, blen - 16)
                yield FrameBatch(
                    arr,
                    np.array([pos + 12], np.int64),
                    np.array([cl], np.int64),
                    np.array([wl], np.int64),
                    np.zeros(1, np.int64),
                    self.linktypes[0],
                )
            pos += blen
        return pos

    @staticmethod
    def _if_tsresol(opts: memoryview, e: str) -> tuple[int, int]:
        i = 0
        while i + 4 <= len(opts):
            code, ln = struct.unpack_from(e + "HH", opts, i)
            if code == 0:
                break
            if code == 9 and ln >= 1:
                v = opts[i + 4]
                if v & 0x80:
                    # Power-of-two resolution: ticks of 2^-n seconds.
                    return (1_000_000_000, 1 << (v & 0x7F))
                exp = v
                return (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))
            i += 4 + ((ln + 3) & ~3)
        return (1000, 1)  # default: microseconds

    def _epb_batches(self, arr: np.ndarray, offs: np.ndarray) -> Iterator[FrameBatch]:
        be = self.big_endian
        iface = gather_u32(arr, offs + 8, be).astype(np.int64)
        hi = gather_u32(arr, offs + 12, be).astype(np.int64)
        lo = gather_u32(arr, offs + 16, be).astype(np.int64)
        caplen = gather_u32(arr, offs + 20, be).astype(np.int64)
        wirelen = gather_u32(arr, offs + 24, be).astype(np.int64)
        if iface.size and int(iface.max()) >= len(self.linktypes):
            raise CaptureFormatError("pcapng packet names an interface that was never described")
        ticks = (hi << 32) | lo
        for ifx in np.unique(iface).tolist():
            sel = iface == ifx if len(self.linktypes) > 1 else slice(None)
            mul, div = self.tsres_ns[ifx]
            ts = ticks[sel] * mul // div if div != 1 else ticks[sel] * mul
            yield FrameBatch(arr, offs[sel] + 28, caplen[sel], wirelen[sel], ts, self.linktypes[ifx])
            if not isinstance(sel, np.ndarray):
                break


def read_all(source: str | BinaryIO | bytes) -> list[FrameBatch]:
    """Read a whole capture into a list of batches (tests and small files)."""
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    with open_capture(source) as reader:
        return list(reader)
