"""A real curl -> nginx exchange through the incubator: the cell's response events carry the response's
capture time, not the request's.

Two namespaces joined by a veth: curl in one, nginx in the other.  In nginx's namespace an nftables
netdev chain copies every frame entering or leaving the server's link to a veth `th-tap` (a SPAN
port, as in tests/realnet/bed.py); on its peer `th-mon` tcpdump (nanosecond timestamps, the oracle,
read by tshark) and the incubator capture the same frames; the incubator sends them over Geneve
(capture time in a Geneve option) to a cell whose `tcp/http` reader keeps SF-TAP's events.  Every
DATA event's `time=` must be the capture time of the segment that carried its first byte, so the
responses' times differ from the requests' by nginx's real answer time, which tshark measures too.
Tolerance TOL_US: nftables' copies reach `th-mon` without a kernel timestamp, so tcpdump's and the
incubator's sockets each read the clock for them, a few microseconds apart (measured: 3-4 us).  On a
VM the vCPU can be preempted between those two reads (CI saw one time 310 us off on a loaded
machine), so one of the six times may be off by up to PREEMPTED_US; stamping a response with its
request's time, or a batch's receive time, would put several times off by nginx's answer time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cell.runner import RawReader, wait_for
from tests.cell.wire import parse_text
from tests.conftest import require_root, require_tool
from tests.incubator.live_helpers import IncubatorProcess, NetNS, Tcpdump, no_offloads, quiet

pytestmark = pytest.mark.netns

TOL_US = 30
PREEMPTED_US = 1_000

CELL_CONFIG = """global:
  home: {home}
  timeout: 60
http:
  up: '^[-a-zA-Z]+ .+ HTTP/1\\.(0\\r?\\n|1\\r?\\n([-a-zA-Z]+: .+\\r?\\n)+)'
  down: '^HTTP/1\\.[01] [1-9][0-9]{{2}} .+\\r?\\n'
  proto: TCP
  if: http
