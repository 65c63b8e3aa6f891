"""The Linux mmsghdr layout and libc's recvmmsg / sendmmsg through ctypes (Python's socket module
has neither): many datagrams per system call, for the collector's receive path and the IPFIX
generator's send path."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


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
