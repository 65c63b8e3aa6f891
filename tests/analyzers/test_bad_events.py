"""Bad interface events cost only themselves; an analyzer exception costs only its flow (crafted events).

The process test runs a real `celltap analyzer` on a real UNIX socket that delivers good flows with
bad events between them (a header field without `=`, DATA with `from=0` / `from=3`; in the binary
format an unknown event code and from=2): the process keeps running, writes the good flows' records
and counts the bad events by reason on its /metrics endpoint. Expected records come from the crafted
input itself (each good flow is one GET answered 200).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from celltap.cell.sdk.binary_format import encode_binary
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId
from celltap.cell.sdk.flows import FlowAnalyzer, FlowTable
from celltap.cell.sdk.session import Session
from celltap.cell.sdk.text_format import encode_text

REQUEST = b"GET /n HTTP/1.1\r\nHost: a.example\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def flow(port: int) -> FlowId:
    return FlowId("10.9.0.1", "10.9.0.2", port, 80, 0, "ipv4", "tcp")


def good_flow(fmt: str, port: int, t: float) -> bytes:
    enc = encode_text if fmt == "text" else encode_binary
    f = flow(port)
    return b"".join(
        [
            enc(f, CREATED, t),
            enc(f, DATA, t + 0.1, 1, REQUEST),
            enc(f, DATA, t + 0.2, 2, RESPONSE),
            enc(f, DESTROYED, t + 0.3),
        ]
    )


def bad_events(fmt: str) -> tuple[bytes, dict[str, int]]:
    """Bad events (and how many of each reason the analyzer must count)."""
    if fmt == "text":
        head = b"ip1=10.9.0.1,ip2=10.9.0.2,port1=41000,port2=80,hop=0,l3=ipv4,l4=tcp,event=DATA,"
        return (
            head
            + b"from,match=up,len=3,time=1700000001.5\nGET"  # a field without '='
            + head
            + b"from=0,match=up,len=4,time=1700000001.6\nGET "
            + head
            + b"from=3,match=up,len=5,time=1700000001.7\nGET /",
            {"bad_header": 1, "bad_from": 2},
        )
    data = bytearray(encode_binary(flow(41000), DATA, 1_700_000_001.5, 1, b"GET"))
    data[53] = 2  # from: only 0 and 1 name an endpoint
    unknown = bytearray(encode_binary(flow(41000), DATA, 1_700_000_001.6, 1, b"GET "))
    unknown[52] = 9  # no such event
    return bytes(data + unknown), {"bad_from": 1, "unknown_event": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, reason: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = f'celltap_analyzer_dropped_events_total{{analyzer="http",reason="{reason}"}} '
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(want))


@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_analyzer_process_survives_bad_events_crafted(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / "tcp" / "http"
    path.parent.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    mport = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celltap.cli",
            "analyzer",
            "http",
            "--socket",
            str(path),
            "--format",
            fmt,
            "--metrics-port",
            str(mport),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )
    records: list[dict] = []
    reader = threading.Thread(target=lambda: records.extend(json.loads(line) for line in proc.stdout))
    try:
        server.settimeout(20)
        conn, _ = server.accept()
        reader.start()
        bad, counts = bad_events(fmt)
        conn.sendall(good_flow(fmt, 40001, 1_700_000_000.0) + bad + good_flow(fmt, 40002, 1_700_000_002.0))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(records) < 2:
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()
        assert sorted((r["id.orig_p"], r["method"], r["status_code"]) for r in records) == [
            (40001, "GET", 200),
            (40002, "GET", 200),
        ]
        for reason, n in counts.items():
            assert metric(mport, reason) == n, reason
        # and it keeps going: a third good flow on the same connection still gets its record
        conn.sendall(good_flow(fmt, 40003, 1_700_000_003.0))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(records) < 3:
            time.sleep(0.1)
        assert [r["id.orig_p"] for r in records][-1] == 40003
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        server.close()
    assert "Traceback" not in proc.stderr.read().decode()


class _BrokenOnBang(FlowAnalyzer):
    """An analyzer with a planted bug (a fault no shipped analyzer has left to cause for real)."""

    name = "planted"

    def stream(self, flow_id: FlowId, time_: float):
        analyzer = self

        class Handler:
            def data(self, sender: int, data: bytes, t: float) -> None:
                if data.startswith(b"!"):
                    raise IndexError("planted bug")
                analyzer.records.append({"port": flow_id.port1, "data": data.decode()})

            def end(self, reason: str, t: float) -> None:
                analyzer.records.append({"port": flow_id.port1, "end": reason})

        return Handler()


def test_analyzer_exception_costs_only_its_flow() -> None:
    analyzer = _BrokenOnBang()
    session = Session(analyzer, "text", table=FlowTable(analyzer))
    a, b = flow(40001), flow(40002)
    stream = b"".join(
        [
            encode_text(a, CREATED, 1.0),
            encode_text(b, CREATED, 1.0),
            encode_text(a, DATA, 1.1, 1, b"one"),
            encode_text(a, DATA, 1.2, 1, b"!boom"),
            encode_text(b, DATA, 1.3, 1, b"two"),
            encode_text(a, DATA, 1.4, 2, b"after"),  # the failed flow's later bytes: counted, not analyzed
            encode_text(a, DESTROYED, 1.5),
            encode_text(b, DESTROYED, 1.5),
        ]
    )
    records = session.feed(stream)
    assert records == [
        {"port": 40001, "data": "one"},
        {"port": 40002, "data": "two"},
        {"port": 40002, "end": "NORMAL"},
    ]
    assert session.dropped_totals == {"analyzer_exception": 1, "flow_failed": 1}


def _facts(events) -> list[tuple]:
    return [(e.event, e.flow, e.sender, e.data, e.match, e.reason, e.time) for e in events]


def test_text_reader_fast_and_general_paths_agree() -> None:
    """The cell's field order takes the fast path; any other order the general parser: same events."""
    from celltap.cell.sdk.text_format import TextDecoder

    stream = good_flow("text", 40001, 1_700_000_000.0) * 2
    reordered = stream.replace(b",from=1,match=none,", b",match=none,from=1,").replace(
        b",from=2,match=none,", b",match=none,from=2,"
    )
    assert reordered != stream
    fast, general = TextDecoder(), TextDecoder()
    assert _facts(fast.feed(stream)) == _facts(general.feed(reordered))
    assert len(_facts(fast.feed(b""))) == 0 and not fast.dropped and not general.dropped


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (
            b"ip1=10.9.0.1,ip2=10.9.0.2,port1=99999,port2=80,hop=0,l3=ipv4,l4=tcp,event=DATA,from=1,"
            b"match=up,len=3,time=1.0\nGET",
            "bad_header",
        ),
        (
            b"ip1=10.9.0.1,ip2=10.9.0.2,port1=1,port2=80,hop=0,l3=ipv4,l4=tcp,event=DATA,from=1,"
            b"match=up,len=3,time=nan\nGET",
            "bad_header",
        ),
        (
            b"ip1=10.9.0.1,ip2=10.9.0.2,port1=1,port2=80,hop=0,l3=ipv4,l4=tcp,event=EXPLODED,time=1\n",
            "bad_header",
        ),
        (
            b"ip1=10.9.0.1,ip2=10.9.0.2,port1=1,port2=80,hop=0,l3=ipv4,l4=tcp,event=DATA,from=7,"
            b"match=up,len=3,time=1.0\nGET",
            "bad_from",
        ),
        (b"x" * 5000 + b"\n", "header_too_long"),
        (b"no header at all\n", "bad_header"),
    ],
)
def test_text_reader_skips_a_bad_event_and_finds_the_next(bad: bytes, reason: str) -> None:
    from celltap.cell.sdk.text_format import TextDecoder

    dec = TextDecoder()
    events = []
    stream = bad + good_flow("text", 40002, 1_700_000_002.0)
    for i in range(0, len(stream), 7):  # any split
        events += dec.feed(stream[i : i + 7])
    assert [(e.event, e.flow.port1) for e in events] == [
        ("CREATED", 40002),
        ("DATA", 40002),
        ("DATA", 40002),
        ("DESTROYED", 40002),
    ]
    assert dict(dec.dropped) == {reason: 1}
