"""SDK: decoders (any split, both formats, interop with the cell's encoders), flow table bounds, the
sync and asyncio front ends over real UNIX sockets, reconnects when the cell restarts."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest
from celltap.cell.analyzers.http_analyzer import HttpAnalyzer
from celltap.cell.sdk.aio import run_socket_async
from celltap.cell.sdk.binary_format import BinaryDecoder
from celltap.cell.sdk.client import run_socket
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId
from celltap.cell.sdk.flows import FlowAnalyzer, FlowTable
from celltap.cell.sdk.session import make_decoder
from celltap.cell.sdk.text_format import TextDecoder
from prometheus_client import REGISTRY

from tests.analyzers import traffic
from tests.analyzers.streams import event_stream


def _summary(events) -> list[tuple]:
    return [(e.event, e.flow, e.sender, e.data, e.reason, round(e.time, 6)) for e in events]


@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_any_split_of_the_stream_decodes_the_same(fmt: str) -> None:
    stream = event_stream(traffic.http_conversations() + traffic.dns_conversations(), fmt)
    whole = _summary(make_decoder(fmt).feed(stream))
    assert len(whole) > 50
    rng = random.Random(1)
    for _ in range(5):
        dec = make_decoder(fmt)
        events = []
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 2, 7, 63, 64, 65, 1000, 5000])
            events += dec.feed(stream[pos : pos + step])
            pos += step
        assert _summary(events) == whole


def test_text_and_binary_carry_the_same_events() -> None:
    convs = traffic.http_conversations() + traffic.sip_conversations()
    assert _summary(TextDecoder().feed(event_stream(convs, "text"))) == _summary(
        BinaryDecoder().feed(event_stream(convs, "binary"))
    )


def test_decodes_the_cells_own_encoders() -> None:
    """The cell (cell/events.py) is written independently: its bytes must decode to the same facts."""
    from celltap.cell import events as events_mod
    a1, a2 = ipaddress.IPv6Address("2001:db8::1").packed, ipaddress.IPv6Address("2001:db8::2").packed
    ts = 1_700_000_000_123_456_000
    params = inspect.signature(events_mod.WireId).parameters
    for fmt in ("text", "binary"):
        kw = {"fmt": fmt} if "fmt" in params else {}
        w = events_mod.WireId(6, 6, a1, 40000, a2, 443, 1, **kw)
        out: list[bytes] = []
        text = fmt == "text"
        out.append(events_mod.text_created(w, ts) if text else events_mod.binary_created(w, ts))
        data_fn = events_mod.text_data if text else events_mod.binary_data
        data_fn(out, w, 2, events_mod.MATCH_DOWN, b"hello", ts, True)
        data_fn(out, w, 1, events_mod.MATCH_UP, b"x" * 70000, ts, True)  # split into two events
        out.append(
            events_mod.text_destroyed(w, events_mod.REASON_RESET, ts)
            if text
            else events_mod.binary_destroyed(w, events_mod.REASON_RESET, ts)
        )
        evs = make_decoder(fmt).feed(b"".join(out))
        flow = FlowId("2001:db8::1", "2001:db8::2", 40000, 443, 1, "ipv6", "tcp")
        assert [e.event for e in evs] == [CREATED, DATA, DATA, DATA, DESTROYED]
        assert all(e.flow == flow for e in evs)
        assert (evs[1].sender, evs[1].data, evs[1].match) == (2, b"hello", "down")
        assert evs[2].sender == 1 and evs[2].match == "up" and evs[2].data + evs[3].data == b"x" * 70000
        assert evs[4].reason == "RESET"
        assert evs[0].time == pytest.approx(1_700_000_000.123456, abs=1e-6)


class _Collect(FlowAnalyzer):
    name = "collect"

    def __init__(self) -> None:
        super().__init__()
        self.ended: list[str] = []

    def stream(self, flow, time):
        outer = self

        class H:
            def data(self, sender, data, time):
                pass

            def end(self, reason, time):
                outer.ended.append(reason)

        return H()


def test_flow_table_is_bounded_and_counts_drops() -> None:
    a = _Collect()
    table = FlowTable(a, max_streams=3)
    dec = TextDecoder()
    convs = traffic.http_conversations()
    events = dec.feed(event_stream(convs[:5]))
    # keep every flow open: feed only CREATED and DATA
    table.handle([e for e in events if e.event != DESTROYED])
    assert len(table.streams) == 3
    assert table.dropped["flow_table_full"] >= 2
    table.end_all("DISCONNECTED", 0.0)
    assert a.ended == ["DISCONNECTED"] * 3


def _serve(path: str, payloads: list[bytes], gap: float = 0.2) -> threading.Thread:
    """A fake cell that restarts: serve one reader, go away (socket removed), come back with the next."""

    def run() -> None:
        for payload in payloads:
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            srv.listen(1)
            conn, _ = srv.accept()
            # stop listening first, so a fast reconnect cannot land in a backlog that is then reset
            srv.close()
            os.unlink(path)
            conn.sendall(payload)
            conn.close()
            time.sleep(gap)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _reconnects(name: str) -> float:
    return REGISTRY.get_sample_value("celltap_analyzer_reconnects_total", {"analyzer": name}) or 0.0


def test_sync_front_end_reconnects_when_the_cell_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "http0")
    convs = traffic.http_conversations()
    first = event_stream(convs[:2])
    # the first cell dies in the middle of a flow (no DESTROYED for the last one)
    cut = first.rfind(b"event=DESTROYED")
    first = first[: first.rfind(b"\n", 0, cut) + 1]
    second = event_stream(convs[2:])
    th = _serve(path, [first, second])
    records: list[dict] = []
    stop = threading.Event()
    analyzer = HttpAnalyzer()
    before = _reconnects("http")

    def on_records(recs: list[dict]) -> None:
        records.extend(recs)
        if sum("method" in r for r in records) >= 8:
            stop.set()

    runner = threading.Thread(target=run_socket, args=(path, analyzer, on_records, "text", False, stop))
    runner.start()
    runner.join(20)
    th.join(5)
    assert not runner.is_alive()
    uris = sorted(r["uri"] for r in records)
    assert uris == sorted(["/index.html", "/style.css", "/a", "/b", "/upload", "/upload/1", "/old", "/form"])
    assert _reconnects("http") == before + 2


def test_asyncio_front_end_gives_the_same_records(tmp_path: Path) -> None:
    path = str(tmp_path / "dns")
    payload = event_stream(traffic.dns_conversations(), "binary")
    th = _serve(path, [payload, payload])
    from celltap.cell.analyzers.dns_analyzer import DnsAnalyzer

    sync_records: list[dict] = []
    run_socket(path, DnsAnalyzer(), sync_records.extend, "binary", exit_on_eof=True)
    async_records: list[dict] = []

    async def main() -> None:
        await asyncio.wait_for(
            run_socket_async(path, DnsAnalyzer(), async_records.extend, "binary", True), 20
        )

    asyncio.run(main())
    th.join(5)
    assert len(sync_records) == len(traffic.dns_conversations())  # one record per query + response
    assert async_records == sync_records
