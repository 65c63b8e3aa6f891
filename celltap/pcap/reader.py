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
from celltap.pcap.walk import RecordError, gather_u32, walk_records

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
PCAPNG_IDB = 0x00000001
PCAPNG_EPB = 0x00000006
PCAPNG_SPB = 0x00000003

DEFAULT_CHUNK = 4 << 20
MAX_RECORD = 1 << 24
EPB_FIXED = 32  # enhanced packet block: 28 bytes before the packet data, 4 after (the length again)
MIN_BLOCK = {PCAPNG_SHB: 28, PCAPNG_IDB: 20, PCAPNG_SPB: 16, PCAPNG_EPB: EPB_FIXED}


class CaptureFormatError(ValueError):
    """The input is not a pcap/pcapng capture, or its structure is corrupt.

    `offset` is the file offset of the damage (-1: not known); the message says it too.
    """

    def __init__(self, message: str, offset: int = -1) -> None:
        super().__init__(message if offset < 0 else f"{message} (at byte {offset})")
        self.offset = offset
        self.path = ""  # the capture's path when it was opened by name


def open_capture(source: str | BinaryIO, chunk_size: int = DEFAULT_CHUNK) -> CaptureReader:
    """Open a pcap or pcapng file (path, '-' for stdin, or binary stream) for batch reading."""
    if isinstance(source, str):
        stream: BinaryIO = sys.stdin.buffer if source == "-" else open(source, "rb")
    else:
        stream = source
    try:
        reader = CaptureReader(stream, chunk_size)
    except CaptureFormatError as exc:
        if stream is not source and stream is not sys.stdin.buffer:
            stream.close()
        exc.path = source if isinstance(source, str) else ""
        raise
    reader.path = source if isinstance(source, str) else ""
    return reader


