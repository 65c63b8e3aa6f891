"""Real SIP traffic: SIPp's built-in UAS (`-sn uas -aa`) in one namespace, SIPp's UAC (`-sn uac`) and a
raw socket client in another, joined by a veth and captured there by tcpdump.

Calls over UDP (`-t u1`) and TCP (`-t t1`); calls rejected by a second SIPp (the scenarios below: 100
then 486 Busy Here with a Warning; the UAC sends Date and Reply-To). The raw client sends, over UDP
and TCP, RFC 5626 keep-alives (CRLF CRLF) before requests, OPTIONS requests with compact header names
(`v: f: t: i: l: m: c:`), two requests in one TCP segment and one request across two segments. SIPp
answers every request (its `-aa` answers OPTIONS with 200 OK), so the answers are a real server's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from tests.incubator.netns import NetNS

SERVER = "10.60.0.1"
CLIENT = "10.60.0.2"
BUSY = "10.60.0.3"  # a second address of the server namespace: a SIPp UAS that rejects every call
CALLS = 4  # calls per transport
BUSY_CALLS = 2

# SIPp scenarios for rejected calls: the UAS answers 100 then 486 Busy Here (with a Warning); the UAC
# sends Date and Reply-To, expects 486 and ACKs it. SIPp counts a call successful when its scenario ends.
BUSY_UAS = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy uas">
  <recv request="INVITE" crlf="true"/>
  <send><![CDATA[

      SIP/2.0 100 Trying
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]></send>
  <send><![CDATA[

      SIP/2.0 486 Busy Here
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]busy[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Warning: 399 busy.example "all lines busy"
      Content-Length: 0

    ]]></send>
  <recv request="ACK"/>
</scenario>
"""
BUSY_UAC = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy uac">
  <send retrans="500"><![CDATA[

      INVITE sip:busy@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: caller <sip:caller@[local_ip]:[local_port]>;tag=[pid]caller[call_number]
      To: busy <sip:busy@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:caller@[local_ip]:[local_port]>
      Max-Forwards: 70
      Date: Sat, 13 Nov 2010 23:29:00 GMT
      Reply-To: <sip:voicemail@example.org>
      User-Agent: sipp-busy-uac
      Subject: rejected call
      Content-Length: 0

    ]]></send>
  <recv response="100" optional="true"/>
  <recv response="486"/>
  <send><![CDATA[

      ACK sip:busy@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: caller <sip:caller@[local_ip]:[local_port]>;tag=[pid]caller[call_number]
      To: busy <sip:busy@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]></send>
</scenario>
"""


def options(n: int, transport: str, compact: bool, body: bytes = b"") -> bytes:
    """An OPTIONS request from the raw client (compact header names when asked)."""
    names = (
        ("v", "f", "t", "i", "m", "c", "l")
        if compact
        else ("Via", "From", "To", "Call-ID", "Contact", "Content-Type", "Content-Length")
    )
    via, frm, to, cid, contact, ctype, clen = names
    lines = [
        f"OPTIONS sip:uas@{SERVER}:5060 SIP/2.0",
        f"{via}: SIP/2.0/{transport.upper()} {CLIENT}:5090;branch=z9hG4bK-raw-{transport}-{n}",
        "Max-Forwards: 70",
        f"{frm}: <sip:raw@{CLIENT}>;tag=raw{n}",
        f"{to}: <sip:uas@{SERVER}>",
        f"{cid}: raw-{transport}-{n}@{CLIENT}",
        f"CSeq: {n} OPTIONS",
        f"{contact}: <sip:raw@{CLIENT}:5090>",
        "User-Agent: celltap-raw-client/1",
        "Subject: keep-alive test",
    ]
    if body:
        lines.append(f"{ctype}: text/plain")
    lines.append(f"{clen}: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def raw_udp_client() -> None:
    """A keep-alive datagram, a request, then a request with compact header names and a body."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((CLIENT, 5090))
        s.settimeout(3)
        s.sendto(b"\r\n\r\n", (SERVER, 5060))  # RFC 5626 keep-alive ping (SIPp does not answer it)
        s.sendto(options(1, "udp", False), (SERVER, 5060))
        s.recvfrom(65536)
        s.sendto(options(2, "udp", True, b"hello"), (SERVER, 5060))
        s.recvfrom(65536)


def raw_tcp_client() -> None:
    """Keep-alives before a request; two requests in one segment; one request across two segments."""
    with socket.create_connection((SERVER, 5060), timeout=5, source_address=(CLIENT, 5090)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"\r\n\r\n")
        time.sleep(0.05)
        s.sendall(b"\r\n\r\n" + options(1, "tcp", False))
        _read_responses(s, 1)
        s.sendall(options(2, "tcp", True, b"hi there") + options(3, "tcp", False))
        _read_responses(s, 2)
        split = options(4, "tcp", True)
        s.sendall(split[:40])
        time.sleep(0.05)
        s.sendall(split[40:])
        _read_responses(s, 1)


def _read_responses(s: socket.socket, n: int) -> None:
    buf = b""
    while buf.count(b"SIP/2.0 200") < n:
        chunk = s.recv(65536)
        if not chunk:
            return
        buf += chunk


def capture_sip(pcap: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run the scenario; write the veth capture to `pcap`; return SIPp's UAC runs by transport."""
    workdir = pcap.parent / f"sipp-{os.getpid()}"
    workdir.mkdir(exist_ok=True)
    tag = f"s{os.getpid() % 10000}"
    results: dict[str, subprocess.CompletedProcess] = {}
    with NetNS("sips") as srv, NetNS("sipc") as cli:
        srv.veth(f"{tag}s", f"{tag}c", cli)
        srv.ip("addr", "add", f"{SERVER}/24", "dev", f"{tag}s")
        srv.ip("addr", "add", f"{BUSY}/24", "dev", f"{tag}s")
        (workdir / "busy_uas.xml").write_text(BUSY_UAS)
        (workdir / "busy_uac.xml").write_text(BUSY_UAC)
        cli.ip("addr", "add", f"{CLIENT}/24", "dev", f"{tag}c")
        common = ["-i", SERVER, "-p", "5060", "-nostdin", "-aa"]
        servers = [
            srv.exec(
                "sipp",
                "-sn",
                "uas",
                "-t",
                t,
                *common,
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for t in ("u1", "t1")
        ]
        servers.append(
            srv.exec(
                "sipp",
                "-sf",
                "busy_uas.xml",
                "-t",
                "u1",
                "-i",
                BUSY,
                "-p",
                "5060",
                "-nostdin",
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
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
            time.sleep(0.5)  # the UASs bind their sockets
            for t, port in (("u1", "5061"), ("t1", "5062")):
                results[t] = cli.run(
                    "sipp",
                    "-sn",
                    "uac",
                    f"{SERVER}:5060",
                    "-t",
                    t,
                    "-i",
                    CLIENT,
                    "-p",
                    port,
                    "-m",
                    str(CALLS),
                    "-r",
                    "20",
                    "-d",
                    "100",
                    "-nostdin",
                    "-timeout",
                    "20",
                    "-trace_stat",
                    "-stf",
                    str(workdir / f"uac-{t}.csv"),
                    timeout=60,
                )
            results["busy"] = cli.run(
                "sipp",
                "-sf",
                str(workdir / "busy_uac.xml"),
                f"{BUSY}:5060",
                "-t",
                "u1",
                "-i",
                CLIENT,
                "-p",
                "5063",
                "-m",
                str(BUSY_CALLS),
                "-r",
                "20",
                "-nostdin",
                "-timeout",
                "20",
                "-trace_stat",
                "-stf",
                str(workdir / "uac-busy.csv"),
                timeout=60,
            )
            cli.call(raw_udp_client)
            cli.call(raw_tcp_client)
            time.sleep(0.5)
        finally:
            for p in (dump, *servers):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return results


def uac_stats(csv_path: Path) -> dict[str, int]:
    """SIPp's own statistics (the last row of -trace_stat): calls made, successful, failed."""
    rows = [r.split(";") for r in csv_path.read_text().splitlines() if r.strip()]
    head, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(head)}
    return {k: int(last[col[k]]) for k in ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)")}


def _wait_capture(dump: subprocess.Popen) -> None:
    assert dump.stderr is not None
    os.set_blocking(dump.stderr.fileno(), False)
    deadline = time.monotonic() + 10
    seen = b""
    while time.monotonic() < deadline and b"listening" not in seen:
        seen += dump.stderr.read() or b""
        time.sleep(0.05)
