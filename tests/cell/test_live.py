"""The live cell: pcap injection socket, a reader that stops reading, the L7 loopback, metrics, SIGTERM."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from celltap.pcap import PcapWriter
from tests.cell.runner import LiveCell, RawReader, wait_for
from tests.cell.wire import BIN, parse_text

FIXTURES = Path(__file__).parent / "fixtures"


def _config(tmp: Path, home: Path, extra_global: str = "") -> Path:
    text = (
        (FIXTURES / "cell_full.yaml")
        .read_text()
        .replace(
            "home:    /tmp/sf-tap", f"home:    {home}\n  reader_buffer: 65536\n  hop_limit: 2{extra_global}"
        )
    )
    p = tmp / "cell.yaml"
    p.write_text(text)
    return p


def _scenario(path: Path, name: str, count: int, seed: int = 5) -> Path:
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    with PcapWriter(str(path), nanosecond=True) as w:
        for ts, frame in get(name).generate(seed, count):
            w.write(ts, frame)
    return path


def test_stuck_reader_never_stalls_the_cell(tmp_path):
    home = tmp_path / "home"
    cell = LiveCell(_config(tmp_path, home), home)
    try:
        for sub in ("tcp/tls", "pcap", "loopback7"):
            cell.wait_socket(sub)
        assert stat.S_IMODE(os.stat(home).st_mode) == 0o750
        assert stat.S_IMODE(os.stat(home / "tcp" / "tls").st_mode) == 0o660
        stuck = RawReader(home / "tcp/tls", stop_after=0)  # connects, never reads
        names = ("tcp/http0", "tcp/http1", "tcp/http2", "tcp/http3", "udp/dns")
        others = {n: RawReader(home / n) for n in names}
        for r in [stuck, *others.values()]:
            r.start()
            assert r.connected.wait(10)
        wait_for(lambda: cell.metrics().get('celltap_cell_flows_live{cell="0"}') is not None, what="metrics")
        cell.inject_pcap(_scenario(tmp_path / "tls.pcap", "tls", 250))  # ~6 MB for the stuck reader
        cell.inject_pcap(_scenario(tmp_path / "http.pcap", "http", 100))
        key = 'celltap_cell_interface_dropped_events_total{cell="0",interface="tcp/tls",reason="reader_slow"}'
        wait_for(lambda: cell.metrics().get(key, 0) > 0, what="drops on the stuck reader")

        def complete() -> int:
            evs = [e for n in names[:4] for e in parse_text(bytes(others[n].data))]
            return sum(e.event == "DESTROYED" for e in evs)

        wait_for(lambda: complete() == 100, what="every http flow on http0..3")
        # the cell keeps running: new traffic still reaches another interface
        cell.inject_pcap(_scenario(tmp_path / "dns.pcap", "dns", 30))
        wait_for(
            lambda: any(e.event == "DATA" for e in parse_text(bytes(others["udp/dns"].data))), what="dns"
        )
        m = cell.metrics()
        assert m[key] > 0 and m[key.replace("dropped_events", "dropped_bytes")] > 0
        assert m['celltap_cell_classified_flows_total{cell="0",rule="tls"}'] == 250
        assert m['celltap_cell_classified_flows_total{cell="0",rule="http"}'] == 100
        # (the http interfaces' drop series exist from the start, at 0: they must still be 0)
        assert [k for k, v in m.items() if 'interface="tcp/http' in k and "dropped" in k and v] == []
        assert m[key.replace("tcp/tls", "tcp/http0")] == 0
        # the buffer caps are exported (none reached here) and nothing is still held back
        for cap in ("flow", "memory"):
            assert m[f'celltap_cell_tcp_buffer_cap_skips_total{{cap="{cap}",cell="0"}}'] == 0
        assert m['celltap_cell_reassembly_buffer_bytes{buffer="classify",cell="0"}'] == 0
    finally:
        code, err = cell.stop()
    assert code == 0, err


def _lb_events(hop: int, n: int, fmt: str) -> bytes:
    req = b"GET /inner HTTP/1.1\r\nHost: inner\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    if fmt == "binary":
        a1, a2 = bytes((10, 9, 0, 1)).ljust(16, b"\0"), bytes((10, 9, 0, 2)).ljust(16, b"\0")
        p1, p2 = (40000).to_bytes(2, "big"), (8000 + hop).to_bytes(2, "big")

        def ev(kind: int, frm: int, body: bytes) -> bytes:
            return BIN.pack(a1, a2, 1, 0, p1, p2, kind, frm, len(body), hop, 0, 6, 2, 0, bytes(3)) + body

        return ev(0, 3, b"") + (ev(2, 0, req) + ev(2, 1, resp)) * n + ev(1, 3, b"")
    flow = f"ip1=10.9.0.1,ip2=10.9.0.2,port1=40000,port2={8000 + hop},hop={hop},l3=ipv4,l4=tcp"
    out = f"{flow},event=CREATED,time=1.000000\n".encode()
    for _ in range(n):
        out += f"{flow},event=DATA,from=1,match=none,len={len(req)},time=1.000000\n".encode() + req
        out += f"{flow},event=DATA,from=2,match=none,len={len(resp)},time=1.000000\n".encode() + resp
    return out + f"{flow},event=DESTROYED,reason=NORMAL,time=1.000000\n".encode()


@pytest.mark.parametrize("fmt", ["text", "binary"])
def test_l7_loopback_hop_and_limit(tmp_path, fmt):
    home = tmp_path / "home"
    cfg = _config(tmp_path, home)
    cfg.write_text(
        cfg.read_text().replace(
            "loopback7:\n  if:     loopback7\n  format: text",
            f"loopback7:\n  if:     loopback7\n  format: {fmt}",
        )
    )
    assert f"format: {fmt}" in cfg.read_text()
    cell = LiveCell(cfg, home)
    try:
        cell.wait_socket("loopback7")
        readers = {f"tcp/http{i}": RawReader(home / f"tcp/http{i}") for i in range(4)}
        for r in readers.values():
            r.start()
            assert r.connected.wait(10)
        lb = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lb.connect(str(home / "loopback7"))
        lb.sendall(_lb_events(0, 2, fmt))  # comes back with hop 1
        lb.sendall(_lb_events(2, 1, fmt))  # hop 3 > hop_limit 2: dropped

        def got() -> list:
            return [e for r in readers.values() for e in parse_text(bytes(r.data))]

        wait_for(lambda: any(e.event == "DESTROYED" for e in got()), what="re-injected flow")
        key = 'celltap_cell_loopback_dropped_events_total{cell="0",reason="hop_limit"}'
        wait_for(lambda: cell.metrics().get(key, 0) >= 4, what="hop-limit drops")
        evs = got()
        assert {e.flow for e in evs} == {("10.9.0.1", 40000, "10.9.0.2", 8000, 1, "ipv4", "tcp")}
        kinds = [e.event for e in evs]
        assert kinds == ["CREATED", "DATA", "DATA", "DATA", "DATA", "DESTROYED"]
        assert [e.match for e in evs if e.event == "DATA"] == ["up", "down", "up", "down"]
        assert evs[1].data.startswith(b"GET /inner")
        lb.close()
    finally:
        code, err = cell.stop()
    assert code == 0, err
