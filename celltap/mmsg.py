"""The Linux mmsghdr layout and libc's recvmmsg / sendmmsg through ctypes (Python's socket module
has neither): many datagrams per system call, for the collector's receive path, the IPFIX
generator's and the incubator's send paths."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable

import numpy as np


class IoVec(ctypes.Structure):
    """struct iovec."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    """struct msghdr."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    """struct mmsghdr."""

    _fields_ = (("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint))


def libc_function(name: str, argtypes: tuple) -> Callable[..., int] | None:
    """libc's `name` with errno kept, or None where libc lacks it (then callers use a plain loop)."""
    lib = ctypes.util.find_library("c")
    if not lib:
        return None
    try:
        fn = getattr(ctypes.CDLL(lib, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


# sendmmsg(fd, struct mmsghdr *, count, flags): None where libc lacks it
SENDMMSG = libc_function("sendmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int))
# recvmmsg(fd, struct mmsghdr *, count, flags, struct timespec *): None where libc lacks it
RECVMMSG = libc_function(
    "recvmmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
)
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


def recvmmsg_available() -> bool:
    """True where libc exposes recvmmsg (Linux glibc / musl)."""
    return RECVMMSG is not None


def recvmmsg_nowait(fd: int, msgs: ctypes.Array, slots: int) -> int:
    """One non-blocking recvmmsg into `msgs`: how many slots it filled (0 when nothing is queued or
    a signal came first); any other error raises OSError."""
    if RECVMMSG is None:
        raise OSError(errno.ENOSYS, "recvmmsg is not available")
    n = RECVMMSG(fd, ctypes.addressof(msgs), slots, MSG_DONTWAIT, None)
    if n <= 0:
        err = ctypes.get_errno()
        if n < 0 and err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
            raise OSError(err, os.strerror(err))
        return 0
    return n


# mmsghdr and iovec as rows of pointer-sized words, so numpy fills a whole batch per column.
_WORD = ctypes.sizeof(ctypes.c_void_p)
_MSG_WORDS = ctypes.sizeof(MMsgHdr) // _WORD
_IOV_AT = (MMsgHdr.msg_hdr.offset + MsgHdr.msg_iov.offset) // _WORD  # type: ignore[attr-defined]
_IOVLEN_AT = (MMsgHdr.msg_hdr.offset + MsgHdr.msg_iovlen.offset) // _WORD  # type: ignore[attr-defined]
_IOV_WORDS = ctypes.sizeof(IoVec) // _WORD


def sendmmsg_available() -> bool:
    """True where libc exposes sendmmsg."""
    return SENDMMSG is not None


class MessageBatch:
    """Reusable mmsghdr and iovec arrays for sendmmsg(2) with `parts` iovecs per message.

    Both arrays are numpy (pointer-sized words): a caller fills the iovecs of a whole batch with
    column assignments, and the headers' iovec pointers are written once per allocation.  The
    arrays grow (never shrink) when a batch is bigger than any before.  No msg_name: the socket
    is connected (UDP) or bound to its interface (AF_PACKET).
    """

    def __init__(self, parts: int, capacity: int = 256) -> None:
        if SENDMMSG is None:
            raise OSError(errno.ENOSYS, "sendmmsg is not available")
        self.parts = parts
        self.capacity = 0
        self._hdr = np.zeros((0, _MSG_WORDS), np.uintp)
        self._iov = np.zeros((0, parts, _IOV_WORDS), np.uintp)
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        self._hdr = np.zeros((capacity, _MSG_WORDS), np.uintp)
        self._iov = np.zeros((capacity, self.parts, _IOV_WORDS), np.uintp)
        step = self.parts * ctypes.sizeof(IoVec)
        self._hdr[:, _IOV_AT] = self._iov.ctypes.data + step * np.arange(capacity, dtype=np.uintp)
        self._hdr[:, _IOVLEN_AT] = self.parts
        self.capacity = capacity

    def iovecs(self, n: int) -> np.ndarray:
        """The (n, parts, 2) [base, len] words of the next batch's iovecs, to be filled in."""
        if n > self.capacity:
            self._grow(max(n, 2 * self.capacity))
        return self._iov[:n]

    def send(self, fd: int, n: int) -> list[tuple[int, int]]:
        """Send messages 0..n-1 in order; returns (index, errno) of each message that failed.

        sendmmsg stops at the first message it cannot send and reports the ones before it; the
        failing message is sent again alone by the next call, which then returns its error.  So
        each failure costs one extra call, and every other message of the batch is still sent.
        """
        assert SENDMMSG is not None
        failed: list[tuple[int, int]] = []
        start = 0
        base = self._hdr.ctypes.data
        size = ctypes.sizeof(MMsgHdr)
        while start < n:
            done = SENDMMSG(fd, base + start * size, n - start, 0)
            if done > 0:
                start += done
                continue
            err = ctypes.get_errno() if done < 0 else errno.EIO
            if err == errno.EINTR:
                continue
            failed.append((start, err))
            start += 1
        return failed
