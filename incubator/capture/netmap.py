"""netmap capture (legacy `struct nmreq` API): NIOCREGIF on /dev/netmap, mmap the shared region,
walk the RX rings' slots between head and tail into one FrameBatch.

Layouts follow netmap's `net/netmap.h` (API 14).  No host we test on has /dev/netmap, so this path
is exercised only where the module is loaded (tests skip with that reason elsewhere); the struct
sizes and ioctl numbers are checked against the values netmap.h defines.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import struct

import numpy as np
from celltap.incubator.capture.sources import CaptureUnavailable, netmap_available

from celltap.pcap.batch import LINKTYPE_ETHERNET, FrameBatch

NETMAP_API = 14
NR_REG_ALL_NIC = 1
NMREQ = struct.Struct("16s5I6H3I")  # nr_name .. nr_memsize, slots, rings, ringid, cmd, arg1..3, flags, spare
NMREQ_SIZE = NMREQ.size  # 60


def _iowr(group: str, num: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (ord(group) << 8) | num


NIOCGINFO = _iowr("i", 145, NMREQ_SIZE)
NIOCREGIF = _iowr("i", 146, NMREQ_SIZE)
NIOCRXSYNC = (ord("i") << 8) | 149  # _IO('i', 149)

# struct netmap_if: name[16], version, flags, tx_rings, rx_rings, bufs_head, spare1[5], ring_ofs[]
NIF_TX_RINGS, NIF_RX_RINGS, NIF_RING_OFS = 24, 28, 56
# struct netmap_ring: buf_ofs (i64), num_slots, nr_buf_size, ringid, dir, head, cur, tail ...
R_BUF_OFS, R_NUM_SLOTS, R_BUF_SIZE, R_HEAD, R_CUR, R_TAIL, R_TS = 0, 8, 12, 20, 24, 28, 40
R_SLOTS = 256  # after the cache-aligned semaphore area
SLOT_SIZE = 16  # buf_idx u32, len u16, flags u16, ptr u64


def regif_request(ifname: str) -> bytearray:
    """The nmreq of NIOCREGIF: API version, all hardware rings (NR_REG_ALL_NIC)."""
    zeros5 = (0,) * 4
    zeros6 = (0,) * 6
    return bytearray(NMREQ.pack(ifname.encode()[:15], NETMAP_API, *zeros5, *zeros6, 0, NR_REG_ALL_NIC, 0))


class NetmapCapture:
    """Receive from all hardware RX rings of one interface in netmap mode."""

    def __init__(self, ifname: str) -> None:
        reason = netmap_available()
        if reason is not None:
            raise CaptureUnavailable(f"netmap:{ifname}: {reason}")
        self.ifname = ifname
        self.fd = os.open("/dev/netmap", os.O_RDWR)
        try:
            req = bytearray(
                NMREQ.pack(
                    ifname.encode()[:15], NETMAP_API, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NR_REG_ALL_NIC, 0
                )
            )
            fcntl.ioctl(self.fd, NIOCREGIF, req)
            f = NMREQ.unpack(bytes(req))
            self.offset, self.memsize = f[2], f[3]
            self.map = mmap.mmap(self.fd, self.memsize, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(self.fd)
            raise
        self.buf = np.frombuffer(self.map, np.uint8)
        nif = self.offset
        tx_rings, rx_rings = struct.unpack_from("II", self.map, nif + NIF_TX_RINGS)
        # ring_ofs lists the TX rings (plus the host TX ring), then the RX rings.
        self.rx = [
            nif + struct.unpack_from("q", self.map, nif + NIF_RING_OFS + 8 * (tx_rings + 1 + i))[0]
            for i in range(rx_rings)
        ]
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def fileno(self) -> int:
        """The /dev/netmap descriptor (poll syncs the RX rings)."""
        return self.fd

    def wait(self, timeout_ms: int) -> bool:
        """Wait for frames (poll also syncs the rings)."""
        return bool(self.poller.poll(timeout_ms))

    def read_batch(self, max_blocks: int = 8, max_frames: int = 1 << 30) -> FrameBatch | None:
        """Every frame between head and tail of every RX ring, as one batch into the shared region."""
        del max_blocks, max_frames  # a ring holds at most num_slots frames anyway
        offs: list[np.ndarray] = []
        lens: list[np.ndarray] = []
        self._advance: list[tuple[int, int]] = []
        m = self.map
        for ring in self.rx:
            buf_ofs, num, bsize = struct.unpack_from("qII", m, ring + R_BUF_OFS)
            head, _cur, tail = struct.unpack_from("III", m, ring + R_HEAD)
            if head == tail:
                continue
            idx = np.arange(head, tail if tail > head else tail + num) % num
            slots = np.frombuffer(m, np.uint8, num * SLOT_SIZE, ring + R_SLOTS).reshape(num, SLOT_SIZE)[idx]
            buf_idx = slots[:, 0:4].copy().view("<u4").ravel().astype(np.int64)
            ln = slots[:, 4:6].copy().view("<u2").ravel().astype(np.int64)
            offs.append(ring + buf_ofs + buf_idx * bsize)
            lens.append(ln)
            self._advance.append((ring, tail))
        if not offs:
            return None
        o = np.concatenate(offs)
        ln = np.concatenate(lens)
        now = np.full(o.size, 0, np.int64)
        ts_sec, ts_usec = struct.unpack_from("qq", m, self.rx[0] + R_TS)
        now[:] = ts_sec * 1_000_000_000 + ts_usec * 1000
        return FrameBatch(self.buf, o, ln, ln.copy(), now, LINKTYPE_ETHERNET)

    def release(self) -> None:
        """Hand the consumed slots back (head = cur = tail) and sync."""
        for ring, tail in getattr(self, "_advance", []):
            struct.pack_into("II", self.map, ring + R_HEAD, tail, tail)
        self._advance = []
        fcntl.ioctl(self.fd, NIOCRXSYNC)

    def stats(self) -> object:
        """netmap keeps no drop counter per descriptor; report zeros."""
        from celltap.incubator.capture.afpacket import RingStats

        return RingStats(0, 0)

    def attach_filter(self, program: bytes) -> None:
        """netmap bypasses the kernel stack: socket filters do not apply (DiCAP needs afpacket)."""
        raise CaptureUnavailable("netmap capture cannot run a socket filter; use afpacket: in dicap mode")

    def close(self) -> None:
        """Unmap and close."""
        del self.buf
        try:
            self.map.close()
        except BufferError:
            pass
        os.close(self.fd)
