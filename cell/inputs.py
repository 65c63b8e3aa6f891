"""Frame sources of the cell: pcap file, VXLAN over UDP (RFC 7348), AF_PACKET interface, pcap stream.

Each live source is a non-blocking socket with `read_batch()` returning a FrameBatch of everything
that is waiting (up to a cap), so one wakeup decodes many frames at once.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import numpy as np

from celltap.pcap import open_capture
from celltap.pcap.batch import LINKTYPE_ETHERNET, FrameBatch

VXLAN_HEADER = 8
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1

SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>; socket.SO_TIMESTAMPNS is missing from older Pythons
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def pcap_batches(path: str) -> Iterator[FrameBatch]:
    """Batches of a pcap / pcapng file."""
    with open_capture(path) as cap:
        yield from cap


class DatagramSource:
    """Shared receive loop of the socket sources."""

    sock: socket.socket
    max_frames = 4096
    bufsize = 65536

    def __init__(self) -> None:
        self.drops: dict[str, int] = {}

    def fileno(self) -> int:
        """The socket's file descriptor (for selectors)."""
        return self.sock.fileno()

    def _frame(self, data: bytes) -> bytes | None:
        return data

    def stamp_frames(self) -> None:
        """Ask the kernel for each frame's receive time (SCM_TIMESTAMPNS), as libpcap does."""
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def read_batch(self) -> FrameBatch | None:
        """Everything waiting on the socket (at most max_frames), or None; each frame keeps the kernel's
        receive time (the read time only when the kernel gave none)."""
        frames: list[bytes] = []
        times: list[int] = []
        recvmsg = self.sock.recvmsg
        for _ in range(self.max_frames):
            try:
                data, anc, _flags, _addr = recvmsg(self.bufsize, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            f = self._frame(data)
            if f is not None:
                frames.append(f)
                ts = 0
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                        sec, nsec = _TIMESPEC.unpack_from(payload)
                        ts = sec * 1_000_000_000 + nsec
                times.append(ts)
        if not frames:
            return None
        now = time.time_ns()
        return FrameBatch.from_frames(frames, [t or now for t in times], LINKTYPE_ETHERNET)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class VxlanSource(DatagramSource):
    """RFC 7348 receiver: UDP datagrams with an 8-byte VXLAN header around an Ethernet frame."""

    def __init__(self, url: str, vni: int | None = None) -> None:
        super().__init__()
        u = urlparse(url)
        host = u.hostname or "127.0.0.1"  # `vxlan://:4789`: this host only; name 0.0.0.0 to take more
        port = u.port or 4789
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, port))
        self.sock.setblocking(False)
        self.stamp_frames()
        self.vni = vni
        self.address = self.sock.getsockname()

    def _frame(self, data: bytes) -> bytes | None:
        if len(data) < VXLAN_HEADER + 14:
            self.drops["vxlan_short"] = self.drops.get("vxlan_short", 0) + 1
            return None
        flags, vni_word = struct.unpack_from(">B3xI", data)
        if not flags & 0x08:
            self.drops["vxlan_no_vni_flag"] = self.drops.get("vxlan_no_vni_flag", 0) + 1
            return None
        if self.vni is not None and vni_word >> 8 != self.vni:
            self.drops["vxlan_other_vni"] = self.drops.get("vxlan_other_vni", 0) + 1
            return None
        return data[VXLAN_HEADER:]


class InterfaceSource(DatagramSource):
    """AF_PACKET receiver on one interface: every frame in both directions, like libpcap."""

    def __init__(self, ifname: str) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((ifname, 0))
        # promiscuous while the socket lives: a mirror port's frames are addressed to other hosts
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
        self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        self.sock.setblocking(False)
        self.stamp_frames()


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
