"""Real DNS traffic: unbound (authoritative local data, and a resolver for `auth.test`) in one
namespace; dig / kdig / a raw TCP client and NSD (authoritative for `auth.test`, unbound's stub zone)
in another; joined by a veth and captured there by tcpdump, so the resolver's own queries to NSD
(including its TCP retry of a truncated answer) are in the capture too.

The scenario covers what issue 13 asks of DNS: UDP and TCP, EDNS (buffer size, DO, NSID, client
subnet, cookie, padding), NXDOMAIN, a big TXT answer truncated over UDP then retried over TCP by dig
itself, several queries on one TCP connection (dig +keepopen), several queries in one TCP segment and
one query split across segments (a raw socket client; unbound's answers are real).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from pathlib import Path

from tests.incubator.netns import NetNS

SERVER = "10.53.0.1"
CLIENT = "10.53.0.2"
ZONE = "example.test"
BIG_TXT = [("%02d" % i) * 100 for i in range(8)]  # 8 strings of 200 bytes: > 512, < 4096  # noqa: UP031

LOCAL_DATA = [
    f'"{ZONE}. 3600 IN SOA ns1.{ZONE}. hostmaster.{ZONE}. 2024010101 7200 900 1209600 300"',
    f'"{ZONE}. 3600 IN NS ns1.{ZONE}."',
    f'"ns1.{ZONE}. 3600 IN A {SERVER}"',
    f'"www.{ZONE}. 300 IN A 192.0.2.10"',
    f'"www.{ZONE}. 300 IN A 192.0.2.11"',
    f'"www.{ZONE}. 300 IN AAAA 2001:db8::10"',
    f'"web.{ZONE}. 120 IN CNAME www.{ZONE}."',
    f'"{ZONE}. 600 IN MX 10 mx1.{ZONE}."',
    f'"{ZONE}. 600 IN MX 20 mx2.{ZONE}."',
    f'"{ZONE}. 60 IN TXT \\"v=spf1 -all\\" \\"second string\\""',
    f'"_sip._udp.{ZONE}. 60 IN SRV 10 60 5060 sip.{ZONE}."',
    f'"big.{ZONE}. 60 IN TXT ' + " ".join(f'\\"{s}\\"' for s in BIG_TXT) + '"',
]


AUTH_ZONE = "auth.test"
AUTH_TXT = [("%02d" % i) * 100 for i in range(10, 18)]  # noqa: UP031


def nsd_config(workdir: Path) -> str:
    """nsd.conf: authoritative for AUTH_ZONE on CLIENT:53 (the client's namespace)."""
    zone = workdir / f"{AUTH_ZONE}.zone"
    zone.write_text(
        "\n".join(
            [
                f"$ORIGIN {AUTH_ZONE}.",
                "$TTL 300",
                f"@ IN SOA ns.{AUTH_ZONE}. admin.{AUTH_ZONE}. 7 3600 600 86400 300",
                f"@ IN NS ns.{AUTH_ZONE}.",
                f"ns IN A {CLIENT}",
                "www IN A 198.51.100.7",
                "www IN AAAA 2001:db8::7",
                "big IN TXT " + " ".join(f'"{s}"' for s in AUTH_TXT),
            ]
        )
        + "\n"
    )
    return (
        "\n".join(
            [
                "server:",
                f"  ip-address: {CLIENT}",
                "  port: 53",
                '  username: ""',
                '  chroot: ""',
                f'  zonesdir: "{workdir}"',
                '  database: ""',
                f'  pidfile: "{workdir}/nsd.pid"',
                f'  logfile: "{workdir}/nsd.log"',
                f'  xfrdfile: "{workdir}/xfrd.state"',
                f'  zonelistfile: "{workdir}/zone.list"',
                "  verbosity: 0",
                "remote-control:",
                "  control-enable: no",
                "zone:",
                f"  name: {AUTH_ZONE}",
                f'  zonefile: "{zone}"',
            ]
        )
        + "\n"
    )


def unbound_config(workdir: Path) -> str:
    """unbound.conf: answers from local data on SERVER:53, NSID set, no remote control."""
    lines = [
        "server:",
        f"  interface: {SERVER}",
        "  port: 53",
        "  do-ip6: no",
        "  access-control: 0.0.0.0/0 allow",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{workdir}"',
        f'  pidfile: "{workdir}/unbound.pid"',
        "  use-syslog: no",
        "  verbosity: 0",
        "  nsid: ascii_celltap-unbound",
        '  local-zone: "test." nodefault',  # unbound answers NXDOMAIN for .test (RFC 6761) by default
        f"  local-zone: {ZONE}. static",
        "  local-zone: 2.0.192.in-addr.arpa. static",
    ]
    lines += [f"  local-data: {d}" for d in LOCAL_DATA]
    lines.append(f'  local-data-ptr: "192.0.2.10 300 www.{ZONE}."')
    lines += ["  do-not-query-localhost: no", '  module-config: "iterator"']
    lines += ["stub-zone:", f"  name: {AUTH_ZONE}.", f"  stub-addr: {CLIENT}"]
    lines += ["remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


def _query(ident: int, name: str, qtype: int) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def raw_tcp_client() -> None:
    """27 queries in one segment, then one query split across two segments; read every answer."""
    msgs = [_query(0x1001, f"www.{ZONE}", 1), _query(0x1002, f"www.{ZONE}", 28), _query(0x1003, ZONE, 15)]
    # and a burst of 24 more, so that answers queue up behind unacknowledged data on the server side
    msgs += [_query(0x1100 + i, f"www.{ZONE}", (1, 28, 16)[i % 3]) for i in range(24)]
    with socket.create_connection((SERVER, 53), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"".join(struct.pack("!H", len(m)) + m for m in msgs))
        split = _query(0x1004, f"web.{ZONE}", 5)
        framed = struct.pack("!H", len(split)) + split
        time.sleep(0.05)
        s.sendall(framed[:9])
        time.sleep(0.05)
        s.sendall(framed[9:])
        _read_answers(s, len(msgs) + 1)


def _read_answers(s: socket.socket, n: int) -> None:
    buf = b""
    got = 0
    while got < n:
        chunk = s.recv(65536)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            buf = buf[2 + struct.unpack("!H", buf[:2])[0] :]
            got += 1


CLIENT_COMMANDS = [
    # UDP: plain, EDNS with DO, NSID, cookie, client subnet, padding; several types; NXDOMAIN
    ["dig", f"@{SERVER}", f"www.{ZONE}", "A", "+nocookie"],
    ["dig", f"@{SERVER}", f"www.{ZONE}", "AAAA", "+dnssec", "+bufsize=1232"],
    ["dig", f"@{SERVER}", f"web.{ZONE}", "A", "+nsid", "+cookie"],
    ["dig", f"@{SERVER}", ZONE, "MX", "+subnet=198.51.100.0/24"],
    ["dig", f"@{SERVER}", ZONE, "TXT", "+noedns"],
    ["dig", f"@{SERVER}", f"_sip._udp.{ZONE}", "SRV"],
    ["dig", f"@{SERVER}", "-x", "192.0.2.10"],
    ["dig", f"@{SERVER}", f"nope.{ZONE}", "A"],
    ["dig", f"@{SERVER}", ZONE, "SOA", "+nsid"],
    ["kdig", f"@{SERVER}", f"www.{ZONE}", "A", "+nsid", "+subnet=2001:db8:1::/48", "+padding=128"],
    ["kdig", f"@{SERVER}", ZONE, "NS", "+cookie"],
    # big TXT over UDP with a 512-byte buffer: unbound truncates (TC), dig retries over TCP itself
    ["dig", f"@{SERVER}", f"big.{ZONE}", "TXT", "+bufsize=512"],
    ["dig", f"@{SERVER}", f"big.{ZONE}", "TXT", "+noedns"],
    # TCP: one query per connection, several on one connection
    ["dig", f"@{SERVER}", f"www.{ZONE}", "A", "+tcp", "+nsid"],
    ["kdig", f"@{SERVER}", f"big.{ZONE}", "TXT", "+tcp", "+padding"],
    ["dig", f"@{SERVER}", "+tcp", "+keepopen", f"www.{ZONE}", "A", f"nope.{ZONE}", "A", ZONE, "MX"],
    # unbound resolves these from NSD: its big TXT comes back truncated over UDP, unbound retries on TCP
    ["dig", f"@{SERVER}", f"www.{AUTH_ZONE}", "AAAA"],
    ["dig", f"@{SERVER}", f"big.{AUTH_ZONE}", "TXT", "+tcp"],
    ["dig", f"@{SERVER}", f"nx.{AUTH_ZONE}", "A"],
]


def capture_dns(pcap: Path) -> list[subprocess.CompletedProcess]:
    """Run the scenario; write the veth capture to `pcap`; return the clients' results."""
    workdir = pcap.parent / f"unbound-{os.getpid()}"
    workdir.mkdir(exist_ok=True)
    conf = workdir / "unbound.conf"
    conf.write_text(unbound_config(workdir))
    tag = f"d{os.getpid() % 10000}"
    results = []
    with NetNS("dnss") as srv, NetNS("dnsc") as cli:
        srv.veth(f"{tag}s", f"{tag}c", cli)
        srv.ip("addr", "add", f"{SERVER}/24", "dev", f"{tag}s")
        cli.ip("addr", "add", f"{CLIENT}/24", "dev", f"{tag}c")
        nsd_conf = workdir / "nsd.conf"
        nsd_conf.write_text(nsd_config(workdir))
        auth = cli.exec(
            "nsd", "-d", "-c", str(nsd_conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server = srv.exec(
            "unbound", "-d", "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        dump = srv.exec(
            "tcpdump",
            "-Z",
            "root",
            "--immediate-mode",
            "-B",
            "16384",
            "-i",
            f"{tag}s",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
            str(pcap),
            stderr=subprocess.PIPE,
        )
        try:
            _wait_capture(dump)
            _wait_port(cli, SERVER, 53)
            _wait_port(cli, CLIENT, 53, AUTH_ZONE)
            for cmd in CLIENT_COMMANDS:
                results.append(cli.run(*cmd, timeout=30))
            cli.call(raw_tcp_client)
            time.sleep(0.5)
        finally:
            for p in (dump, server, auth):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return results


def _wait_port(ns: NetNS, host: str, port: int, zone: str = ZONE) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = ns.run("dig", f"@{host}", "-p", str(port), zone, "SOA", "+tries=1", "+time=1")
        if probe.returncode == 0 and "status: NOERROR" in probe.stdout:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{host}:{port} did not answer for {zone}")


def _wait_capture(dump: subprocess.Popen) -> None:
    # tcpdump prints "listening on ..." to stderr once the capture runs
    assert dump.stderr is not None
    os.set_blocking(dump.stderr.fileno(), False)
    deadline = time.monotonic() + 10
    seen = b""
    while time.monotonic() < deadline and b"listening" not in seen:
        seen += dump.stderr.read() or b""
        time.sleep(0.05)
