"""Real HTTP traffic for the HTTP analyzer's tests: nginx, tinyproxy, curl, wget and raw sockets.

Theory of operation: two network namespaces joined by a veth pair (names unique to this process), the
server side running nginx (HTTP on :80, TLS on :443, a keep-alive upstream on 127.0.0.1:8081 for
bodies nginx must read and chunk) and tinyproxy (:8888, CONNECT to :443). tcpdump captures the
server's veth. The client namespace runs curl and wget with the options real users give (keep-alive
with several URLs, HEAD, HTTP/1.0, gzip'd chunked responses, Expect: 100-continue uploads, Basic auth,
referrer, CONNECT through the proxy) and, for what no client sends on purpose, raw sockets writing
bytes to the real nginx (pipelining in one write, HTTP/0.9, lone-LF line ends, empty lines between
requests, obs-fold, request lines with missing parts, several transfer codings): the server's answers
are nginx's own. Every process is started and stopped by PID; the namespaces are deleted at the end.

`make_capture(workdir)` returns the capture's path and the document root (the served files, so tests
can name what each body is). Requires root, nginx, tinyproxy, curl, wget, tcpdump, openssl, ethtool.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

SERVER, CLIENT = "10.99.0.2", "10.99.0.1"
# 64 MiB of kernel buffer, each packet handed over at once, whole packets, written as they come
TCPDUMP = ("tcpdump", "--immediate-mode", "-B", "65536", "-U", "-s", "0")
TOOLS = ("ip", "nginx", "tinyproxy", "curl", "wget", "tcpdump", "openssl", "ethtool")


def missing_tools() -> list[str]:
    """Tools this capture needs that are not installed."""
    return [t for t in TOOLS if shutil.which(t) is None]


def _png() -> bytes:
    """A valid 2x2 RGB PNG (signature, IHDR, IDAT, IEND), written from the PNG specification."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack("!I", len(body)) + kind + body + struct.pack("!I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + bytes([200, 10, 10]) * 2 for _ in range(2))
    ihdr = struct.pack("!IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _gif() -> bytes:
    """A valid 1x1 GIF89a (header, screen descriptor, colour table, image, LZW data, trailer)."""
    return (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )


def _pdf() -> bytes:
    body = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    body += b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    return body


def write_docroot(root: Path) -> dict[str, bytes]:
    """Write the files nginx serves; return {uri path: content}."""
    rng = random.Random(1313)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("readme.txt", "a zip archive made by Python's zipfile\n" * 20)
    html = b"<!DOCTYPE html>\n<html><head><title>celltap</title></head><body>" + b"<p>hello</p>" * 300
    files = {
        "/index.html": html + b"</body></html>\n",
        "/data.json": json.dumps({"name": "celltap", "values": list(range(200))}).encode(),
        "/doc.xml": b'<?xml version="1.0" encoding="UTF-8"?>\n<root>' + b"<item>x</item>" * 50 + b"</root>\n",
        "/img.png": _png(),
        "/anim.gif": _gif(),
        "/doc.pdf": _pdf(),
        "/archive.zip": zbuf.getvalue(),
        "/blob.gz": gzip.compress(b"compressed payload\n" * 100, mtime=0),
        "/plain.txt": b"just some plain text in several lines\n" * 40,
        "/big.bin": rng.randbytes(300_000),
        "/gz/page.html": html + b"<!-- compressible -->" * 200 + b"</body></html>\n",
    }
    for path, content in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return files


# nginx's own record of each request it read (the oracle for what tshark does not decode)
LOG_VARS = (
    "remote_addr", "remote_port", "request", "status", "body_bytes_sent", "http_referer", "http_user_agent",
    "remote_user", "request_method", "request_uri", "server_protocol", "http_host",
    "sent_http_content_encoding",
)  # fmt: skip
LOG_FORMAT = "\t".join(f"${v}" for v in LOG_VARS)


def nginx_log(work: Path) -> list[dict[str, str]]:
    """nginx's access log of the capture: one dict per request (values "-" when empty, as nginx logs)."""
    rows = []
    for line in (work / "access.log").read_text().splitlines():
        rows.append(dict(zip(LOG_VARS, line.split("\t"), strict=True)))
    return rows


def _nginx_conf(d: Path, root: Path) -> str:
    temp = "\n".join(
        f"    {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 128; }}
http {{
{temp}
    log_format fields '{LOG_FORMAT}';
    access_log {d}/access.log fields;
    types {{ text/html html; application/json json; application/xml xml; image/png png; image/gif gif;
             application/pdf pdf; application/zip zip; application/gzip gz; text/plain txt;
             application/octet-stream bin; }}
    keepalive_requests 1000;
    server {{
        listen {SERVER}:80;
        root {root};
        location /gz/ {{ gzip on; gzip_min_length 0; gzip_types *; }}
        location /upload {{ client_max_body_size 10m; proxy_pass http://127.0.0.1:8081; }}
        location /stream {{ proxy_pass http://127.0.0.1:8081; proxy_http_version 1.1; }}
    }}
    server {{
        listen {SERVER}:443 ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        root {root};
    }}
    server {{
        listen 127.0.0.1:8081;
        location /upload {{ return 201 "stored\\n"; }}
        location /stream {{ gzip on; gzip_min_length 0; gzip_types *; gzip_http_version 1.0;
                            chunked_transfer_encoding on; default_type text/plain;
                            return 200 "streamed body line\\n"; }}
    }}
}}
"""


def _tinyproxy_conf(d: Path) -> str:
    return f"""User root
Group root
Port 8888
Listen {SERVER}
Timeout 30
MaxClients 16
Allow {CLIENT}
ConnectPort 443
LogFile "{d}/tinyproxy.log"
LogLevel Info
PidFile "{d}/tinyproxy.pid"
"""


# raw requests: (name, bytes written in one send). The server's answer is read until it closes.
RAW_CASES: list[tuple[str, bytes]] = [
    (
        "pipelined",
        b"GET /plain.txt HTTP/1.1\r\nHost: s\r\n\r\nGET /data.json HTTP/1.1\r\nHost: s\r\n\r\n"
        b"HEAD /index.html HTTP/1.1\r\nHost: s\r\n\r\n"
        b"GET /doc.xml HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
    ),
    ("http09", b"GET /plain.txt\r\n"),
    (
        "bare_lf",
        b"GET /index.html HTTP/1.1\nHost: s\nUser-Agent: raw/1\n\n"
        b"GET /doc.xml HTTP/1.1\nHost: s\nConnection: close\n\n",
    ),
    (
        "leading_crlf",
        b"\r\nGET /plain.txt HTTP/1.1\r\nHost: s\r\n\r\n\r\n\r\nGET /img.png HTTP/1.1\r\nHost: s\r\n"
        b"Connection: close\r\n\r\n",
    ),
    (
        "obs_fold",
        b"GET /plain.txt HTTP/1.1\r\nHost: s\r\nX-Folded: first\r\n  second\r\nConnection: close\r\n\r\n",
    ),
    ("method_only", b"GET\r\n"),
    ("blank_in_uri", b"GET /plain text.txt HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"),
    ("missing_uri", b"GET HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"),
    (
        "te_gzip_chunked",
        b"POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    ),
    (
        "te_chunked_gzip",
        b"POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n"
        b"hello",
    ),
    (
        "chunked_request",
        b"POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n",
    ),
]

RAW_CLIENT = r"""
import socket, sys, time
host, port, payload = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.create_connection((host, port), timeout=5)
s.sendall(payload)
s.settimeout(3)
try:
    while s.recv(65536):
        pass
except socket.timeout:
    pass
s.close()
"""


def curl_cases(server: str) -> list[list[str]]:
    """The curl and wget command lines the capture runs (one connection each, several URLs in some)."""
    u = f"http://{server}"
    return [
        ["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", f"{u}/index.html",
         f"{u}/data.json", f"{u}/img.png"],
        ["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
         f"{u}/doc.xml", f"{u}/anim.gif", f"{u}/doc.pdf", f"{u}/archive.zip"],
        ["curl", "-s", "-o", "/dev/null", "-e", "http://referrer.example/page", "-u", "alice:secret",
         "-A", "celltap-test/1.0", f"{u}/blob.gz"],
        ["curl", "-s", "-I", f"{u}/index.html"],
        ["curl", "-s", "-0", "-o", "/dev/null", f"{u}/plain.txt"],
        ["curl", "-s", "--compressed", "-o", "/dev/null", f"{u}/gz/page.html"],
        ["curl", "-s", "--compressed", "-o", "/dev/null", f"{u}/stream"],
        # HTTP/1.0 + gzip: nginx cannot chunk, so the response has no length and ends with the connection
        ["curl", "-s", "-0", "--compressed", "-o", "/dev/null", f"{u}/stream"],
        ["curl", "-s", "-o", "/dev/null", "-H", "Expect: 100-continue", "--data-binary", "@{docroot}/big.bin",
         f"{u}/upload"],
        ["curl", "-s", "-o", "/dev/null", "-H", "X-Forwarded-For: 192.0.2.7", "-H", "Via: 1.1 proxy.example",
         "--data", "a=1&b=two", f"{u}/upload"],
        ["curl", "-s", "-o", "/dev/null", f"{u}/missing/file"],
        ["curl", "-s", "-k", "-o", "/dev/null", "-x", f"http://{server}:8888", f"https://{server}/index.html"],
        ["wget", "-q", "-O", "/dev/null", f"{u}/big.bin", f"{u}/img.png"],
    ]  # fmt: skip


class _Net:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100, 999)}"
        self.ns_s, self.ns_c = f"cthttp{tag}s", f"cthttp{tag}c"
        self.if_s, self.if_c = f"hs{tag}", f"hc{tag}"
        self.procs: list[subprocess.Popen] = []

    def run(
        self, ns: str, argv: list[str], timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess:
        p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"{argv} in {ns}: {p.returncode} {p.stderr.decode(errors='replace')[-500:]}")
        return p

    def spawn(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen:
        f = open(log, "wb")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=f, stderr=subprocess.STDOUT)
        f.close()
        self.procs.append(p)
        return p

    def up(self) -> None:
        sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        sh("ip", "netns", "add", self.ns_s)
        sh("ip", "netns", "add", self.ns_c)
        sh("ip", "link", "add", self.if_s, "netns", self.ns_s, "type", "veth", "peer", "name", self.if_c,
           "netns", self.ns_c)  # fmt: skip
        for ns, ifname, addr in ((self.ns_s, self.if_s, SERVER), (self.ns_c, self.if_c, CLIENT)):
            self.run(ns, ["ip", "addr", "add", f"{addr}/24", "dev", ifname])
            self.run(
                ns,
                ["ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off", "tx", "off"],
                check=False,
            )
            self.run(ns, ["ip", "link", "set", ifname, "up"])
            self.run(ns, ["ip", "link", "set", "lo", "up"])

    def down(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for ns in (self.ns_c, self.ns_s):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _wait_listening(net: _Net, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = net.run(net.ns_s, ["ss", "-ltn"], check=False).stdout.decode()
        if f"{SERVER}:{port} " in out or f"{SERVER}:{port}\t" in out:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {SERVER}:{port} in the server namespace")


@contextlib.contextmanager
def _servers(net: _Net, d: Path, root: Path) -> Iterator[None]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"), "-out",
         str(d / "cert.pem"), "-days", "2", "-subj", "/CN=www.celltap.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    (d / "nginx.conf").write_text(_nginx_conf(d, root))
    (d / "tinyproxy.conf").write_text(_tinyproxy_conf(d))
    net.spawn(net.ns_s, ["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], d / "nginx.out")
    net.spawn(net.ns_s, ["tinyproxy", "-d", "-c", str(d / "tinyproxy.conf")], d / "tinyproxy.out")
    _wait_listening(net, 80)
    _wait_listening(net, 8888)
    yield


def make_capture(work: Path) -> tuple[Path, dict[str, bytes]]:
    """Build the capture (see the module docstring); return (pcap path, served files by URI path)."""
    work.mkdir(parents=True, exist_ok=True)
    root = work / "www"
    files = write_docroot(root)
    pcap = work / "http-real.pcap"
    net = _Net()
    try:
        net.up()
        with _servers(net, work, root):
            dump = net.spawn(
                net.ns_s,
                # 64 MiB of kernel buffer, each packet handed over at once: the capture is the
                # tests' input, and a loaded machine once dropped part of a 300 KB upload from it
                [*TCPDUMP, "-i", net.if_s, "-w", str(pcap), "tcp"],
                work / "tcpdump.out",
            )
            time.sleep(1.0)
            for argv in curl_cases(SERVER):
                argv = [a.replace("{docroot}", str(root)) for a in argv]
                net.run(net.ns_c, argv, check=False)
            client = work / "raw_client.py"
            client.write_text(RAW_CLIENT)
            for _, payload in RAW_CASES:
                net.run(net.ns_c, [sys.executable, str(client), SERVER, "80", payload.hex()], check=False)
            time.sleep(1.0)
            dump.send_signal(signal.SIGINT)
            dump.wait(10)
    finally:
        net.down()
    stats = (work / "tcpdump.out").read_text(errors="replace")
    m = re.search(r"(\d+) packets? dropped by kernel", stats)
    if m is None or int(m.group(1)):
        raise RuntimeError(f"the HTTP bed's tcpdump did not capture every packet: {stats[-500:]!r}")
    return pcap, files


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/http-real")
    print(make_capture(out)[0])
