"""AF_PACKET capture with a TPACKET_V3 mmap ring: whole blocks of frames become one FrameBatch.

The ring is mapped once as one numpy array; a batch is just offsets and lengths into it, so no
frame is copied on the way in.  The caller processes the batch, then `release()` hands the
blocks back to the kernel.  Several incubator processes can share one NIC with PACKET_FANOUT.
With `promiscuous`, the socket holds a PACKET_MR_PROMISC membership while it lives (a mirror port's
frames are addressed to other hosts): the kernel counts it with the interface's other promiscuous
users and drops it when the socket closes, and it needs no capability beyond NET_RAW (unlike
setting IFF_PROMISC, which takes NET_ADMIN).
"""

from __future__ import annotations

import mmap
import select
import socket
import struct
from dataclasses import dataclass

import numpy as np

from celltap.pcap import scatter_rows
from celltap.pcap.batch import LINKTYPE_ETHERNET, FrameBatch

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_IGNORE_OUTGOING = 23
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
SO_ATTACH_BPF = 50
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
PACKET_FANOUT_HASH = 0
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1.
BLK_STATUS, BLK_NUM_PKTS, BLK_FIRST = 8, 12, 16
# struct tpacket3_hdr
H_NEXT, H_SEC, H_NSEC, H_SNAPLEN, H_LEN, H_STATUS, H_MAC = 0, 4, 8, 12, 16, 20, 24


@dataclass
class RingStats:
    """Kernel counters of the socket since the last read (PACKET_STATISTICS resets them)."""

    packets: int
    drops: int


def with_vlan_tags(batch: FrameBatch, tagged: np.ndarray, tpid: np.ndarray, tci: np.ndarray) -> FrameBatch:
    """A copy of the batch with the 802.1Q tags the kernel took out (VLAN offload) put back."""
    n = len(batch)
    extra = np.where(tagged, 4, 0).astype(np.int64)
    caplen = batch.caplens + extra
    starts = np.zeros(n, np.int64)
    np.cumsum(caplen[:-1], out=starts[1:])
    out = np.empty(int(caplen.sum()), np.uint8)
    mac_len = np.minimum(batch.caplens, 12)
    scatter_rows(out, starts, batch.buf, batch.offsets, mac_len)
    rest = batch.caplens - mac_len
    scatter_rows(out, starts + mac_len + extra, batch.buf, batch.offsets + mac_len, rest)
    t = np.flatnonzero(tagged)
    tag = np.empty((t.size, 4), np.uint8)
    tag[:, 0], tag[:, 1] = tpid[t] >> 8, tpid[t] & 0xFF
    tag[:, 2], tag[:, 3] = tci[t] >> 8, tci[t] & 0xFF
    out[(starts[t] + 12)[:, None] + np.arange(4)] = tag
    return FrameBatch(out, starts, caplen, batch.wirelens + extra, batch.ts_ns, batch.linktype)


# Ring blocks of 256 KiB.  The kernel hands a block over when it is full or its retire timer fires,
# so at a trickle each block holds one timer slice: how long a stall of the reader the ring rides
# out is its number of blocks times the timer, whatever the block size.  Small blocks give more of
# them for the same memory (a 64 MiB ring at 10 ms: 2.56 s, against 0.64 s with 1 MiB blocks), and
# a block still holds any frame (64 KiB at most, GRO included).
BLOCK_SIZE = 256 << 10
MiB = 1 << 20


