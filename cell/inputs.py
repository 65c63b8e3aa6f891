"""Frame sources of the cell: pcap file, VXLAN (RFC 7348) or Geneve (RFC 8926) over UDP, an AF_PACKET
interface, a pcap stream.

Each live source has `read_batch()` returning a FrameBatch of everything that is waiting (up to a cap),
so one wakeup decodes many frames at once, and every frame keeps its own capture time in
`FrameBatch.ts_ns` (int64 nanoseconds since the Unix epoch, UTC):

* `iface:IF` reads a TPACKET_V3 ring (celltap.incubator.capture.afpacket): the time of each frame is
  the kernel's tp_sec/tp_nsec of its tpacket3_hdr.  The frames are copied out of the ring in one
  vectorised pass and the blocks handed back at once.
* `vxlan://` and `geneve://` take datagrams with recvmmsg(2) and SO_TIMESTAMPNS (cell/stamped_recv.py):
  headers are checked and inner frames cut out for the whole call with numpy.  A Geneve datagram's
  frame gets the capture time of celltap's time option (celltap/capture_time.py) when it has one;
  VXLAN, and Geneve without the option, keep the kernel receive time (a third-party mirror).
* On every live input, a frame that carries an Arista timestamp header (an incubator's
  `iface:...?ts=arista` output, or an Arista switch) loses the header and takes its time.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import numpy as np
from celltap.cell.stamped_recv import StampedReceiver

from celltap.capture_time import (
    GENEVE_BASE,
    GENEVE_DEFAULT_PORT,
    GENEVE_PROTO_TEB,
    geneve_time_options,
    strip_arista,
)
from celltap.pcap import open_capture, scatter_rows
from celltap.pcap.batch import LINKTYPE_ETHERNET, FrameBatch
from celltap.socket_drops import udp_receive_drops

VXLAN_HEADER = 8
VXLAN_DEFAULT_PORT = 4789
ETH_MIN = 14
# A carried capture time later than this after the frame's receive time is not believed (clock skew
# between hosts is milliseconds; a bogus future time would move the cell's clock and time out every
# flow): the frame keeps its receive time and is counted as time="future".  Earlier times are
# legitimate (an incubator replaying a capture file sends the file's times).
FUTURE_LIMIT_NS = 60 * 1_000_000_000
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def pcap_batches(path: str) -> Iterator[FrameBatch]:
    """Batches of a pcap / pcapng file."""
    with open_capture(path) as cap:
        yield from cap


def _count(drops: dict[str, int], reason: str, mask: np.ndarray) -> None:
    k = int(np.count_nonzero(mask))
    if k:
        drops[reason] = drops.get(reason, 0) + k


class LiveSource:
    """What the cell needs of a live input: a socket to poll, batches, drop counts by reason."""

    sock: socket.socket
    max_frames = 4096
    # frame bytes of one batch, checked after each recvmmsg call (cell/memory_budget.py, INPUT_MEMORY):
    # with 64 KB datagrams 16 MiB let the cell's RSS grow ~127 MiB, 4 MiB ~64 MiB (rows included)
    max_batch_bytes = 4 << 20

    def __init__(self) -> None:
        self.drops: dict[str, int] = {}
        # frames by where their time came from: "sender" (a Geneve option or Arista header) or "receive"
        self.stamps = {"sender": 0, "receive": 0, "future": 0}

    def fileno(self) -> int:
        """The socket's file descriptor (for selectors)."""
        return self.sock.fileno()

    def read_batch(self) -> FrameBatch | None:
        """Everything waiting (at most about max_frames), or None."""
        raise NotImplementedError

    def settle(self) -> None:
        """Before a last read: let the kernel hand over what it still holds (nothing to do here)."""

    def count_kernel_drops(self) -> None:
        """Add what the kernel dropped before this input could read it to `drops` (read periodically:
        the kernel's counters are not free to read)."""

    def _finish(self, batch: FrameBatch, recv_ns: np.ndarray, carried: np.ndarray) -> FrameBatch:
        """Take Arista timestamp headers out; keep carried times that are plausible; count sources.

        `batch.ts_ns` holds the carried time where `carried`, else the receive time `recv_ns`."""
        batch, stamped = strip_arista(batch)
        if stamped:
            carried = carried | (batch.ts_ns != recv_ns)
        future = carried & (batch.ts_ns > recv_ns + FUTURE_LIMIT_NS)
        k = int(np.count_nonzero(future))
        if k:
            batch.ts_ns = np.where(future, recv_ns, batch.ts_ns)
            carried = carried & ~future
        sender = int(np.count_nonzero(carried))
        self.stamps["sender"] += sender
        self.stamps["future"] += k
        self.stamps["receive"] += len(batch) - sender - k
        return batch

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class TunnelSource(LiveSource):
    """UDP datagrams around Ethernet frames, received with recvmmsg and kernel receive times."""

    def __init__(self, url: str, default_port: int, vni: int | None = None) -> None:
        super().__init__()
        u = urlparse(url)
        host = u.hostname or "127.0.0.1"  # `vxlan://:4789`: this host only; name 0.0.0.0 to take more
        port = u.port or default_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.rx = StampedReceiver(self.sock)
        self.vni = vni
        self.address = self.sock.getsockname()
        self._kernel_seen = udp_receive_drops(self.sock) or 0

    def count_kernel_drops(self) -> None:
        """Datagrams dropped because the socket's receive buffer was full: `buffer_full`."""
        seen = udp_receive_drops(self.sock)
        if seen is not None and seen > self._kernel_seen:
            self.drops["buffer_full"] = self.drops.get("buffer_full", 0) + seen - self._kernel_seen
            self._kernel_seen = seen

    def _inner(self, rows: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kept mask, inner frame offset in its row, carried capture time or 0) of n datagrams."""
        raise NotImplementedError

    def read_batch(self) -> FrameBatch | None:
        parts: list[FrameBatch] = []
        recvs: list[np.ndarray] = []
        sent: list[np.ndarray] = []
        total = nbytes = 0
        rx = self.rx
        while total < self.max_frames and nbytes < self.max_batch_bytes:
            try:
                n = rx.recv()
            except OSError as exc:  # the socket's error, not the traffic's: counted, the cell goes on
                reason = f"receive_{errno.errorcode.get(exc.errno or 0, 'oserror').lower()}"
                self.drops[reason] = self.drops.get(reason, 0) + 1
                break
            if n == 0:
                break
            total += n
            lens = rx.lengths(n)
            trunc = rx.truncated(n)
            _count(self.drops, "truncated", trunc)
            keep, start, sent_ts = self._inner(rx.rows[:n], lens)
            keep &= ~trunc
            idx = np.flatnonzero(keep)
            if idx.size == 0:
                continue
            caplen = lens[idx] - start[idx]
            offs = np.zeros(idx.size, np.int64)
            np.cumsum(caplen[:-1], out=offs[1:])
            buf = np.empty(int(caplen.sum()), np.uint8)
            nbytes += buf.size
            scatter_rows(buf, offs, rx.rows.reshape(-1), idx * rx.slot_size + start[idx], caplen)
            recv_ts = rx.times(n)[idx]
            recv_ts = np.where(recv_ts > 0, recv_ts, time.time_ns())
            has = sent_ts[idx] > 0
            ts = np.where(has, sent_ts[idx], recv_ts)
            parts.append(FrameBatch(buf, offs, caplen, caplen.copy(), ts, LINKTYPE_ETHERNET))
            recvs.append(recv_ts)
            sent.append(has)
        if not parts:
            return None
        batch = parts[0] if len(parts) == 1 else _concat(parts)
        return self._finish(batch, np.concatenate(recvs), np.concatenate(sent))


def _concat(parts: list[FrameBatch]) -> FrameBatch:
    """One batch of several compact ones (each buffer holds exactly its frames, in order)."""
    bufs = [p.buf for p in parts]
    shift = np.cumsum([0] + [b.size for b in bufs[:-1]])
    offs = np.concatenate([p.offsets + s for p, s in zip(parts, shift, strict=True)])
    return FrameBatch(
        np.concatenate(bufs),
        offs,
        np.concatenate([p.caplens for p in parts]),
        np.concatenate([p.wirelens for p in parts]),
        np.concatenate([p.ts_ns for p in parts]),
        LINKTYPE_ETHERNET,
    )


def _u16(rows: np.ndarray, at: int) -> np.ndarray:
    return rows[:, at].astype(np.int64) << 8 | rows[:, at + 1]


def _vni_of(rows: np.ndarray) -> np.ndarray:
    return rows[:, 4].astype(np.int64) << 16 | rows[:, 5].astype(np.int64) << 8 | rows[:, 6]


def vxlan_inner(
    rows: np.ndarray, lens: np.ndarray, vni: int | None, drops: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept mask, inner frame offset, carried time = 0) of n VXLAN datagrams (rows[i, :lens[i]]);
    what is not kept is counted in `drops` by reason."""
    n = lens.shape[0]
    short = lens < VXLAN_HEADER + ETH_MIN
    _count(drops, "vxlan_short", short)
    keep = ~short
    no_flag = keep & ((rows[:, 0] & 0x08) == 0)
    _count(drops, "vxlan_no_vni_flag", no_flag)
    keep &= ~no_flag
    if vni is not None:
        other = keep & (_vni_of(rows) != vni)
        _count(drops, "vxlan_other_vni", other)
        keep &= ~other
    return keep, np.full(n, VXLAN_HEADER, np.int64), np.zeros(n, np.int64)


