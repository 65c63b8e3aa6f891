"""recvmmsg(2) with SO_TIMESTAMPNS: many datagrams per call, each with the kernel's receive time.

Theory of operation.  One preallocated (slots, slot_size) byte array takes the datagrams, one
(slots, 32) array their control messages; every msghdr points at its rows once, at construction.
With only SO_TIMESTAMPNS enabled the kernel writes exactly one control message per datagram, a
cmsghdr (len, level, type: 16 bytes) and a struct timespec (16 bytes), at the start of the slot's
control row, so the receive times of a whole call are read with a few numpy column operations: no
Python object per datagram.  A datagram larger than its slot is flagged MSG_TRUNC and reported.
"""

from __future__ import annotations

import ctypes
import errno
import socket

import numpy as np

from celltap.mmsg import MSG_TRUNC, IoVec, MMsgHdr, MsgHdr, recvmmsg_available, recvmmsg_nowait

SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>; also SCM_TIMESTAMPNS
CONTROL_SIZE = 32  # CMSG_SPACE(sizeof(struct timespec)) on 64-bit Linux


def available() -> bool:
    """True where libc exposes recvmmsg."""
    return recvmmsg_available()


class StampedReceiver:
    """Receive up to `slots` datagrams per call from a non-blocking socket, with kernel receive times."""

    def __init__(self, sock: socket.socket, slots: int = 256, slot_size: int = 65535) -> None:
        if not recvmmsg_available():
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.fd = sock.fileno()
        self.slots = slots
        self.slot_size = slot_size
        self.rows = np.zeros((slots, slot_size), np.uint8)
        self.control = np.zeros((slots, CONTROL_SIZE), np.uint8)
        self.iov = (IoVec * slots)()
        self.msgs = (MMsgHdr * slots)()
        base, cbase = self.rows.ctypes.data, self.control.ctypes.data
        for i in range(slots):
            self.iov[i].iov_base = base + i * slot_size
            self.iov[i].iov_len = slot_size
            h = self.msgs[i].msg_hdr
            h.msg_iov = ctypes.pointer(self.iov[i])
            h.msg_iovlen = 1
            h.msg_control = cbase + i * CONTROL_SIZE
        words = np.frombuffer(self.msgs, dtype=np.uint64).reshape(slots, ctypes.sizeof(MMsgHdr) // 8)
        self._controllen = words[:, MsgHdr.msg_controllen.offset // 8]
        w32 = words.view(np.uint32)
        self._flags = w32[:, MsgHdr.msg_flags.offset // 4]
        self._len = w32[:, MMsgHdr.msg_len.offset // 4]
        self._cmsg = self.control.view(np.int64)  # (slots, 4): len, level|type, tv_sec, tv_nsec

    def recv(self) -> int:
        """One recvmmsg call: how many datagrams now sit in rows 0..n-1 (0 if none is queued)."""
        self._controllen[:] = CONTROL_SIZE  # the kernel overwrites it with what it wrote
        return recvmmsg_nowait(self.fd, self.msgs, self.slots)

    def lengths(self, n: int) -> np.ndarray:
        """Bytes received in each of the n slots (int64; at most slot_size)."""
        return np.minimum(self._len[:n].astype(np.int64), self.slot_size)

    def truncated(self, n: int) -> np.ndarray:
        """Mask of the n datagrams that were larger than their slot."""
        return (self._flags[:n] & MSG_TRUNC) != 0

    def times(self, n: int) -> np.ndarray:
        """The kernel receive time (ns since the epoch) of each of the n datagrams; 0 where none came."""
        c = self._cmsg[:n]
        lv = self.control[:n, 8:16].view(np.int32)
        ok = (self._controllen[:n] >= CONTROL_SIZE) & (lv[:, 0] == socket.SOL_SOCKET)
        ok &= lv[:, 1] == SO_TIMESTAMPNS
        return np.where(ok, c[:, 2] * 1_000_000_000 + c[:, 3], 0)
