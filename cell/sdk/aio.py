"""asyncio front end: the same session core over `asyncio.open_unix_connection`, with reconnects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from celltap.cell.sdk.client import default_loopback
from celltap.cell.sdk.events import WireError
from celltap.cell.sdk.flows import FlowAnalyzer
from celltap.cell.sdk.loopback import LoopbackWriter
from celltap.cell.sdk.metrics import RECONNECTS
from celltap.cell.sdk.session import Session

log = logging.getLogger(__name__)


async def connect_unix(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a UNIX stream socket, retrying with backoff while it is absent or refusing."""
    delay = 0.05
    while True:
        try:
            return await asyncio.open_unix_connection(path, limit=1 << 20)
        except (FileNotFoundError, ConnectionRefusedError):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def run_socket_async(
    path: str,
    analyzer: FlowAnalyzer,
    on_records: Callable[[list[dict]], Awaitable[None] | None],
    fmt: str = "text",
    exit_on_eof: bool = False,
    loopback: str | None = None,
) -> None:
    """Read the interface at `path` until cancelled (or until EOF with exit_on_eof), handing records on.

    Handed-on streams go to the cell's L7 loopback as in `run_socket` (a blocking write to a local UNIX
    socket the cell drains at once).
    """

    async def hand_on(records: list[dict]) -> None:
        result = on_records(records)
        if asyncio.iscoroutine(result):
            await result

    session = Session(analyzer, fmt, loopback_format="text")
    lb_writer = LoopbackWriter(loopback or default_loopback(path), analyzer.name)
    while True:
        reader, writer = await connect_unix(path)
        RECONNECTS.labels(analyzer.name).inc()
        try:
            while True:
                chunk = await reader.read(1 << 18)
                if not chunk:
                    break
                await hand_on(session.feed(chunk))
                lb_writer.send(*session.take_loopback())
        except WireError:
            pass  # logged and counted by the session; reconnecting resynchronises the stream
        except ConnectionError as exc:
            log.warning("%s: interface %s: %s", analyzer.name, path, exc)
        finally:
            writer.close()
        await hand_on(session.disconnected())
        lb_writer.send(*session.take_loopback())
        if exit_on_eof:
            lb_writer.close()
            return
