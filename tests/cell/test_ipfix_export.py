"""IPFIX biflow export: tshark decodes the records without complaint; totals equal the capture's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from celltap.pcap import PcapWriter
from loadgen.packets import ETH_IPV4, PROTO_UDP, ethernet, ipv4, udp
from tests.cell.runner import write_config
from tests.conftest import require_tool

CONFIG = """
tcp_default:
  if: default
  proto: TCP
udp_default:
  if: default
  proto: UDP
http:
  up:     '^[-a-zA-Z]+ .+ HTTP/1\\.(0\\r?\\n|1\\r?\\n([-a-zA-Z]+: .+\\r?\\n)+)'
  down:   '^HTTP/1\\.[01] [1-9][0-9]{2} .+\\r?\\n'
  proto:  TCP
  if:     http
dns:
  proto: UDP
  port: 53
  if: dns
icmp:
  if: icmp
icmpv6:
  if: icmp6
"""


def _capture(tshark: str, pcap: Path) -> tuple[int, int]:
    """(IP octets, IP packets) of every frame of the capture, as tshark sees them."""
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(pcap),
            "-o",
            "ip.defragment:FALSE",
            "-o",
            "ipv6.defragment:FALSE",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "ip.len",
            "-e",
            "ipv6.plen",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    octets = packets = 0
    for line in out.splitlines():
        v4, v6 = line.split("|")
        if v4:
            octets += int(v4.split(",")[0])
        elif v6:
            octets += int(v6.split(",")[0]) + 40
        else:
            continue
        packets += 1
    return octets, packets


@pytest.mark.tshark
@pytest.mark.parametrize("scenario", ["mixed", "frag", "ipv6"])
def test_ipfix_records_decode_and_add_up(tmp_path, scenario):
    tshark = require_tool("tshark")
    import loadgen.scenarios  # noqa: F401
    from loadgen.scenario import get

    pcap = tmp_path / "in.pcap"
    with PcapWriter(str(pcap), nanosecond=True) as w:
        for ts, frame in get(scenario).generate(21, 30):
            w.write(ts, frame)
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(0.5)
    got: list[bytes] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                got.append(collector.recv(65535))
            except TimeoutError:
                continue

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    home = tmp_path / "home"
    cfg = write_config(tmp_path / "c.yaml", home, CONFIG)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    port = collector.getsockname()[1]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "celltap.cli",
            "cell",
            "--config",
            str(cfg),
            "--read",
            str(pcap),
            "--ipfix",
            f"udp://127.0.0.1:{port}",
            "--cell-id",
            "7",
            "--drain-timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    done.wait(1.0)
    done.set()
    t.join(2)
    collector.close()
    assert got
    ipfix_pcap = tmp_path / "ipfix.pcap"
    lo = bytes((127, 0, 0, 1))
    with PcapWriter(str(ipfix_pcap)) as w:
        for i, msg in enumerate(got):
            w.write(
                1_700_000_000_000_000_000 + i * 1000,
                ethernet(
                    b"\x02" * 6, b"\x02" * 6, ETH_IPV4, ipv4(lo, lo, PROTO_UDP, udp(lo, lo, 40000, 4739, msg))
                ),
            )
    bad = subprocess.run(
        [
            tshark,
            "-r",
            str(ipfix_pcap),
            "-d",
            "udp.port==4739,cflow",
            "-Y",
            "_ws.malformed or _ws.expert.severity >= warning or not cflow",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert bad.strip() == "", bad
    out = subprocess.run(
        [
            tshark,
            "-r",
            str(ipfix_pcap),
            "-d",
            "udp.port==4739,cflow",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "cflow.od_id",
            "-e",
            "cflow.octets",
            "-e",
            "cflow.packets",
            "-e",
            "cflow.appl_name",
            "-e",
            "cflow.flow_end_reason",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    octets = packets = 0
    apps: set[str] = set()
    reasons: set[str] = set()
    for line in out.splitlines():
        od, octs, pkts, names, ends = line.split("|")
        assert od == "7"
        if octs:
            octets += sum(int(x) for x in octs.split(","))
            packets += sum(int(x) for x in pkts.split(","))
        apps.update(n for n in names.split(",") if n)
        reasons.update(ends.split(","))
    assert (octets, packets) == _capture(tshark, pcap)
    assert apps and apps <= {"tcp_default", "udp_default", "http", "dns", "icmp", "icmpv6"}
    assert reasons <= {"1", "3", "4"}
