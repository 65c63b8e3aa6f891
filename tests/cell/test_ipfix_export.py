"""IPFIX biflow export: tshark decodes the records without complaint; totals equal the capture's; each
record's flowId is the uid computed from tshark's dissection of the capture (key + first packet's
microsecond, hashed with the `xxhash` package), and the collector's JSON shows it as the uid text."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import xxhash
from celltap.loadgen.packets import ETH_IPV4, PROTO_UDP, ethernet, ipv4, udp

from celltap.flowid import uid_from_flow_id
from celltap.ipfix.enterprise import DOCUMENTATION_PEN
from celltap.pcap import PcapWriter
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


def cell_ipfix_messages(cfg: Path, pcap: Path, *extra: str) -> list[bytes]:
    """The IPFIX messages `celltap cell --config CFG --read PCAP --ipfix` sends (cell id 7)."""
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
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    port = collector.getsockname()[1]
    args = ["--config", str(cfg), "--read", str(pcap), "--ipfix", f"udp://127.0.0.1:{port}"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "celltap.cli",
            "cell",
            *args,
            "--cell-id",
            "7",
            "--drain-timeout",
            "1",
            *extra,
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
    return got


def ipfix_capture(messages: list[bytes], path: Path) -> Path:
    """The messages as a capture of UDP datagrams to port 4739 (for tshark and the collector)."""
    lo = bytes((127, 0, 0, 1))
    with PcapWriter(str(path)) as w:
        for i, msg in enumerate(messages):
            w.write(
                1_700_000_000_000_000_000 + i * 1000,
                ethernet(
                    b"\x02" * 6, b"\x02" * 6, ETH_IPV4, ipv4(lo, lo, PROTO_UDP, udp(lo, lo, 40000, 4739, msg))
                ),
            )
    return path


def _fields(tshark: str, pcap: Path, fields: list[str], *extra: str) -> list[list[str]]:
    cmd = [tshark, "-r", str(pcap), *extra, "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


def _epoch_ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def expected_flow_ids(tshark: str, pcap: Path) -> dict[tuple, int]:
    """(proto, src, sport, dst, dport) of each TCP/UDP flow's first packet -> the flowId that flow must
    carry: XXH64 (the `xxhash` package) of the canonical key bytes and the first packet's microsecond,
    with addresses, ports and times from tshark's dissection (not from celltap)."""
    rows = _fields(
        tshark,
        pcap,
        ["frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
         "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport"],
        "-t", "e",
    )  # fmt: skip
    first: dict[tuple, tuple[int, tuple]] = {}
    for ts, s4, d4, s6, d6, ts_, td, us, ud in rows:
        if not (ts_ or us):
            continue  # no transport header (ICMP, later fragments): not a port flow
        v6 = bool(s6) and not s4
        src, dst = (s6, d6) if v6 else (s4.split(",")[-1], d4.split(",")[-1])
        proto = 6 if ts_ else 17
        sport, dport = (int(ts_), int(td)) if ts_ else (int(us.split(",")[0]), int(ud.split(",")[0]))
        a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        (a1, p1), (a2, p2) = sorted([(a, sport), (b, dport)])
        key = bytes((6 if v6 else 4, proto)) + a1 + p1.to_bytes(2, "big") + a2 + p2.to_bytes(2, "big")
        if key not in first:
            first[key] = (_epoch_ns(ts), (proto, src, sport, dst, dport))
    return {
        tup: xxhash.xxh64_intdigest(key + struct.pack("<Q", ns // 1000)) for key, (ns, tup) in first.items()
    }


@pytest.mark.tshark
@pytest.mark.parametrize("scenario", ["mixed", "frag", "ipv6"])
def test_ipfix_records_decode_and_add_up(tmp_path, scenario):
    tshark = require_tool("tshark")
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    pcap = tmp_path / "in.pcap"
    with PcapWriter(str(pcap), nanosecond=True) as w:
        for ts, frame in get(scenario).generate(21, 30):
            w.write(ts, frame)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "home", CONFIG)
    ipfix_pcap = ipfix_capture(cell_ipfix_messages(cfg, pcap), tmp_path / "ipfix.pcap")
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
    rows = _fields(
        tshark,
        ipfix_pcap,
        ["cflow.od_id", "cflow.octets", "cflow.packets", "cflow.appl_name", "cflow.flow_end_reason",
         "cflow.flow_id", "cflow.enterprise_private_entry", "cflow.template_ipfix_field_pen",
         "cflow.protocol", "cflow.srcaddr", "cflow.srcaddrv6", "cflow.srcport", "cflow.dstaddr",
         "cflow.dstaddrv6", "cflow.dstport"],
        "-d", "udp.port==4739,cflow",
    )  # fmt: skip
    octets = packets = 0
    apps: set[str] = set()
    reasons: set[str] = set()
    pens: set[str] = set()
    by_tuple: dict[tuple, int] = {}
    flow_ids: list[int] = []
    for od, octs, pkts, names, ends, fids, uids, pen, pr, s4, s6, sp, d4, d6, dp in rows:
        assert od == "7"
        pens.update(p for p in pen.split(",") if p)
        if octs:
            octets += sum(int(x) for x in octs.split(","))
            packets += sum(int(x) for x in pkts.split(","))
        apps.update(n for n in names.split(",") if n)
        reasons.update(ends.split(","))
        if not fids:
            continue
        ids = [int(x) for x in fids.split(",")]
        texts = [bytes.fromhex(u.replace(":", "")).decode() for u in uids.split(",")]
        assert texts == [uid_from_flow_id(i) for i in ids]  # the enterprise element is the flowId's text
        flow_ids += ids
        srcs, dsts = (s4 or s6).split(","), (d4 or d6).split(",")
        for i, p, s, sport, d, dport in zip(
            ids, pr.split(","), srcs, sp.split(","), dsts, dp.split(","), strict=True
        ):
            if p in ("6", "17"):
                by_tuple[(int(p), s, int(sport), d, int(dport))] = i
    assert pens == {"29305", str(DOCUMENTATION_PEN)}  # RFC 5103 reverse elements, the uid element
    assert len(set(flow_ids)) == len(flow_ids)  # one uid per flow
    assert (octets, packets) == _capture(tshark, pcap)
    assert apps and apps <= {"tcp_default", "udp_default", "http", "dns", "icmp", "icmpv6"}
    assert reasons <= {"1", "3", "4"}
    expected = expected_flow_ids(tshark, pcap)
    assert by_tuple and by_tuple == expected

    # The collector decodes the enterprise element by name: its JSON shows the uid next to flowId.
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "collector", "--read-pcap", str(ipfix_pcap), "--json"],
        capture_output=True, text=True, check=True, timeout=120, env=env,
    ).stdout  # fmt: skip
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sorted(r["flowId"] for r in recs) == sorted(flow_ids)
    assert all(r["celltapUid"] == uid_from_flow_id(r["flowId"]) for r in recs)


