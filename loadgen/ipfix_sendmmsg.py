"""sendmmsg(2) through ctypes for the IPFIX generator: a whole pool of messages per system call.

The messages of one emulated router have the same length, so they sit in one (messages, length)
numpy array; their sequence numbers are stamped for the whole pool at once and one sendmmsg call
hands them all to the kernel.  Python's socket module has no sendmmsg.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

import numpy as np

from celltap.mmsg import SENDMMSG as _SENDMMSG
from celltap.mmsg import IoVec, MMsgHdr


class PoolSender:
    """Send every message of an equal-length pool with one call, sequence numbers stamped in numpy."""

    def __init__(self, sock: socket.socket, messages: list[bytes | bytearray], seq_offset: int) -> None:
        if _SENDMMSG is None:
            raise OSError("sendmmsg is not available")
        lengths = {len(m) for m in messages}
        if len(lengths) != 1:
            raise ValueError("PoolSender needs messages of one length")
        self.fd = sock.fileno()
        self.count = len(messages)
        self.length = lengths.pop()
        self.buf = np.frombuffer(bytearray(b"".join(messages)), dtype=np.uint8).reshape(
            self.count, self.length
        )
        self._seq = self.buf[:, seq_offset : seq_offset + 4]
        self.iov = (IoVec * self.count)()
        self.msgs = (MMsgHdr * self.count)()
        base = self.buf.ctypes.data
        for i in range(self.count):
            self.iov[i].iov_base = base + i * self.length
            self.iov[i].iov_len = self.length
            self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iov[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def stamp(self, first: int, step: int) -> None:
        """Sequence numbers first, first+step, ... for the pool's messages (mod 2**32)."""
        seqs = (first + step * np.arange(self.count, dtype=np.int64)) % (1 << 32)
        self._seq[:] = seqs.astype(">u4").view(np.uint8).reshape(self.count, 4)

    def send(self) -> int:
        """Send the whole pool; returns how many messages the kernel took (all, unless an error)."""
        sent = 0
        while sent < self.count:
            addr = ctypes.addressof(self.msgs) + sent * ctypes.sizeof(MMsgHdr)
            n = _SENDMMSG(self.fd, addr, self.count - sent, 0)
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                if err in (errno.ECONNREFUSED, errno.ENOBUFS, errno.EAGAIN):
                    return sent
                raise OSError(err, os.strerror(err))
            sent += n
        return sent
