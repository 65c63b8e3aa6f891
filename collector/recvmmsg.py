"""recvmmsg(2) through ctypes: many datagrams per system call into one preallocated buffer.

Python's socket module has no recvmmsg; one recvfrom_into per datagram costs a system call and
several Python objects each.  Here one call fills up to `slots` datagrams, their lengths and source
addresses are read back with numpy, and the caller gets (exporter, memoryview) pairs.
"""

from __future__ import annotations

import ctypes
import socket

import numpy as np

from celltap.mmsg import MSG_TRUNC, IoVec, MMsgHdr, MsgHdr, recvmmsg_available, recvmmsg_nowait

SOCKADDR_SIZE = 28  # sockaddr_in6, large enough for both families


def available() -> bool:
    """True where libc exposes recvmmsg."""
    return recvmmsg_available()


class BatchReceiver:
    """Receive up to `slots` datagrams per call from a non-blocking UDP socket."""

    def __init__(self, sock: socket.socket, slots: int = 128, slot_size: int = 65535) -> None:
        if not recvmmsg_available():
            raise OSError("recvmmsg is not available")
        self.sock = sock
        self.fd = sock.fileno()
        self.family = sock.family
        self.slots = slots
        self.slot_size = slot_size
        self.data = bytearray(slots * slot_size)
        self.view = memoryview(self.data)
        self._data_c = (ctypes.c_char * len(self.data)).from_buffer(self.data)
        self.names = bytearray(slots * SOCKADDR_SIZE)
        self._names_c = (ctypes.c_char * len(self.names)).from_buffer(self.names)
        self.iov = (IoVec * slots)()
        self.msgs = (MMsgHdr * slots)()
        base = ctypes.addressof(self._data_c)
        nbase = ctypes.addressof(self._names_c)
        for i in range(slots):
            self.iov[i].iov_base = base + i * slot_size
            self.iov[i].iov_len = slot_size
            h = self.msgs[i].msg_hdr
            h.msg_name = nbase + i * SOCKADDR_SIZE
            h.msg_namelen = SOCKADDR_SIZE
            h.msg_iov = ctypes.pointer(self.iov[i])
            h.msg_iovlen = 1
        # numpy views of the header array: msg_namelen must be reset before each call; msg_len and
        # msg_flags are read back after it.
        words = np.frombuffer(self.msgs, dtype=np.uint32).reshape(slots, ctypes.sizeof(MMsgHdr) // 4)
        self._namelen = words[:, MsgHdr.msg_namelen.offset // 4]
        self._flags = words[:, MsgHdr.msg_flags.offset // 4]
        self._len = words[:, MMsgHdr.msg_len.offset // 4]
        self._names_u8 = np.frombuffer(self.names, dtype=np.uint8).reshape(slots, SOCKADDR_SIZE)
        self._rows_u8 = np.frombuffer(self.data, dtype=np.uint8).reshape(slots, slot_size)
        self._addr_cache: dict[bytes, str] = {}
        self.truncated = 0

    def _exporters(self, n: int) -> list[str]:
        cache = self._addr_cache
        out = []
        if self.family == socket.AF_INET:
            raw = self._names_u8[:n, 4:8]
        else:
            raw = self._names_u8[:n, 8:24]
        for key in map(bytes, raw):
            name = cache.get(key)
            if name is None:
                if len(cache) > 65536:
                    cache.clear()  # spoofed sources must not grow memory without bound
                fam = socket.AF_INET if len(key) == 4 else socket.AF_INET6
                name = socket.inet_ntop(fam, key)
                if name.startswith("::ffff:") and "." in name:
                    name = name[7:]  # IPv4-mapped: report the IPv4 exporter as IPv4 senders do
                cache[key] = name
            out.append(name)
        return out

    def recv(self) -> int:
        """One recvmmsg call: how many datagrams now sit in slots 0..n-1 (0 if none are queued)."""
        self._namelen[:] = SOCKADDR_SIZE
        n = recvmmsg_nowait(self.fd, self.msgs, self.slots)
        if n == 0:
            return 0
        flags = self._flags[:n] & MSG_TRUNC
        if flags.any():
            self.truncated += int((flags != 0).sum())
        return n

    def pairs(self, n: int) -> list[tuple[str, memoryview]]:
        """(exporter, payload view) for the n datagrams of the last recv()."""
        lens = self._len[:n].tolist()
        view = self.view
        size = self.slot_size
        pairs = zip(self._exporters(n), lens, strict=True)
        return [(e, view[i * size : i * size + ln]) for i, (e, ln) in enumerate(pairs)]

    def rows(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]] | None:
        """(rows, lengths, IPv4 source as uint32, {address: exporter}) of the last recv(), or None for
        an IPv6 socket (whose batches take the general path)."""
        if self.family != socket.AF_INET:
            return None
        a = self._names_u8[:n, 4:8].astype(np.uint32)
        addrs = (a[:, 0] << 24) | (a[:, 1] << 16) | (a[:, 2] << 8) | a[:, 3]
        names = {}
        for addr in np.unique(addrs).tolist():
            names[addr] = socket.inet_ntoa(addr.to_bytes(4, "big"))
        return self._rows_u8, self._len[:n], addrs, names

    def receive(self) -> list[tuple[str, memoryview]]:
        """Whatever is queued, up to `slots` datagrams, as (exporter, payload view) pairs."""
        n = self.recv()
        return self.pairs(n) if n else []