def geneve_inner(
    rows: np.ndarray, lens: np.ndarray, vni: int | None, drops: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept mask, inner frame offset, carried capture time or 0) of n Geneve datagrams
    (rows[i, :lens[i]]); what is not kept is counted in `drops` by reason."""
    n = lens.shape[0]
    start = GENEVE_BASE + 4 * (rows[:, 0] & 0x3F).astype(np.int64)
    checks = (
        ("geneve_short", lens < start + ETH_MIN),
        ("geneve_bad_version", (rows[:, 0] >> 6) != 0),
        ("geneve_not_ethernet", _u16(rows, 2) != GENEVE_PROTO_TEB),
        # RFC 8926 3.4: a receiver that does not process a critical option must drop the packet
        ("geneve_critical_option", (rows[:, 1] & 0x40) != 0),
    )
    keep = np.ones(n, bool)
    for reason, bad in checks:
        hit = keep & bad
        _count(drops, reason, hit)
        keep &= ~hit
    if vni is not None:
        other = keep & (_vni_of(rows) != vni)
        _count(drops, "geneve_other_vni", other)
        keep &= ~other
    ts = np.zeros(n, np.int64)
    has_opts = keep & (start > GENEVE_BASE)
    if has_opts.any():
        i = np.flatnonzero(has_opts)
        ts[i] = geneve_time_options(rows, i, np.full(i.size, GENEVE_BASE), start[i])
    return keep, start, ts


class VxlanSource(TunnelSource):
    """RFC 7348 receiver: an 8-byte VXLAN header around an Ethernet frame; frames keep their receive time."""

    def __init__(self, url: str, vni: int | None = None) -> None:
        super().__init__(url, VXLAN_DEFAULT_PORT, vni)

    def _inner(self, rows: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return vxlan_inner(rows, lens, self.vni, self.drops)


class GeneveSource(TunnelSource):
    """RFC 8926 receiver: Geneve around Ethernet frames; celltap's time option gives the capture time."""

    def __init__(self, url: str, vni: int | None = None) -> None:
        super().__init__(url, GENEVE_DEFAULT_PORT, vni)

    def _inner(self, rows: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return geneve_inner(rows, lens, self.vni, self.drops)


class InterfaceSource(LiveSource):
    """AF_PACKET TPACKET_V3 ring on one interface: every frame in both directions, like libpcap, each
    with the kernel's capture time."""

    # 32 MiB of ring in the shared small blocks (afpacket.BLOCK_SIZE): with the 10 ms retire timer
    # it rides out a 1.3 s stall of the cell at a trickle.  Frames the kernel drops when the ring is
    # full are counted as `capture_ring_full`.
    ring_bytes = 32 << 20
    batch_bytes = 8 << 20  # frame bytes taken from the ring per read (whole blocks)

    def __init__(self, ifname: str) -> None:
        super().__init__()
        from celltap.incubator.capture.afpacket import AfPacketCapture, blocks_of

        self.retire_ms = 10
        self.max_blocks = blocks_of(self.batch_bytes)
        self.ring = AfPacketCapture(
            ifname,
            block_nr=blocks_of(self.ring_bytes),
            retire_ms=self.retire_ms,
            ignore_outgoing=False,
        )
        self.sock = self.ring.sock
        # promiscuous while the socket lives: a mirror port's frames are addressed to other hosts
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)

    def count_kernel_drops(self) -> None:
        """Frames the kernel dropped because every block of the ring was full: `capture_ring_full`."""
        lost = self.ring.stats().drops  # PACKET_STATISTICS: since the previous read
        if lost:
            self.drops["capture_ring_full"] = self.drops.get("capture_ring_full", 0) + lost

    def read_batch(self) -> FrameBatch | None:
        batch = self.ring.read_batch(max_blocks=self.max_blocks, max_frames=self.max_frames)
        if batch is None:
            return None
        try:
            n = len(batch)
            caplen = batch.caplens.astype(np.int64)
            offs = np.zeros(n, np.int64)
            if n > 1:
                np.cumsum(caplen[:-1], out=offs[1:])
            buf = np.empty(int(caplen.sum()), np.uint8)
            scatter_rows(buf, offs, batch.buf, batch.offsets, caplen)
            own = FrameBatch(buf, offs, caplen, batch.wirelens.copy(), batch.ts_ns.copy(), LINKTYPE_ETHERNET)
        finally:
            self.ring.release()  # the frames are copied out: the blocks go back to the kernel now
        if not n:
            return None
        return self._finish(own, own.ts_ns.copy(), np.zeros(n, bool))

    def settle(self) -> None:
        """The ring's open block is handed over when its retire timer fires: wait for it once."""
        time.sleep(2 * self.retire_ms / 1000)

    def close(self) -> None:
        self.ring.close()


