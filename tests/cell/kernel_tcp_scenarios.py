"""Real TCP connections of the Linux kernel for the TCP state tests, run inside a test's network namespace.

`python -m tests.cell.kernel_tcp_scenarios NAME` runs one scenario on the namespace's loopback
and prints a JSON summary of what the applications saw (the ground truth the tests check the
cell's view against); tests/cell/kernel_tcp.py captures the traffic with tcpdump meanwhile.

* `rst_evasion`: a request/response connection into which out-of-window RSTs are injected with a raw
  socket in the client's name (far ahead, behind, a few MB ahead); the kernel ignores them and the
  connection goes on and closes with FINs. A second connection is aborted by the client for real
  (SO_LINGER 0: an in-window RST).
* `tfo`: TCP Fast Open without cookies (sysctl net.ipv4.tcp_fastopen=0x207): the request rides in
  the SYN (MSG_FASTOPEN); the server has TCP_FASTOPEN.
* `states`: connections ending in Zeek's S0 (SYN dropped by nftables), REJ (closed port), SF, RSTO
  (client aborts), RSTR (server aborts).
* `talk`: one connection with several request/response rounds, closed with FINs (for midstream
  pickup the test cuts its first packets off).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Sniffer(threading.Thread):
    """Follows the last sequence number + length each (src port, dst port) sent, on lo (AF_PACKET)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.next_seq: dict[tuple[int, int], int] = {}
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] != PACKET_OUTGOING or len(data) < 14 + 40 or data[14] >> 4 != 4 or data[23] != 6:
                continue
            ihl = (data[14] & 15) * 4
            tot = struct.unpack_from("!H", data, 16)[0]
            t = 14 + ihl
            sp, dp, seq = struct.unpack_from("!HHI", data, t)
            flags = data[t + 13]
            plen = tot - ihl - (data[t + 12] >> 4) * 4
            end = seq + plen + (1 if flags & 0x03 else 0)  # SYN and FIN take a sequence number
            self.next_seq[(sp, dp)] = end & 0xFFFFFFFF


def _checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def inject_rst(sport: int, dport: int, seq: int, ack: int) -> None:
    """Send one RST+ACK from 127.0.0.1:sport to 127.0.0.1:dport with a raw socket (IP_HDRINCL)."""
    src = dst = socket.inet_aton(HOST)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, 0x14, 512, 0, 0)
    csum = _checksum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0x1234, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.sendto(ip + tcp, (HOST, 0))
    raw.close()


def _server(port: int, rounds: int, abort: bool = False, fastopen: bool = False) -> threading.Thread:
    """A server answering `rounds` requests with `OK <request>`; `abort`: RST instead of FIN at the end."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fastopen:
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
    ls.bind((HOST, port))
    ls.listen(4)

    def serve() -> None:
        c, _ = ls.accept()
        for _ in range(rounds):
            req = _recv_line(c)
            if not req:
                break
            c.sendall(b"OK " + req)
        if abort:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            _recv_line(c)  # the client's FIN
        c.close()
        ls.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _recv_line(c: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            d = c.recv(4096)
        except ConnectionResetError:
            return buf
        if not d:
            return buf
        buf += d
    return buf


def _ask(c: socket.socket, text: bytes) -> bytes:
    c.sendall(text)
    return _recv_line(c)


def rst_evasion() -> dict:
    sniff = Sniffer()
    sniff.start()
    srv = _server(8080, 3)
    c = socket.create_connection((HOST, 8080))
    cport = c.getsockname()[1]
    answers = [_ask(c, b"GET /one\n")]
    time.sleep(0.2)
    nxt = sniff.next_seq[(cport, 8080)]
    peer = sniff.next_seq[(8080, cport)]
    # the receiver (RFC 5961) ignores RSTs outside its window: far ahead, behind, a few MB ahead
    for seq in (nxt + (1 << 30) + 12345, nxt - 50000, nxt + 5_000_000):
        inject_rst(cport, 8080, seq, peer)
        time.sleep(0.05)
    answers.append(_ask(c, b"GET /two\n"))  # the connection is still alive
    answers.append(_ask(c, b"GET /three\n"))
    c.shutdown(socket.SHUT_WR)
    srv.join(30)
    c.close()
    # a second connection aborted by the client: a real, in-window RST
    srv2 = _server(8081, 1)
    c2 = socket.create_connection((HOST, 8081))
    abort_port = c2.getsockname()[1]
    answers.append(_ask(c2, b"GET /abort\n"))
    c2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c2.close()
    srv2.join(30)
    time.sleep(0.2)
    sniff.stop = True
    return {
        "evaded_port": cport,
        "abort_port": abort_port,
        "injected": 3,
        "answers": [a.decode() for a in answers],
    }


def tfo() -> dict:
    srv = _server(8082, 1, fastopen=True)
    c = socket.socket()
    c.sendto(b"GET /fast\n", socket.MSG_FASTOPEN, (HOST, 8082))
    answer = _recv_line(c)
    info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    c.shutdown(socket.SHUT_WR)
    srv.join(30)
    c.close()
    # tcpi_options (byte 5): TCPI_OPT_SYN_DATA (0x20) = data was sent in the SYN and acknowledged
    return {"port": 8082, "answer": answer.decode(), "syn_data_acked": bool(info[5] & 0x20)}


def states() -> dict:
    out: dict[str, int] = {}
    # S0: the SYN is dropped before any socket sees it (retransmitted a few times, same ISN)
    subprocess.run(
        ["nft", "-f", "-"],
        input="table inet ctdrop {\n chain in {\n type filter hook input priority 0;\n"
        " tcp dport 9009 drop\n }\n}\n",
        text=True,
        check=True,
    )
    c = socket.socket()
    c.settimeout(2.5)
    try:
        c.connect((HOST, 9009))
    except OSError:
        pass
    out["S0"] = c.getsockname()[1]
    c.close()
    # REJ: nothing listens
    c = socket.socket()
    try:
        c.connect((HOST, 9010))
    except ConnectionRefusedError:
        pass
    out["REJ"] = c.getsockname()[1]
    c.close()
    # SF: request, response, FIN both ways
    srv = _server(9011, 1)
    c = socket.create_connection((HOST, 9011))
    out["SF"] = c.getsockname()[1]
    _ask(c, b"GET /sf\n")
    c.shutdown(socket.SHUT_WR)
    srv.join(30)
    c.close()
    # RSTO: the client (originator) aborts
    srv = _server(9012, 1)
    c = socket.create_connection((HOST, 9012))
    out["RSTO"] = c.getsockname()[1]
    _ask(c, b"GET /rsto\n")
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    srv.join(30)
    # RSTR: the server (responder) aborts after answering
    srv = _server(9013, 1, abort=True)
    c = socket.create_connection((HOST, 9013))
    out["RSTR"] = c.getsockname()[1]
    _ask(c, b"GET /rstr\n")
    srv.join(30)
    time.sleep(0.2)
    c.close()
    time.sleep(0.2)
    return out


def talk() -> dict:
    srv = _server(8083, 6)
    c = socket.create_connection((HOST, 8083))
    answers = [_ask(c, f"GET /{i} {'x' * (100 * i)}\n".encode()) for i in range(6)]
    c.shutdown(socket.SHUT_WR)
    srv.join(30)
    done = not srv.is_alive()
    c.close()
    time.sleep(0.2)
    return {"port": 8083, "answers": len(answers), "server_done": done}


if __name__ == "__main__":
    print(json.dumps({"rst_evasion": rst_evasion, "tfo": tfo, "states": states, "talk": talk}[sys.argv[1]]()))