"""

NGINX = textwrap.dedent(
    """
    daemon off;
    master_process off;
    worker_processes 1;
    pid {d}/nginx.pid;
    error_log {d}/error.log;
    events {{ worker_connections 64; }}
    http {{
        access_log off;
        client_body_temp_path {d}/tmp/body;
        proxy_temp_path {d}/tmp/proxy;
        fastcgi_temp_path {d}/tmp/fastcgi;
        uwsgi_temp_path {d}/tmp/uwsgi;
        scgi_temp_path {d}/tmp/scgi;
        server {{
            listen 10.78.0.2:80;
            root {d}/www;
        }}
    }}
    """
)


def _epoch_ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def _first_payload_times(tshark: str, pcap: str) -> tuple[list[int], list[int]]:
    """(times of the segments that start each HTTP request, of the first payload segment of each
    response), from tcpdump's capture as tshark dissects it."""

    def times(flt: str) -> list[int]:
        out = subprocess.run(
            [tshark, "-r", pcap, "-Y", flt, "-T", "fields", "-e", "frame.time_epoch"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [_epoch_ns(x) for x in out.split()]

    requests = times("http.request")
    # the first server segment with payload after each request
    server = times("tcp.srcport == 80 and tcp.len > 0")
    responses = [min(t for t in server if t > r) for r in requests]
    return requests, responses


@pytest.fixture
def http_bed(tmp_path):
    require_root()
    for tool in ("tcpdump", "ethtool", "curl", "nginx"):
        require_tool(tool)
    www = tmp_path / "nginx"
    for sub in ("www", "tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (www / sub).mkdir(parents=True)
    (www / "www" / "large.bin").write_bytes(bytes((i * 7919 + (i >> 8)) & 0xFF for i in range(300_000)))
    (www / "www" / "small.txt").write_text("small\n")
    (www / "nginx.conf").write_text(NGINX.format(d=www))
    with NetNS("thc") as cli, NetNS("ths") as srv:
        quiet(cli)
        quiet(srv)
        cli.veth("th-c", "th-s", other=srv)
        no_offloads(cli, "th-c")
        no_offloads(srv, "th-s")
        cli.ip("addr", "add", "10.78.0.1/24", "dev", "th-c")
        srv.ip("addr", "add", "10.78.0.2/24", "dev", "th-s")
        nginx = srv.exec(shutil.which("nginx"), "-p", str(www), "-c", str(www / "nginx.conf"),
                         stderr=subprocess.DEVNULL)  # fmt: skip
        srv.veth("th-tap", "th-mon")
        no_offloads(srv, "th-tap")
        no_offloads(srv, "th-mon")
        rules = (
            'table netdev thmon {\n'
            '  chain i { type filter hook ingress device "th-s" priority 0; dup to "th-tap"; }\n'
            '  chain o { type filter hook egress device "th-s" priority 0; dup to "th-tap"; }\n}\n'
        )
        p = subprocess.run(["ip", "netns", "exec", srv.name, "nft", "-f", "-"], input=rules, text=True,
                           capture_output=True)  # fmt: skip
        assert p.returncode == 0, p.stderr

        def nginx_up() -> bool:
            return srv.run("curl", "-s", "-o", "/dev/null", "http://10.78.0.2/small.txt").returncode == 0

        try:
            wait_for(nginx_up, timeout=15, what="nginx up")
            yield cli, srv
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)


def test_http_response_events_carry_the_response_capture_time(http_bed, tmp_path):
    tshark = require_tool("tshark")
    cli, srv = http_bed
    home = tmp_path / "home"
    cfg = tmp_path / "cell.yaml"
    cfg.write_text(CELL_CONFIG.format(home=home))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    log = open(tmp_path / "cell.log", "wb")
    cell = srv.exec(sys.executable, "-m", "celltap.cli", "cell", "--config", str(cfg),
                    "--input", "geneve://127.0.0.1:16082", stderr=log, env=env)  # fmt: skip
    reader = RawReader(home / "tcp/http")
    reader.start()
    inc_dir = tmp_path / "inc"
    inc_dir.mkdir()
    inc = IncubatorProcess(
        srv,
        {"mode": "mirror", "capture": "afpacket:th-mon", "metrics_port": 9491,
         "cells": [{"id": "c0", "output": "geneve://127.0.0.1:16082"}]},
        str(inc_dir),
    )  # fmt: skip
    try:
        inc.wait_ready(1)
        assert reader.connected.wait(20)
        dump = Tcpdump(srv, "th-mon", str(tmp_path / "oracle.pcap"),
                       extra=("--time-stamp-precision=nano", "tcp port 80"))  # fmt: skip
        urls = ["http://10.78.0.2/large.bin", "http://10.78.0.2/small.txt", "http://10.78.0.2/large.bin"]
        p = cli.run("curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", *urls)
        assert p.returncode == 0, p.stderr

        def destroyed() -> bool:
            return any(e.event == "DESTROYED" for e in parse_text(bytes(reader.data)))

        wait_for(destroyed, timeout=30, what="the HTTP connection's end at the cell")
        dump.stop()
    finally:
        inc.stop()
        cell.terminate()
        cell.wait(timeout=30)
        log.close()
    events = [e for e in parse_text(bytes(reader.data)) if e.event == "DATA"]
    requests, responses = _first_payload_times(tshark, dump.path)
    assert len(requests) == 3
    # one DATA event per run of one direction: request, response, request, response ...
    client = events[0].sender
    starts = [e for i, e in enumerate(events) if i == 0 or e.sender != events[i - 1].sender]
    got_req = [round(e.time * 1e6) for e in starts if e.sender == client]
    got_resp = [round(e.time * 1e6) for e in starts if e.sender != client]
    want_req = [t // 1000 for t in requests]
    want_resp = [t // 1000 for t in responses]
    assert len(got_req) == len(got_resp) == 3
    errors = [abs(a - b) for a, b in zip(got_req + got_resp, want_req + want_resp, strict=True)]
    # every time is the right segment's; one of the six may be a preempted clock read (see above)
    assert max(errors) <= PREEMPTED_US, errors
    assert sum(e > TOL_US for e in errors) <= 1, errors
    assert all(b > a for a, b in zip(got_req, got_resp, strict=True)), "responses stamped as their requests"
    for a, b, ta, tb in zip(got_req, got_resp, want_req, want_resp, strict=True):
        if abs(a - ta) <= TOL_US and abs(b - tb) <= TOL_US:
            assert abs((b - a) - (tb - ta)) <= 2 * TOL_US, "answer time differs from tshark's"
    print("answer times (us), cell vs tcpdump:", [(b - a, tb - ta) for a, b, ta, tb in
                                                   zip(got_req, got_resp, want_req, want_resp, strict=True)])
