"""Replay a capture onto a live interface through an AF_PACKET raw socket, paced in batches.

Every frame is either sent or counted by reason: ENOBUFS (the device queue is full) is retried
with a growing back-off and counted as a retry; a frame still refused after MAX_RETRIES, one larger
than the interface takes (EMSGSIZE) or any other send error is counted as a send error."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import Counter as PromCounter

from celltap.pcap import FrameBatch, open_capture

log = logging.getLogger(__name__)

FRAMES_SENT = PromCounter("celltap_loadgen_replay_frames_total", "Frames written to the interface")
BYTES_SENT = PromCounter("celltap_loadgen_replay_bytes_total", "Frame bytes written to the interface")
SEND_ERRORS = PromCounter(
    "celltap_loadgen_replay_send_errors_total", "Frames not sent, by reason", ["reason"]
)
RETRIES = PromCounter("celltap_loadgen_replay_retries_total", "Send attempts retried, by reason", ["reason"])

MAX_RETRIES = 2000
FATAL = {errno.ENETDOWN, errno.ENODEV, errno.ENXIO}
# Known reasons, exported at 0 from the start (a dashboard shows 0, not No data): ENOBUFS retried (and
# given up after MAX_RETRIES), a frame beyond the interface's MTU, the fatal ones. A rarer errno
# appears at its first occurrence.
RETRY_REASONS = ("enobufs",)
SEND_ERROR_REASONS = ("enobufs", "emsgsize", "enetdown", "enodev", "enxio")
for _reason in SEND_ERROR_REASONS:  # from this module's import, before /metrics is served
    SEND_ERRORS.labels(_reason)
for _reason in RETRY_REASONS:
    RETRIES.labels(_reason)


@dataclass
class ReplayStats:
    """What a replay did."""

    frames: int = 0
    bytes: int = 0
    errors: Counter = field(default_factory=Counter)
    retries: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    loops: int = 0

    def as_dict(self) -> dict:
        """JSON-friendly form with achieved rates."""
        el = max(self.elapsed_s, 1e-9)
        return {
            "frames_sent": self.frames,
            "bytes_sent": self.bytes,
            "send_errors": dict(self.errors),
            "send_errors_total": sum(self.errors.values()),
            "retries": dict(self.retries),
            "elapsed_s": round(self.elapsed_s, 6),
            "pps": round(self.frames / el, 1),
            "mbps": round(self.bytes * 8 / el / 1e6, 3),
            "loops": self.loops,
        }


def open_socket(iface: str, sndbuf: int = 4 << 20) -> socket.socket:
    """A raw AF_PACKET socket bound to `iface` for sending whole Ethernet frames."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind((iface, 0))
    return sock


class _Pacer:
    """Sleeps so that frame n leaves no earlier than its target time; checked once per batch."""

    def __init__(self, pps: float | None, topspeed: bool) -> None:
        self.pps, self.topspeed = pps, topspeed
        self.start = time.perf_counter()
        self.sent = 0
        self.ts0: int | None = None

    def wait(self, next_ts_ns: int) -> None:
        if self.topspeed:
            return
        if self.pps:
            target = self.start + self.sent / self.pps
        else:  # the capture's own timing
            if self.ts0 is None:
                self.ts0 = next_ts_ns
            target = self.start + (next_ts_ns - self.ts0) / 1e9
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def send_batches(
    sock: socket.socket,
    batches: Iterable[FrameBatch],
    stats: ReplayStats,
    pacer: _Pacer,
    batch_size: int,
    stop: threading.Event | None = None,
) -> bool:
    """Send every frame of `batches` in order, pacing every `batch_size` frames; False if stopped."""
    send = sock.send
    for batch in batches:
        mv = memoryview(batch.buf)
        offsets, caplens, ts = batch.offsets.tolist(), batch.caplens.tolist(), batch.ts_ns.tolist()
        n = len(offsets)
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            if stop is not None and stop.is_set():
                return False
            pacer.wait(ts[lo])
            sent = nbytes = 0
            errors: Counter = Counter()
            retries: Counter = Counter()
            for k in range(lo, hi):
                frame = mv[offsets[k] : offsets[k] + caplens[k]]
                attempt = 0
                while True:
                    try:
                        send(frame)
                        sent += 1
                        nbytes += caplens[k]
                        break
                    except OSError as exc:
                        if exc.errno == errno.ENOBUFS and attempt < MAX_RETRIES:
                            attempt += 1
                            retries["enobufs"] += 1
                            time.sleep(min(0.001, 20e-6 * attempt))
                            continue
                        reason = errno.errorcode.get(exc.errno or 0, "oserror").lower()
                        errors[reason] += 1
                        if exc.errno in FATAL:
                            _account(stats, sent, nbytes, errors, retries)
                            raise
                        if errors[reason] == 1:
                            log.warning("replay: frame %d not sent: %s", stats.frames + sent, exc)
                        break
            pacer.sent += hi - lo
            _account(stats, sent, nbytes, errors, retries)
    return True


def _account(stats: ReplayStats, sent: int, nbytes: int, errors: Counter, retries: Counter) -> None:
    stats.frames += sent
    stats.bytes += nbytes
    FRAMES_SENT.inc(sent)
    BYTES_SENT.inc(nbytes)
    for reason, n in errors.items():
        stats.errors[reason] += n
        SEND_ERRORS.labels(reason).inc(n)
    for reason, n in retries.items():
        stats.retries[reason] += n
        RETRIES.labels(reason).inc(n)
    errors.clear()
    retries.clear()


def replay(
    path: str,
    iface: str,
    *,
    pps: float | None = None,
    topspeed: bool = False,
    loop: int = 1,
    batch_size: int | None = None,
    stop: threading.Event | None = None,
) -> ReplayStats:
    """Replay the capture at `path` onto `iface` `loop` times: at `pps`, at top speed, or with the
    capture's own inter-frame timing."""
    if batch_size is None:
        # Pace about once per millisecond: small enough for smooth rates, large enough to be cheap.
        batch_size = max(1, min(1024, int(pps / 1000))) if pps else 256 if topspeed else 1
    stats = ReplayStats()
    sock = open_socket(iface)
    pacer = _Pacer(pps, topspeed)
    start = time.perf_counter()
    try:
        for _ in range(max(1, loop)):
            with open_capture(path) as reader:
                if not send_batches(sock, reader, stats, pacer, batch_size, stop):
                    break
            stats.loops += 1
            pacer.ts0 = None
            if not pps:
                pacer.start = time.perf_counter()
    finally:
        stats.elapsed_s = time.perf_counter() - start
        sock.close()
    return stats