def blocks_of(nbytes: int) -> int:
    """How many ring blocks hold `nbytes` (at least one)."""
    return max(1, nbytes // BLOCK_SIZE)


class AfPacketCapture:
    """Receive frames from one interface through a TPACKET_V3 ring."""

    def __init__(
        self,
        ifname: str,
        block_size: int = BLOCK_SIZE,
        block_nr: int = 256,
        retire_ms: int = 10,
        fanout_group: int | None = None,
        ignore_outgoing: bool = True,
        bpf: bytes | int | None = None,
        promiscuous: bool = False,
    ) -> None:
        self.ifname = ifname
        # Protocol 0 until bind: an ETH_P_ALL socket would queue frames of every interface
        # (loopback included) in the window before it is bound to ours.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if bpf is not None:
                # Attach before binding so no unfiltered frame is ever queued.
                self.attach_filter(bpf)
            self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            if ignore_outgoing:
                # Inline mode sends on the same interfaces it captures: never see our own frames.
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            frame_size = 2048
            req = struct.pack(
                "7I", block_size, block_nr, frame_size, block_size * block_nr // frame_size, retire_ms, 0, 0
            )
            self.sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.map = mmap.mmap(
                self.sock.fileno(), block_size * block_nr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self.sock.bind((ifname, ETH_P_ALL))  # host order: Python applies htons
            if promiscuous:
                mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
                self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            if fanout_group is not None:
                self.sock.setsockopt(
                    SOL_PACKET, PACKET_FANOUT, (fanout_group & 0xFFFF) | (PACKET_FANOUT_HASH << 16)
                )
        except OSError:
            self.sock.close()
            raise
        self.buf = np.frombuffer(self.map, dtype=np.uint8)
        self.block_size = block_size
        self.block_nr = block_nr
        self.next_block = 0
        self._held: list[int] = []
        self.poller = select.poll()
        self.poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)

    def attach_filter(self, program: bytes | int) -> None:
        """Attach a classic BPF program (packed sock_filter array) or an eBPF one (its fd)."""
        import ctypes

        if isinstance(program, int):
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, struct.pack("i", program))
            return

        n = len(program) // 8
        self._bpf_buf = ctypes.create_string_buffer(program, len(program))
        fprog = struct.pack("HL", n, ctypes.addressof(self._bpf_buf))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def fileno(self) -> int:
        """The socket's descriptor (for poll)."""
        return self.sock.fileno()

    def wait(self, timeout_ms: int) -> bool:
        """Wait until a block is ready; False on timeout."""
        if self._ready(self.next_block):
            return True
        return bool(self.poller.poll(timeout_ms)) and self._ready(self.next_block)

    def _ready(self, block: int) -> bool:
        base = block * self.block_size
        return bool(struct.unpack_from("I", self.map, base + BLK_STATUS)[0] & TP_STATUS_USER)

    def read_batch(self, max_blocks: int = 8, max_frames: int = 1 << 30) -> FrameBatch | None:
        """All frames of the ready blocks (up to max_blocks; no new block once max_frames are
        in) as one batch; None if none ready.

        The batch points into the ring: call `release()` once it has been processed.
        """
        offs: list[int] = []
        m = self.map
        unpack = struct.unpack_from
        for _ in range(max_blocks):
            if len(offs) >= max_frames:
                break
            b = self.next_block
            if not self._ready(b):
                break
            base = b * self.block_size
            num, first = unpack("II", m, base + BLK_NUM_PKTS)
            pos = base + first
            for _i in range(num):
                offs.append(pos)
                pos += unpack("I", m, pos)[0]
            self._held.append(b)
            self.next_block = (b + 1) % self.block_nr
        if not self._held:
            return None
        hdr = np.asarray(offs, dtype=np.int64)
        if hdr.size == 0:
            return FrameBatch(self.buf, hdr, hdr, hdr, hdr, LINKTYPE_ETHERNET)
        words = np.lib.stride_tricks.sliding_window_view(self.buf, 40)[hdr].copy()
        w32 = words.view("<u4")
        sec = w32[:, 1].astype(np.int64)
        nsec = w32[:, 2].astype(np.int64)
        snap = w32[:, 3].astype(np.int64)
        wire = w32[:, 4].astype(np.int64)
        status = w32[:, 5]
        mac = words[:, 24:26].copy().view("<u2").ravel().astype(np.int64)
        batch = FrameBatch(self.buf, hdr + mac, snap, wire, sec * 1_000_000_000 + nsec, LINKTYPE_ETHERNET)
        tagged = (status & TP_STATUS_VLAN_VALID) != 0
        if tagged.any():
            tci = w32[:, 8] & 0xFFFF
            tpid = words[:, 36:38].copy().view("<u2").ravel()
            tpid = np.where((status & TP_STATUS_VLAN_TPID_VALID) != 0, tpid, 0x8100)
            batch = with_vlan_tags(batch, tagged, tpid, tci)
        return batch

    def release(self) -> None:
        """Give the blocks of the last batch back to the kernel."""
        for b in self._held:
            struct.pack_into("I", self.map, b * self.block_size + BLK_STATUS, TP_STATUS_KERNEL)
        self._held.clear()

    def stats(self) -> RingStats:
        """Kernel packet and drop counts since the previous call."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, _freeze = struct.unpack("3I", raw)
        return RingStats(packets, drops)

    def close(self) -> None:
        """Unmap the ring and close the socket."""
        self.release()
        del self.buf
        try:
            self.map.close()
        except BufferError:
            pass  # a batch view is still alive; the mapping goes with the last reference
        self.sock.close()
