"""Per-cell outputs: raw frames on a NIC, VXLAN (RFC 7348) over UDP, or a pcap file.

Each output takes a FrameBatch and returns (frames sent, bytes sent, {drop reason: frames}).
Send errors are counted, never raised: a slow or vanished cell must not stop the incubator.
The socket outputs send a whole batch per sendmmsg(2) call, their iovecs pointing straight into
the batch's buffer (no copy, even for the MAC rewrite or the VXLAN header: those are iovecs of
their own); where libc has no sendmmsg they fall back to one send per frame.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from abc import ABC, abstractmethod
from urllib.parse import parse_qs, urlsplit

import numpy as np

from celltap.mmsg import MessageBatch, sendmmsg_available
from celltap.pcap import pack_pcap_records
from celltap.pcap.batch import FrameBatch, gather_frames

log = logging.getLogger("celltap.incubator.outputs")

ETH_P_ALL = 0x0003
VXLAN_DEFAULT_PORT = 4789
VXLAN_FLAG_I = 0x08

SendResult = tuple[int, int, dict[str, int]]


class OutputSpecError(ValueError):
    """An output URL that cannot be understood."""


def errno_reason(exc: OSError) -> str:
    """Metric label for a send error."""
    return errno_label(exc.errno or 0)


def errno_label(code: int) -> str:
    """Metric label for a send error number (`output_emsgsize`, ...)."""
    name = errno.errorcode.get(code, "oserror")
    return f"output_{name.lower()}"


class Output(ABC):
    """Where one cell's frames go."""

    spec: str

    @abstractmethod
    def send(self, batch: FrameBatch) -> SendResult:
        """Send every frame of `batch`; returns (frames, bytes, drops by reason)."""

    def close(self) -> None:  # noqa: B027 -- most outputs hold a resource; some need no cleanup
        """Release the output's resources."""


def _frames(batch: FrameBatch) -> tuple[memoryview, list[int]]:
    body = gather_frames(batch.buf, batch.offsets, batch.caplens)
    ends = np.cumsum(batch.caplens).tolist()
    return memoryview(body), ends


class PcapOutput(Output):
    """Append the frames to a classic pcap file (the offline split's output).

    The file header is written with the first batch, so the link type is that of the frames
    (pcapng input and Linux cooked captures keep theirs); `linktype` is the fallback for no frames.
    """

    def __init__(self, path: str, linktype: int | None = None, nanosecond: bool = False) -> None:
        self.spec = f"pcap:{path}"
        self.f = open(path, "wb", buffering=1 << 20)
        self.nanosecond = nanosecond
        self.linktype = linktype
        self._header_done = False

    def _header(self, linktype: int) -> None:
        magic = 0xA1B23C4D if self.nanosecond else 0xA1B2C3D4
        self.f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
        self._header_done = True

    def send(self, batch: FrameBatch) -> SendResult:
        if not self._header_done:
            self._header(self.linktype if self.linktype is not None else batch.linktype)
        if len(batch) == 0:
            return 0, 0, {}
        self.f.write(pack_pcap_records(batch, self.nanosecond).data)
        return len(batch), batch.nbytes, {}

    def close(self) -> None:
        if not self._header_done:
            self._header(self.linktype if self.linktype is not None else 1)
        self.f.close()