class CaptureReader:
    """Iterates FrameBatches over a pcap or pcapng stream; the format is detected from its magic."""

    def __init__(self, stream: BinaryIO, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.stream = stream
        self.chunk_size = max(chunk_size, 1 << 16)
        self.path = ""  # set by open_capture; errors carry it
        self._pending = b""
        self.chunk_base = 0  # file offset of the window being walked (error messages name file offsets)
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
            self.chunk_base = 24
        elif magic_le == PCAPNG_SHB:
            self.pcapng = True
            self.nanosecond = False
            self._pending = head
            self.chunk_base = 4  # bytes read from the stream so far (these 4 are put back)
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
                self.chunk_base = pos
                consumed = yield mapped[pos:end], end - pos
                if end >= total:
                    if end - pos - consumed:
                        raise CaptureFormatError(
                            f"capture ends inside a record ({end - pos - consumed} bytes left over)",
                            pos + consumed,
                        )
                    return
                if end - pos - consumed > self.chunk_size // 2:
                    self.chunk_size *= 2  # a record larger than half a window: widen the next ones
                pos += consumed
        carry = self._pending
        self._pending = b""
        base = self.chunk_base - len(carry)  # file offset of carry's first byte
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
            self.chunk_base = base
            consumed = yield arr, got
            rest = got - consumed
            if eof:
                if rest:
                    raise CaptureFormatError(
                        f"capture ends inside a record ({rest} bytes left over)", base + consumed
                    )
                return
            base += consumed
            if rest > self.chunk_size // 2:
                # A record larger than half a chunk: grow so it fits next time.
                self.chunk_size *= 2
            carry = bytes(buf[consumed:got])

    def __iter__(self) -> Iterator[FrameBatch]:
        try:
            yield from self._iter_pcapng() if self.pcapng else self._iter_pcap()
        except CaptureFormatError as exc:
            exc.path = exc.path or self.path
            raise

    def _iter_pcap(self) -> Iterator[FrameBatch]:
        gen = self._chunks()
        try:
            arr, got = next(gen)
            while True:
                try:
                    offs, stop = walk_records(arr, 0, got, 16, 8, self.big_endian, MAX_RECORD)
                except RecordError as exc:
                    # the records before the damage are still read
                    if exc.offsets.size:
                        yield self._pcap_batch(arr, exc.offsets)
                    claims = int(gather_u32(arr, np.array([exc.at + 8]), self.big_endian)[0])
                    raise CaptureFormatError(
                        f"corrupt pcap: record claims {claims} captured bytes", self.chunk_base + exc.at
                    ) from None
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

    def _corrupt(self, what: str, pos: int) -> CaptureFormatError:
        return CaptureFormatError(f"corrupt pcapng: {what}", self.chunk_base + pos)

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
                    raise self._corrupt("section header with bad byte-order magic", pos)
                self.linktypes, self.tsres_ns = [], []
            e = ">" if self.big_endian else "<"
            blen = struct.unpack_from(e + "I", mv, pos + 4)[0]
            if blen < MIN_BLOCK.get(btype, 12) or blen % 4 or blen > MAX_RECORD:
                raise self._corrupt(f"block of type 0x{btype:x} claims {blen} bytes", pos)
            if pos + blen > got:
                break
            if struct.unpack_from(e + "I", mv, pos + blen - 4)[0] != blen:
                raise self._corrupt(f"block of type 0x{btype:x}: trailing length differs from {blen}", pos)
            if btype == PCAPNG_EPB:
                pos = yield from self._epb_run(arr, pos, got)
                continue
            if btype == PCAPNG_IDB:
                linktype, _r, snaplen = struct.unpack_from(e + "HHI", mv, pos + 8)
                self.linktypes.append(linktype)
                try:
                    self.tsres_ns.append(self._if_tsresol(mv[pos + 16 : pos + blen - 4], e))
                except ValueError as exc:
                    raise self._corrupt(str(exc), pos) from None
                self.snaplen = max(self.snaplen, snaplen)
                if self.linktype < 0:
                    self.linktype = linktype
            elif btype == PCAPNG_SPB:
                if not self.linktypes:
                    raise self._corrupt("simple packet block before any interface", pos)
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

    def _epb_run(self, arr: np.ndarray, pos: int, got: int) -> Iterator[FrameBatch]:
        """Walk the blocks from an enhanced packet block at `pos`; yield the run of EPBs as batches and
        return where the next non-EPB block (or the chunk's incomplete tail) starts."""
        error: RecordError | None = None
        try:
            offs, stop = walk_records(arr, pos, got, 0, 4, self.big_endian, MAX_RECORD)
        except RecordError as exc:
            error, offs, stop = exc, exc.offsets, exc.at
        types = gather_u32(arr, offs, self.big_endian)
        k = np.flatnonzero(types != PCAPNG_EPB)
        n = int(k[0]) if k.size else offs.size
        if n:
            yield from self._epb_batches(arr, offs[:n])
        if n < offs.size:
            return int(offs[n])  # a block of another type: the caller takes it (and walks on)
        if error is not None:
            raise self._corrupt(str(error).replace("record", "block"), error.at)
        return stop

    @staticmethod
    def _if_tsresol(opts: memoryview, e: str) -> tuple[int, int]:
        i = 0
        while i + 4 <= len(opts):
            code, ln = struct.unpack_from(e + "HH", opts, i)
            if code == 0:
                break
            if i + 4 + ln > len(opts):
                raise ValueError(f"interface option {code} claims {ln} bytes past its block")
            if code == 9 and ln >= 1:
                v = opts[i + 4]
                if v & 0x80:
                    # Power-of-two resolution: ticks of 2^-n seconds.
                    if v & 0x7F > 62:
                        raise ValueError(f"if_tsresol 2^-{v & 0x7F} is finer than int64 ticks allow")
                    return (1_000_000_000, 1 << (v & 0x7F))
                exp = v
                if exp > 18:
                    raise ValueError(f"if_tsresol 10^-{exp} is finer than int64 ticks allow")
                return (10 ** (9 - exp), 1) if exp <= 9 else (1, 10 ** (exp - 9))
            i += 4 + ((ln + 3) & ~3)
        return (1000, 1)  # default: microseconds

    def _epb_batches(self, arr: np.ndarray, offs: np.ndarray) -> Iterator[FrameBatch]:
        be = self.big_endian
        blen = gather_u32(arr, offs + 4, be).astype(np.int64)
        caplen = gather_u32(arr, offs + 20, be).astype(np.int64)
        # never trust a length: the packet must fit its block, the block must end with its length
        tail = gather_u32(arr, offs + np.maximum(blen, 4) - 4, be).astype(np.int64)
        bad = (blen < EPB_FIXED) | (caplen > blen - EPB_FIXED) | (tail != blen)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            if k:
                yield from self._epb_batches(arr, offs[:k])
            at = int(offs[k])
            raise self._corrupt(
                f"packet block claims {int(caplen[k])} captured bytes in a block of {int(blen[k])}", at
            )
        iface = gather_u32(arr, offs + 8, be).astype(np.int64)
        hi = gather_u32(arr, offs + 12, be).astype(np.int64)
        lo = gather_u32(arr, offs + 16, be).astype(np.int64)
        wirelen = gather_u32(arr, offs + 24, be).astype(np.int64)
        if iface.size and int(iface.max()) >= len(self.linktypes):
            k = int(np.flatnonzero(iface >= len(self.linktypes))[0])
            if k:
                yield from self._epb_batches(arr, offs[:k])
            raise self._corrupt("packet names an interface that was never described", int(offs[k]))
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
