"""UNIX-socket interfaces (the I/O edge): SF-TAP's socket layout, one bounded buffer per reader.

`<home>` is created 0750 with `tcp/`, `udp/`, `icmp/`; output sockets are 0660. The input sockets
(`loopback7`, `pcap`) take frames and streams into the cell, so whoever connects can feed it or end
it: they are 0600 (the cell's user only), or 0660 with `socket_group` when one is configured (and
`<home>` 0751, so that group can reach them); they are bound under umask 0177, so they never exist
with a wider mode, even for an instant. Every connected reader of an
interface gets all of its events. Each reader has a bounded send buffer: when a batch's events for an
interface do not fit, that batch is dropped for that reader only (whole events, so framing survives),
counted per interface and reason. Live inputs never wait for readers. With `pace=True` (offline runs)
the cell waits for a reader to drain, up to `stall_timeout` seconds, before dropping.
The L7 loopback and the pcap injection socket are read here and handed to callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("celltap.cell.interfaces")


class Reader:
    """One connected reader of an interface."""

    __slots__ = ("name", "queue", "queued", "sock", "stuck")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.queue: deque[memoryview] = deque()
        self.queued = 0
        self.stuck = False


class InterfaceServer:
    """Listening sockets, connected readers, and the input sockets (loopback7, pcap)."""

    def __init__(
        self,
        home: str,
        sink_names: list[str],
        buffer_cap: int = 64 << 20,
        loopback: str | None = None,
        on_loopback: Callable[[socket.socket, bytes], None] | None = None,
        pcap: str | None = None,
        on_pcap: Callable[[socket.socket, bytes], None] | None = None,
        on_input_close: Callable[[socket.socket], None] | None = None,
        socket_group: int | None = None,
    ) -> None:
        self.home = Path(home)
        self.socket_group = socket_group
        self.buffer_cap = buffer_cap
        self.sel = selectors.DefaultSelector()
        self.readers: dict[str, list[Reader]] = {name: [] for name in sink_names}
        self.listeners: dict[str, socket.socket] = {}
        self.inputs: dict[socket.socket, str] = {}
        self.on_loopback = on_loopback
        self.on_pcap = on_pcap
        self.on_input_close = on_input_close
        self.drops: dict[tuple[str, str], list[int]] = {}  # (interface, reason) -> [events, bytes]
        self.sent: dict[str, list[int]] = {}  # interface -> [events, bytes] accepted for readers
        self.pace = False
        self.stall_timeout = 10.0
        old = os.umask(0o007)
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            # With socket_group, its members must reach <home>/loopback7: search (not list) for others.
            os.chmod(self.home, 0o750 if socket_group is None else 0o751)
            for sub in ("tcp", "udp", "icmp"):
                (self.home / sub).mkdir(exist_ok=True)
                os.chmod(self.home / sub, 0o750)
            for name in sink_names:
                self._listen(name, "out")
            if loopback:
                self._listen(loopback, "loopback")
            if pcap:
                self._listen(pcap, "pcap")
        finally:
            os.umask(old)

    def _listen(self, name: str, kind: str) -> None:
        path = self.home / name
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if kind == "out":
            sock.bind(str(path))
            os.chmod(path, 0o660)
        else:
            old = os.umask(0o177)  # an input socket is never connectable by others, not even briefly
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            if self.socket_group is not None:
                try:
                    os.chown(path, -1, self.socket_group)
                except PermissionError:
                    sock.close()
                    raise ValueError(
                        f"socket_group {self.socket_group}: cannot give {path} to that group "
                        "(the cell's user must be a member of it)"
                    ) from None
                os.chmod(path, 0o660)
        sock.listen(128)
        sock.setblocking(False)
        self.listeners[name] = sock
        self.sel.register(sock, selectors.EVENT_READ, ("listen", name, kind))

    def path(self, name: str) -> Path:
        """Filesystem path of an interface socket."""
        return self.home / name

    def connected(self, name: str) -> int:
        """Number of readers connected to an interface."""
        return len(self.readers.get(name, ()))

    # ------------------------------------------------------------------ event loop
    def poll(self, timeout: float = 0.0) -> None:
        """Accept readers, read input sockets, write queued bytes; wait at most `timeout` seconds."""
        for key, mask in self.sel.select(timeout):
            data = key.data
            if data[0] == "listen":
                self._accept(key.fileobj, data[1], data[2])  # type: ignore[arg-type]
            elif data[0] == "reader":
                reader: Reader = data[1]
                if mask & selectors.EVENT_READ:
                    self._reader_readable(reader)
                if mask & selectors.EVENT_WRITE and reader.sock.fileno() >= 0:
                    self._send(reader)
            elif data[0] == "input":
                self._input_readable(key.fileobj, data[1])  # type: ignore[arg-type]
            elif data[0] == "cb":
                data[1]()

    def _accept(self, lsock: socket.socket, name: str, kind: str) -> None:
        while True:
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            if kind == "out":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
                reader = Reader(conn, name)
                self.readers[name].append(reader)
                self.sel.register(conn, selectors.EVENT_READ, ("reader", reader))
                log.info("reader connected on %s", name)
            else:
                self.inputs[conn] = kind
                self.sel.register(conn, selectors.EVENT_READ, ("input", kind))
                log.info("%s input connected", kind)

    def _reader_readable(self, reader: Reader) -> None:
        try:
            data = reader.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_reader(reader)
        # anything a reader writes on an output interface is ignored, as in SF-TAP

    def _close_reader(self, reader: Reader) -> None:
        if reader.queued:
            self._count_drop(reader.name, "reader_closed", 0, reader.queued)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(reader.sock)
        with contextlib.suppress(ValueError):
            self.readers[reader.name].remove(reader)
        reader.sock.close()
        reader.queue.clear()
        reader.queued = 0
        log.info("reader closed on %s", reader.name)

    def _input_readable(self, sock: socket.socket, kind: str) -> None:
        try:
            data = sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        cb = self.on_loopback if kind == "loopback" else self.on_pcap
        if not data:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(sock)
            self.inputs.pop(sock, None)
            if self.on_input_close is not None:
                self.on_input_close(sock)
            sock.close()
            return
        if cb is not None:
            cb(sock, data)

    # ------------------------------------------------------------------ output
    def _count_drop(self, name: str, reason: str, events: int, nbytes: int) -> None:
        c = self.drops.setdefault((name, reason), [0, 0])
        c[0] += events
        c[1] += nbytes

    def deliver(self, name: str, parts: list[bytes], events: int) -> None:
        """Queue one batch of an interface's events to every reader of it (or count it dropped)."""
        readers = self.readers.get(name)
        data = b"".join(parts)
        if not data:
            return
        if not readers:
            self._count_drop(name, "no_reader", events, len(data))
            return
        view = memoryview(data)
        for reader in list(readers):
            # the cap bounds a reader's backlog: one batch always fits into an empty queue
            if (
                reader.queued
                and reader.queued + len(data) > self.buffer_cap
                and self.pace
                and not reader.stuck
            ):
                self._wait_for(reader, len(data))
            if reader.sock.fileno() < 0:
                continue
            if reader.queued and reader.queued + len(data) > self.buffer_cap:
                self._count_drop(name, "reader_stuck" if reader.stuck else "reader_slow", events, len(data))
                continue
            was_empty = not reader.queue
            reader.queue.append(view)
            reader.queued += len(data)
            s = self.sent.setdefault(name, [0, 0])
            s[0] += events
            s[1] += len(data)
            self._send(reader)
            if was_empty and reader.queue:
                self.sel.modify(reader.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("reader", reader))

    def _wait_for(self, reader: Reader, need: int) -> None:
        deadline = time.monotonic() + self.stall_timeout
        while reader.queued and reader.queued + need > self.buffer_cap and reader.sock.fileno() >= 0:
            left = deadline - time.monotonic()
            if left <= 0:
                reader.stuck = True
                log.warning(
                    "reader on %s stalled for %.1fs: dropping its events from now on",
                    reader.name,
                    self.stall_timeout,
                )
                return
            self.poll(min(left, 0.05))

    def _send(self, reader: Reader) -> None:
        q = reader.queue
        sock = reader.sock
        while q:
            head = q[0]
            try:
                n = sock.send(head)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close_reader(reader)
                return
            reader.queued -= n
            if n == len(head):
                q.popleft()
            else:
                q[0] = head[n:]
                break
        if not q and sock.fileno() >= 0:
            reader.stuck = False
            with contextlib.suppress(KeyError, ValueError):
                self.sel.modify(sock, selectors.EVENT_READ, ("reader", reader))

    def pending_bytes(self) -> int:
        """Bytes queued for all readers."""
        return sum(r.queued for rs in self.readers.values() for r in rs)

    def drain(self, timeout: float) -> None:
        """Write queued bytes until all are sent or `timeout` seconds pass (then readers lose them)."""
        deadline = time.monotonic() + timeout
        while self.pending_bytes() and time.monotonic() < deadline:
            self.poll(0.02)

    def close(self) -> None:
        """Close every socket and remove the socket files."""
        for rs in self.readers.values():
            for r in list(rs):
                with contextlib.suppress(OSError):
                    r.sock.shutdown(socket.SHUT_RDWR)
                self._close_reader(r)
        for sock in list(self.inputs):
            sock.close()
        for name, sock in self.listeners.items():
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                (self.home / name).unlink()
        self.sel.close()