# The name earlier code imported: every live source of the cell.
DatagramSource = LiveSource


class PcapStreamParser:
    """Incremental pcap (not pcapng) parser for the injection socket: bytes in, FrameBatches out."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.header: tuple[str, int, int] | None = None  # (endian, ts multiplier to ns, linktype)
        self.failed = False

    def feed(self, data: bytes) -> FrameBatch | None:
        """Consume bytes; return a batch of the complete records, or None."""
        if self.failed:
            return None
        self.buf += data
        if self.header is None:
            if len(self.buf) < 24:
                return None
            magic = bytes(self.buf[:4])
            table = {
                b"\xd4\xc3\xb2\xa1": ("<", 1000),
                b"\xa1\xb2\xc3\xd4": (">", 1000),
                b"\x4d\x3c\xb2\xa1": ("<", 1),
                b"\xa1\xb2\x3c\x4d": (">", 1),
            }
            if magic not in table:
                self.failed = True
                return None
            e, mul = table[magic]
            linktype = struct.unpack_from(e + "I", self.buf, 20)[0] & 0xFFFF
            self.header = (e, mul, linktype)
            del self.buf[:24]
        e, mul, linktype = self.header
        rec = struct.Struct(e + "IIII")
        frames: list[bytes] = []
        ts: list[int] = []
        wires: list[int] = []
        pos = 0
        n = len(self.buf)
        while n - pos >= 16:
            sec, frac, incl, orig = rec.unpack_from(self.buf, pos)
            if incl > 262144:
                self.failed = True
                break
            if n - pos - 16 < incl:
                break
            frames.append(bytes(self.buf[pos + 16 : pos + 16 + incl]))
            ts.append(sec * 1_000_000_000 + frac * mul)
            wires.append(orig)
            pos += 16 + incl
        del self.buf[:pos]
        if not frames:
            return None
        fb = FrameBatch.from_frames(frames, ts, linktype)
        fb.wirelens = np.asarray(wires, dtype=np.int64)
        return fb
