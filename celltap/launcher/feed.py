"""Feed a capture into the incubator through a named pipe (the incubator reads it as `pcap:FIFO`).

Going through a FIFO instead of handing the incubator the file lets the launcher show progress,
replay the capture several times (or forever, for a long-running cluster) with timestamps moved
forward each loop so the cells' packet clocks never run backwards, and stop feeding at any time.
Writes block when the incubator falls behind, so the pipe paces the feed.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from celltap.pcap import open_capture
from celltap.pcap.writer import PcapWriter

CHUNK_BYTES = 256 << 10


@dataclass
class CaptureInfo:
    """What the launcher needs to know about a capture before feeding it."""

    frames: int
    wire_bytes: int
    first_ns: int
    last_ns: int
    linktype: int


def capture_info(path: str | Path) -> CaptureInfo:
    """Count frames and bytes of a capture (one pass over its batches)."""
    frames = wire = 0
    first = last = 0
    linktype = 1
    with open_capture(str(path)) as reader:
        for b in reader:
            if len(b) == 0:
                continue
            if frames == 0:
                first = int(b.ts_ns[0])
                linktype = b.linktype
            frames += len(b)
            wire += int(b.wirelens.sum())
            last = max(last, int(b.ts_ns.max()))
    return CaptureInfo(frames, wire, first, last, linktype)


def make_fifo(path: Path) -> Path:
    """Create the named pipe the incubator will read."""
    os.mkfifo(path, 0o600)
    return path


def open_fifo_for_writing(path: Path, alive: Callable[[], bool], timeout: float = 60.0) -> int:
    """Open the FIFO once its reader (the incubator) has it open; gives up if `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            if not alive() or time.monotonic() > deadline:
                raise TimeoutError(f"nobody opened {path} for reading") from None
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


class Feeder:
    """Writes a capture `loops` times (0: until stopped) into a FIFO; counts frames and bytes written."""

    def __init__(
        self,
        source: Path,
        fifo: Path,
        loops: int = 1,
        pps: float = 0.0,
        backlog: Callable[[], int] | None = None,
        max_backlog: int = 96 << 10,
    ) -> None:
        self.source = source
        self.fifo = fifo
        self.loops = loops
        self.pps = pps
        # Backpressure: `backlog()` is the largest receive queue (bytes) among the cells' sockets.
        # The kernel's default limit is about 200 KiB (net.core.rmem_max), and what overflows it
        # never reaches the cell, so the feed waits while a cell is behind.
        self.backlog = backlog
        self.max_backlog = max_backlog
        self.backpressure_waits = 0
        self.info = capture_info(source)
        self.frames_written = 0
        self.bytes_written = 0
        self.loops_done = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.done = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, reader_alive: Callable[[], bool]) -> None:
        """Feed until every loop is written or `stop` is set; closes the FIFO (the incubator sees EOF)."""
        try:
            fd = open_fifo_for_writing(self.fifo, reader_alive)
        except BaseException as exc:
            self.error = exc
            self.done.set()
            return
        span = max(self.info.last_ns - self.info.first_ns, 0) + 1_000_000_000
        t0 = time.monotonic()
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK_BYTES) as out:
                writer = PcapWriter(out, linktype=self.info.linktype, nanosecond=True)
                loop = 0
                while not self.stop.is_set() and (self.loops == 0 or loop < self.loops):
                    shift = np.int64(loop * span)
                    with open_capture(str(self.source), chunk_size=CHUNK_BYTES) as reader:
                        for batch in reader:
                            if self.stop.is_set():
                                break
                            if shift:
                                batch = replace(batch, ts_ns=batch.ts_ns + shift)
                            writer.write_batch(batch)
                            out.flush()
                            self.frames_written += len(batch)
                            self.bytes_written += int(batch.wirelens.sum())
                            while self.backlog is not None and not self.stop.is_set():
                                if self.backlog() <= self.max_backlog:
                                    break
                                self.backpressure_waits += 1
                                self.stop.wait(0.005)
                            if self.pps > 0:
                                ahead = self.frames_written / self.pps - (time.monotonic() - t0)
                                if ahead > 0:
                                    self.stop.wait(ahead)
                    loop += 1
                    self.loops_done = loop
        except BrokenPipeError as exc:
            self.error = exc
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def start(self, reader_alive: Callable[[], bool]) -> None:
        """Run in a background thread."""
        self._thread = threading.Thread(
            target=self.run, args=(reader_alive,), name="celltap-feed", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the feeding thread."""
        if self._thread is not None:
            self._thread.join(timeout)