@pytest.mark.tshark
def test_tcp_control_bits_each_way_equal_tsharks_flags(tmp_path):
    """tcpControlBits / reverseTcpControlBits: the SYN, FIN, RST and ACK flags each side sent (tshark)."""
    tshark = require_tool("tshark")
    import celltap.loadgen.scenarios  # noqa: F401
    from celltap.loadgen.scenario import get

    pcap = tmp_path / "in.pcap"
    with PcapWriter(str(pcap), nanosecond=True) as w:
        for ts, frame in get("tcpfaults").generate(5, 30):
            w.write(ts, frame)
        for ts, frame in get("http").generate(6, 20):
            w.write(ts, frame)
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "home", CONFIG)
    ipfix_pcap = ipfix_capture(cell_ipfix_messages(cfg, pcap), tmp_path / "ipfix.pcap")
    sent: dict[tuple, int] = {}
    for s4, s6, sp, d4, d6, dp, flags in _fields(
        tshark,
        pcap,
        ["ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst", "tcp.dstport", "tcp.flags"],
        "-Y",
        "tcp",
    ):
        key = (s4 or s6, int(sp), d4 or d6, int(dp))
        sent[key] = sent.get(key, 0) | (int(flags, 16) & 0x17)  # FIN SYN RST ACK
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "collector", "--read-pcap", str(ipfix_pcap), "--json"],
        capture_output=True, text=True, check=True, timeout=120, env=env,
    ).stdout  # fmt: skip
    checked = 0
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("protocolIdentifier") != 6:
            continue
        src = r.get("sourceIPv4Address") or r.get("sourceIPv6Address")
        dst = r.get("destinationIPv4Address") or r.get("destinationIPv6Address")
        fwd = (src, r["sourceTransportPort"], dst, r["destinationTransportPort"])
        rev = (dst, r["destinationTransportPort"], src, r["sourceTransportPort"])
        assert (r["tcpControlBits"], r["reverseTcpControlBits"]) == (sent.get(fwd, 0), sent.get(rev, 0)), r
        checked += 1
    assert checked >= 45