def parse_mac(text: str) -> bytes:
    """'02:00:00:00:00:01' -> 6 bytes."""
    parts = text.split(":")
    if len(parts) != 6:
        raise OutputSpecError(f"bad MAC address {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError as exc:
        raise OutputSpecError(f"bad MAC address {text!r}") from exc


class _Batched:
    """sendmmsg of whole batches on one socket, `parts` iovecs per frame (needs libc's sendmmsg)."""

    def __init__(self, sock: socket.socket, parts: int) -> None:
        self.fd = sock.fileno()
        self.msgs = MessageBatch(parts)

    @staticmethod
    def frame_addresses(batch: FrameBatch) -> tuple[np.ndarray, np.ndarray]:
        """(start address of each frame, the buffer kept alive while the kernel reads it)."""
        buf = batch.buf if batch.buf.flags.c_contiguous else np.ascontiguousarray(batch.buf)
        return buf.ctypes.data + batch.offsets.astype(np.uintp), buf

    def send(self, batch: FrameBatch) -> SendResult:
        """Send the messages whose iovecs the caller filled in; frame bytes are counted."""
        n = len(batch)
        failed = self.msgs.send(self.fd, n)
        nbytes = batch.nbytes
        drops: dict[str, int] = {}
        for i, code in failed:
            reason = errno_label(code)
            drops[reason] = drops.get(reason, 0) + 1
            nbytes -= int(batch.caplens[i])
        return n - len(failed), nbytes, drops


class IfaceOutput(Output):
    """Raw frames on an interface (SF-TAP's NIC per cell); `@dstmac` rewrites the destination MAC."""

    def __init__(self, ifname: str, dst_mac: bytes | None = None, batched: bool = True) -> None:
        self.spec = f"iface:{ifname}"
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: never receives
        self.sock.bind((ifname, 0))
        self.dst_mac = dst_mac
        # With a MAC rewrite each frame is two iovecs: the new MAC, then the frame from byte 6.
        self._mac = np.frombuffer(dst_mac, np.uint8).copy() if dst_mac is not None else None
        use = batched and sendmmsg_available()
        self._batched = _Batched(self.sock, 1 if dst_mac is None else 2) if use else None

    def send(self, batch: FrameBatch) -> SendResult:
        if len(batch) == 0:
            return 0, 0, {}
        if self._batched is None:
            return self._send_each(batch)
        addr, _keep = self._batched.frame_addresses(batch)  # _keep: the buffer the iovecs point into
        caplens = batch.caplens.astype(np.uintp)
        iov = self._batched.msgs.iovecs(len(batch))
        if self._mac is None:
            iov[:, 0, 0] = addr
            iov[:, 0, 1] = caplens
        else:
            # Frames shorter than a MAC go out unchanged (an empty first iovec), as before.
            cut = np.where(caplens >= 6, 6, 0).astype(np.uintp)
            iov[:, 0, 0] = self._mac.ctypes.data
            iov[:, 0, 1] = cut
            iov[:, 1, 0] = addr + cut
            iov[:, 1, 1] = caplens - cut
        return self._batched.send(batch)

    def _send_each(self, batch: FrameBatch) -> SendResult:
        body, ends = _frames(batch)
        if self.dst_mac is not None:
            arr = np.frombuffer(body, np.uint8).copy()
            starts = np.concatenate(([0], np.asarray(ends[:-1], np.int64)))
            long_enough = batch.caplens >= 6
            rows = starts[long_enough][:, None] + np.arange(6)
            arr[rows] = np.frombuffer(self.dst_mac, np.uint8)
            body = memoryview(arr)
        return _send_each(self.sock.send, body, ends)

    def close(self) -> None:
        self.sock.close()


def _send_each(send: object, body: memoryview, ends: list[int], prefix: bytes = b"") -> SendResult:
    """The per-frame fallback: one send (or sendmsg with `prefix`) per frame."""
    sent = nbytes = 0
    drops: dict[str, int] = {}
    start = 0
    fn = send  # a bound socket method
    for end in ends:
        frame = body[start:end]
        try:
            if prefix:
                fn([prefix, frame])  # type: ignore[operator]
            else:
                fn(frame)  # type: ignore[operator]
            sent += 1
            nbytes += end - start
        except OSError as exc:
            reason = errno_reason(exc)
            drops[reason] = drops.get(reason, 0) + 1
        start = end
    return sent, nbytes, drops


def vxlan_header(vni: int) -> bytes:
    """The 8-byte VXLAN header of RFC 7348: flags (I), 24 reserved bits, VNI, 8 reserved bits."""
    if not 0 <= vni < (1 << 24):
        raise OutputSpecError(f"VXLAN VNI must be 0..16777215, got {vni}")
    return struct.pack("!B3xI", VXLAN_FLAG_I, vni << 8)


class VxlanOutput(Output):
    """Frames encapsulated in VXLAN over UDP to HOST:PORT (Linux vxlan devices decode them)."""

    def __init__(self, host: str, port: int = VXLAN_DEFAULT_PORT, vni: int = 0, batched: bool = True) -> None:
        self.spec = f"vxlan://{host}:{port}?vni={vni}"
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.sock.connect(info[4])
        self.header = vxlan_header(vni)
        self._header = np.frombuffer(self.header, np.uint8).copy()  # the first iovec of every datagram
        use = batched and sendmmsg_available()
        self._batched = _Batched(self.sock, 2) if use else None

    def send(self, batch: FrameBatch) -> SendResult:
        if len(batch) == 0:
            return 0, 0, {}
        if self._batched is None:
            body, ends = _frames(batch)
            return _send_each(self.sock.sendmsg, body, ends, self.header)
        addr, _keep = self._batched.frame_addresses(batch)  # _keep: the buffer the iovecs point into
        iov = self._batched.msgs.iovecs(len(batch))
        iov[:, 0, 0] = self._header.ctypes.data
        iov[:, 0, 1] = len(self.header)
        iov[:, 1, 0] = addr
        iov[:, 1, 1] = batch.caplens.astype(np.uintp)
        return self._batched.send(batch)

    def close(self) -> None:
        self.sock.close()


def check_output(spec: str) -> None:
    """Check an output's form without opening it (OutputSpecError naming what is wrong)."""
    if spec.startswith("pcap:"):
        if not spec[5:]:
            raise OutputSpecError(f"output {spec!r}: pcap needs a file name")
    elif spec.startswith("iface:"):
        name, _, mac = spec[6:].partition("@")
        if not name:
            raise OutputSpecError(f"output {spec!r}: iface needs an interface name")
        if mac:
            try:
                parse_mac(mac)
            except ValueError as exc:
                raise OutputSpecError(f"output {spec!r}: {exc}") from None
    elif spec.startswith("vxlan://"):
        u = urlsplit(spec)
        q = parse_qs(u.query)
        try:
            port = u.port
            vni = int(q.get("vni", ["0"])[0])
        except ValueError as exc:
            raise OutputSpecError(f"output {spec!r}: {exc}") from None
        if not u.hostname or set(q) - {"vni"} or not 0 <= vni < 1 << 24 or port == 0:
            raise OutputSpecError(f"output {spec!r}: expected vxlan://HOST[:PORT][?vni=0..16777215]")
    else:
        raise OutputSpecError(f"unknown output {spec!r} (expected iface:, vxlan:// or pcap:)")


def open_output(spec: str) -> Output:
    """Open `iface:IF[@mac]`, `vxlan://HOST:PORT[?vni=N]` or `pcap:FILE`."""
    if spec.startswith("pcap:"):
        path = spec[5:]
        if not path:
            raise OutputSpecError(f"output {spec!r}: pcap needs a file name")
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        return PcapOutput(path)
    if spec.startswith("iface:"):
        name, _, mac = spec[6:].partition("@")
        if not name:
            raise OutputSpecError(f"output {spec!r}: iface needs an interface name")
        return IfaceOutput(name, parse_mac(mac) if mac else None)
    if spec.startswith("vxlan://"):
        u = urlsplit(spec)
        if not u.hostname:
            raise OutputSpecError(f"output {spec!r}: vxlan needs a host")
        q = parse_qs(u.query)
        unknown = set(q) - {"vni"}
        if unknown:
            raise OutputSpecError(f"output {spec!r}: unknown parameter {sorted(unknown)[0]!r}")
        try:
            vni = int(q.get("vni", ["0"])[0])
            port = u.port or VXLAN_DEFAULT_PORT
        except ValueError as exc:
            raise OutputSpecError(f"output {spec!r}: {exc}") from exc
        return VxlanOutput(u.hostname, port, vni)
    raise OutputSpecError(f"unknown output {spec!r} (expected iface:, vxlan:// or pcap:)")
