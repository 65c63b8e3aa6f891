"""Per-cell outputs: raw frames on a NIC, VXLAN (RFC 7348) or Geneve (RFC 8926) over UDP, a pcap file.

Every output carries the frames' capture times where its format has room (celltap/capture_time.py):
a Geneve option, an Arista timestamp header on a NIC (`?ts=arista`), the pcap record header
(nanoseconds); plain VXLAN has none, so its frames get their receive time at the cell.
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

from celltap.capture_time import (
    ARISTA_HEADER,
    GENEVE_DEFAULT_PORT,
    arista_headers,
    geneve_headers,
)
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


# The send errors a cell output is known to meet, as labels: a frame beyond the output's MTU, a full
# device or socket queue, a connected UDP socket told by ICMP that the cell is not listening, the output
# NIC down or gone, no route to the cell. Their series exist from the start, at 0; a rarer errno still
# appears at its first occurrence.
SEND_ERROR_REASONS = tuple(
    f"output_{name.lower()}"
    for name in ("EMSGSIZE", "ENOBUFS", "ECONNREFUSED", "ENETDOWN", "ENXIO", "ENETUNREACH", "EHOSTUNREACH")
)


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
    """Raw frames on an interface (SF-TAP's NIC per cell); `@dstmac` rewrites the destination MAC.

    With `timestamps=True` (`iface:IF?ts=arista`) every frame of 14 bytes or more carries its capture
    time in an Arista timestamp header after the MAC addresses (celltap/capture_time.py); celltap
    cells take it out again.  Off by default: the frames stay exactly as captured (SF-TAP's cells and
    other tools read them), and the cell then stamps its own receive time.
    """

    def __init__(
        self, ifname: str, dst_mac: bytes | None = None, batched: bool = True, timestamps: bool = False
    ) -> None:
        self.spec = f"iface:{ifname}" + ("?ts=arista" if timestamps else "")
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: never receives
        self.sock.bind((ifname, 0))
        self.dst_mac = dst_mac
        self.timestamps = timestamps
        # With a MAC rewrite each frame is two iovecs: the new MAC, then the frame from byte 6.
        self._mac = np.frombuffer(dst_mac, np.uint8).copy() if dst_mac is not None else None
        use = batched and sendmmsg_available()
        parts = 4 if timestamps else (1 if dst_mac is None else 2)
        self._batched = _Batched(self.sock, parts) if use else None

    def send(self, batch: FrameBatch) -> SendResult:
        if len(batch) == 0:
            return 0, 0, {}
        if self._batched is None:
            return self._send_each(batch)
        addr, _keep = self._batched.frame_addresses(batch)  # _keep: the buffer the iovecs point into
        caplens = batch.caplens.astype(np.uintp)
        iov = self._batched.msgs.iovecs(len(batch))
        if self.timestamps:
            _keep_hdr = self._stamped_iovecs(iov, addr, caplens, batch.ts_ns)  # alive while sent
        elif self._mac is None:
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

    def _stamped_iovecs(
        self, iov: np.ndarray, addr: np.ndarray, caplens: np.ndarray, ts_ns: np.ndarray
    ) -> np.ndarray:
        """Four iovecs per frame: MAC (new or own), source MAC, timestamp header, the rest."""
        hdr = arista_headers(ts_ns)
        room = caplens >= 14  # a header needs a whole Ethernet header around it
        cut = np.where(caplens >= 6, 6, 0).astype(np.uintp)  # shorter frames go out unchanged
        iov[:, 0, 0] = addr if self._mac is None else self._mac.ctypes.data
        iov[:, 0, 1] = cut
        iov[:, 1, 0] = addr + cut
        iov[:, 1, 1] = np.where(room, 6, caplens - cut).astype(np.uintp)
        iov[:, 2, 0] = hdr.ctypes.data + ARISTA_HEADER * np.arange(len(hdr), dtype=np.uintp)
        iov[:, 2, 1] = np.where(room, ARISTA_HEADER, 0).astype(np.uintp)
        iov[:, 3, 0] = addr + 12
        iov[:, 3, 1] = np.where(room, caplens - 12, 0).astype(np.uintp)
        return hdr

    def _send_each(self, batch: FrameBatch) -> SendResult:
        body, ends = _frames(batch)
        if self.dst_mac is not None:
            arr = np.frombuffer(body, np.uint8).copy()
            starts = np.concatenate(([0], np.asarray(ends[:-1], np.int64)))
            long_enough = batch.caplens >= 6
            rows = starts[long_enough][:, None] + np.arange(6)
            arr[rows] = np.frombuffer(self.dst_mac, np.uint8)
            body = memoryview(arr)
        if self.timestamps:
            return self._send_each_stamped(body, ends, batch)
        return _send_each(self.sock.send, body, ends)

    def _send_each_stamped(self, body: memoryview, ends: list[int], batch: FrameBatch) -> SendResult:
        """The per-frame fallback with timestamp headers (libc without sendmmsg)."""
        hdr = arista_headers(batch.ts_ns)
        sent = nbytes = 0
        drops: dict[str, int] = {}
        start = 0
        for i, end in enumerate(ends):
            frame = body[start:end]
            parts = [frame[:12], hdr[i].tobytes(), frame[12:]] if end - start >= 14 else [frame]
            try:
                self.sock.sendmsg(parts)
                sent += 1
                nbytes += end - start
            except OSError as exc:
                reason = errno_reason(exc)
                drops[reason] = drops.get(reason, 0) + 1
            start = end
        return sent, nbytes, drops

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


class GeneveOutput(Output):
    """Frames in Geneve (RFC 8926) over UDP to HOST:PORT, each with its capture time in an option.

    The 20-byte header of every datagram (celltap/capture_time.py: VNI, the time option) is one row
    of a numpy array built for the whole batch; the iovecs point at the row and at the frame.
    """

    def __init__(
        self, host: str, port: int = GENEVE_DEFAULT_PORT, vni: int = 0, batched: bool = True
    ) -> None:
        if not 0 <= vni < (1 << 24):
            raise OutputSpecError(f"Geneve VNI must be 0..16777215, got {vni}")
        self.spec = f"geneve://{host}:{port}?vni={vni}"
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self.sock.connect(info[4])
        self.vni = vni
        use = batched and sendmmsg_available()
        self._batched = _Batched(self.sock, 2) if use else None

    def send(self, batch: FrameBatch) -> SendResult:
        if len(batch) == 0:
            return 0, 0, {}
        hdr = geneve_headers(batch.ts_ns, self.vni)
        if self._batched is None:
            body, ends = _frames(batch)
            return _send_each_with(self.sock.sendmsg, body, ends, hdr)
        addr, _keep = self._batched.frame_addresses(batch)  # _keep: the buffer the iovecs point into
        iov = self._batched.msgs.iovecs(len(batch))
        iov[:, 0, 0] = hdr.ctypes.data + hdr.shape[1] * np.arange(len(hdr), dtype=np.uintp)
        iov[:, 0, 1] = hdr.shape[1]
        iov[:, 1, 0] = addr
        iov[:, 1, 1] = batch.caplens.astype(np.uintp)
        return self._batched.send(batch)

    def close(self) -> None:
        self.sock.close()


def _send_each_with(sendmsg: object, body: memoryview, ends: list[int], headers: np.ndarray) -> SendResult:
    """Per-frame fallback with a header row of its own before each frame."""
    sent = nbytes = 0
    drops: dict[str, int] = {}
    start = 0
    for i, end in enumerate(ends):
        try:
            sendmsg([headers[i].tobytes(), body[start:end]])  # type: ignore[operator]
            sent += 1
            nbytes += end - start
        except OSError as exc:
            reason = errno_reason(exc)
            drops[reason] = drops.get(reason, 0) + 1
        start = end
    return sent, nbytes, drops


def _udp_target(spec: str, default_port: int, allowed: set[str]) -> tuple[str, int, dict[str, list[str]]]:
    u = urlsplit(spec)
    if not u.hostname:
        raise OutputSpecError(f"output {spec!r}: needs a host")
    q = parse_qs(u.query)
    unknown = set(q) - allowed
    if unknown:
        raise OutputSpecError(f"output {spec!r}: unknown parameter {sorted(unknown)[0]!r}")
    try:
        port = u.port or default_port
    except ValueError as exc:
        raise OutputSpecError(f"output {spec!r}: {exc}") from exc
    return u.hostname, port, q


def _vni(spec: str, q: dict[str, list[str]]) -> int:
    try:
        return int(q.get("vni", ["0"])[0])
    except ValueError as exc:
        raise OutputSpecError(f"output {spec!r}: {exc}") from exc


def _iface_timestamps(spec: str, query: str) -> bool:
    q = parse_qs(query)
    unknown = set(q) - {"ts"}
    if unknown:
        raise OutputSpecError(f"output {spec!r}: unknown parameter {sorted(unknown)[0]!r}")
    ts = q.get("ts", ["none"])[0]
    if ts not in ("arista", "none"):
        raise OutputSpecError(f"output {spec!r}: ts must be arista or none, got {ts!r}")
    return ts == "arista"


def check_output(spec: str) -> None:
    """Check an output's form without opening it (OutputSpecError naming what is wrong): the config
    check, so that a static cell with a bad output is one error line, not a cell left out at run time."""
    if spec.startswith("pcap:"):
        if not spec[5:]:
            raise OutputSpecError(f"output {spec!r}: pcap needs a file name")
    elif spec.startswith("iface:"):
        rest, _, query = spec[6:].partition("?")
        name, _, mac = rest.partition("@")
        if not name:
            raise OutputSpecError(f"output {spec!r}: iface needs an interface name")
        try:
            if mac:
                parse_mac(mac)
        except ValueError as exc:
            raise OutputSpecError(f"output {spec!r}: {exc}") from None
        _iface_timestamps(spec, query)
    elif spec.startswith(("vxlan://", "geneve://")):
        default = VXLAN_DEFAULT_PORT if spec.startswith("vxlan") else GENEVE_DEFAULT_PORT
        _host, port, q = _udp_target(spec, default, {"vni"})
        if not 0 < port <= 0xFFFF or not 0 <= _vni(spec, q) < 1 << 24:
            raise OutputSpecError(f"output {spec!r}: port must be 1..65535 and vni 0..16777215")
    else:
        raise OutputSpecError(f"unknown output {spec!r} (expected iface:, vxlan://, geneve:// or pcap:)")


def open_output(spec: str) -> Output:
    """Open `iface:IF[@mac][?ts=arista]`, `vxlan://HOST:PORT[?vni=N]`, `geneve://HOST:PORT[?vni=N]`
    or `pcap:FILE` (nanosecond records)."""
    if spec.startswith("pcap:"):
        path = spec[5:]
        if not path:
            raise OutputSpecError(f"output {spec!r}: pcap needs a file name")
        d = os.path.dirname(path)
        if d:
            os.makedirs(d, exist_ok=True)
        return PcapOutput(path, nanosecond=True)
    if spec.startswith("iface:"):
        rest, _, query = spec[6:].partition("?")
        name, _, mac = rest.partition("@")
        if not name:
            raise OutputSpecError(f"output {spec!r}: iface needs an interface name")
        return IfaceOutput(name, parse_mac(mac) if mac else None, timestamps=_iface_timestamps(spec, query))
    if spec.startswith("vxlan://"):
        host, port, q = _udp_target(spec, VXLAN_DEFAULT_PORT, {"vni"})
        return VxlanOutput(host, port, _vni(spec, q))
    if spec.startswith("geneve://"):
        host, port, q = _udp_target(spec, GENEVE_DEFAULT_PORT, {"vni"})
        return GeneveOutput(host, port, _vni(spec, q))
    raise OutputSpecError(f"unknown output {spec!r} (expected iface:, vxlan://, geneve:// or pcap:)")
