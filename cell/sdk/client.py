"""Blocking front end: connect to a cell interface (UNIX stream socket), reconnect when the cell restarts."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from celltap.cell.sdk.events import WireError
from celltap.cell.sdk.flows import FlowAnalyzer
from celltap.cell.sdk.loopback import LoopbackWriter
from celltap.cell.sdk.metrics import RECONNECTS
from celltap.cell.sdk.session import Session

log = logging.getLogger(__name__)

RECV_SIZE = 1 << 18


def connect_unix(
    path: str, stop: threading.Event | None = None, max_wait: float | None = None
) -> socket.socket:
    """Connect to a UNIX stream socket, retrying with backoff while it is absent or refusing."""
    delay = 0.05
    deadline = None if max_wait is None else time.monotonic() + max_wait
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if stop is not None and stop.is_set():
                raise InterruptedError("stopped while connecting") from exc
            if deadline is not None and time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def run_socket(
    path: str,
    analyzer: FlowAnalyzer,
    on_records: Callable[[list[dict]], None],
    fmt: str = "text",
    exit_on_eof: bool = False,
    stop: threading.Event | None = None,
    loopback: str | None = None,
) -> None:
    """Read the interface at `path` until stopped (or until EOF with exit_on_eof), handing records on.

    Streams the analyzer hands on go to the cell's L7 loopback socket `loopback` (default: the
    `loopback7` socket of the cell whose interface `path` is, `<home>/tcp/<if>` -> `<home>/loopback7`).
    """
    session = Session(analyzer, fmt, loopback_format="text")
    writer = LoopbackWriter(loopback or default_loopback(path), analyzer.name)
    while stop is None or not stop.is_set():
        try:
            sock = connect_unix(path, stop)
        except InterruptedError:
            break
        RECONNECTS.labels(analyzer.name).inc()
        log.info("%s: connected to %s", analyzer.name, path)
        try:
            sock.settimeout(0.5)
            while stop is None or not stop.is_set():
                try:
                    chunk = sock.recv(RECV_SIZE)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                on_records(session.feed(chunk))
                writer.send(*session.take_loopback())
        except WireError:
            pass  # logged and counted by the session; reconnecting resynchronises the stream
        except ConnectionError as exc:
            log.warning("%s: interface %s: %s", analyzer.name, path, exc)
        finally:
            sock.close()
        on_records(session.disconnected())
        writer.send(*session.take_loopback())
        if exit_on_eof:
            break
        log.warning("%s: interface %s closed; reconnecting", analyzer.name, path)
    writer.close()


def default_loopback(path: str) -> str:
    """The L7 loopback socket of the cell serving interface `path` (`<home>/<proto>/<if>`)."""
    return str(Path(path).resolve().parent.parent / "loopback7")