@pytest.mark.tshark
def test_syn_flood_app_sees_a_flood_in_the_cells_records(tmp_path):
    """Cells' records now carry tcpControlBits, so the syn_flood app flags a flooded server (crafted:
    spoofed SYNs with a SYN-ACK now and then, among complete HTTP connections to other servers)."""
    import ipaddress as ipa

    import celltap.loadgen.scenarios  # noqa: F401
    import numpy as np
    from celltap.collector.apps.base import make_app
    from celltap.loadgen.packets import ETH_IPV4, PROTO_TCP, tcp
    from celltap.loadgen.scenario import get

    victim = ipa.ip_address("10.99.0.1").packed
    pcap = tmp_path / "flood.pcap"
    t0 = 1_700_000_000_000_000_000
    with PcapWriter(str(pcap), nanosecond=True) as w:
        for ts, frame in get("http").generate(8, 20):
            w.write(ts, frame)
        for i in range(300):
            src = bytes((172, 16, i // 250, 1 + i % 250))
            syn = tcp(src, victim, 1024 + i, 80, 1000 * i, 0, 0x02)
            w.write(
                t0 + i * 1000, ethernet(b"\x02" * 6, b"\x04" * 6, ETH_IPV4, ipv4(src, victim, PROTO_TCP, syn))
            )
            if i % 3 == 0:
                sa = tcp(victim, src, 80, 1024 + i, 7, 1000 * i + 1, 0x12)
                w.write(
                    t0 + i * 1000 + 500,
                    ethernet(b"\x04" * 6, b"\x02" * 6, ETH_IPV4, ipv4(victim, src, PROTO_TCP, sa)),
                )
    cfg = write_config(tmp_path / "c.yaml", tmp_path / "home", CONFIG)
    ipfix_pcap = ipfix_capture(cell_ipfix_messages(cfg, pcap), tmp_path / "ipfix.pcap")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run(
        [sys.executable, "-m", "celltap.cli", "collector", "--read-pcap", str(ipfix_pcap), "--json"],
        capture_output=True, text=True, check=True, timeout=120, env=env,
    ).stdout  # fmt: skip
    rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    rows = [r for r in rows if "destinationIPv4Address" in r]
    recs = np.zeros(
        len(rows),
        dtype=[("destinationIPv4Address", "u4"), ("protocolIdentifier", "u1"), ("tcpControlBits", "u2")],
    )
    recs["destinationIPv4Address"] = [int(ipa.IPv4Address(r["destinationIPv4Address"])) for r in rows]
    recs["protocolIdentifier"] = [r["protocolIdentifier"] for r in rows]
    recs["tcpControlBits"] = [r.get("tcpControlBits", 0) for r in rows]
    app = make_app("flood", {"kind": "syn_flood", "key": "dst", "ratio": 0.8, "min_half_open": 100})
    app.update(recs, "cell")
    answer = app.answer({"n": 5})
    assert [(r["key"], r["half_open"]) for r in answer["flooded"]] == [("10.99.0.1", 300)]
