"""`http`: HTTP/1.1 connections with keep-alive, pipelining, chunked and Content-Length bodies,
HEAD, and Expect: 100-continue uploads. `--count` = TCP connections."""

from __future__ import annotations

import random
import struct
import zlib

from celltap.loadgen.link import Link, ephemeral_port, make_link
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation

NET = 1
HOSTS = (
    "www.example.com",
    "api.example.net",
    "cdn.example.org",
    "shop.example",
    "static.example.com",
    "news.example.org",
    "login.example.net",
)
USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 "
    "Safari/537.36",
    "curl/8.4.0",
    "python-requests/2.31.0",
    "Wget/1.21.4",
)
PATHS = (
    "/",
    "/index.html",
    "/api/v1/items",
    "/api/v1/users/42",
    "/static/app.js",
    "/img/logo.png",
    "/search?q=cell+tap&page=2",
    "/news/2023/11/14/story.html",
    "/favicon.ico",
    "/login",
)
STATUSES = (
    (200, "OK"),
    (200, "OK"),
    (200, "OK"),
    (404, "Not Found"),
    (301, "Moved Permanently"),
    (304, "Not Modified"),
    (500, "Internal Server Error"),
    (201, "Created"),
)
SERVERS = ("nginx/1.24.0", "Apache/2.4.57 (Debian)", "cloudflare", "gunicorn")


def _content_type(body: bytes) -> str:
    if body.startswith(b"\x89PNG"):
        return "image/png"
    if body.startswith(b"{"):
        return "application/json"
    return "text/html; charset=utf-8"


def png(rng: random.Random, size: int) -> bytes:
    """A valid PNG (random RGB pixels, stored incompressible) of roughly `size` bytes."""
    width = 16
    height = max(1, size // (3 * width + 1))
    raw = b"".join(b"\x00" + rng.randbytes(3 * width) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data))

    ihdr = struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 0))
        + chunk(b"IEND", b"")
    )


def body_for(rng: random.Random, path: str, size: int) -> bytes:
    """A deterministic body of roughly `size` bytes whose look suits the path."""
    if "api" in path:
        items = ",".join(
            f'{{"id":{rng.randint(1, 99999)},"name":"item-{rng.getrandbits(24):06x}"}}'
            for _ in range(max(1, size // 40))
        )
        return f'{{"items":[{items}]}}'.encode()
    if path.endswith(".png"):
        return png(rng, size)
    words = ("cell", "flow", "tap", "packet", "stream", "incubator", "abstractor", "analysis")
    text = " ".join(rng.choice(words) for _ in range(max(1, size // 7)))
    page = f"<!DOCTYPE html><html><head><title>celltap</title></head><body><p>{text}</p></body></html>\n"
    return page.encode()


def request(
    rng: random.Random,
    method: str,
    host: str,
    path: str,
    *,
    body: bytes = b"",
    expect: bool = False,
    agent: str = "",
) -> bytes:
    """An HTTP/1.1 request with realistic headers."""
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        f"User-Agent: {agent}",
        "Accept: text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8",
        "Accept-Language: en-US,en;q=0.5",
        "Accept-Encoding: gzip, deflate",
        "Connection: keep-alive",
    ]
    if rng.random() < 0.5:
        lines.append(f"Cookie: session={rng.getrandbits(64):016x}")
    if body or expect:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if expect:
        lines.append("Expect: 100-continue")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if expect else head + body


def response(
    rng: random.Random,
    status: tuple[int, str],
    body: bytes,
    *,
    chunked: bool = False,
    head_only: bool = False,
    path: str = "/",
) -> bytes:
    """An HTTP/1.1 response, its body framed by Content-Length or chunked encoding."""
    code, reason = status
    if code in (304,) or code < 200:
        body = b""
    lines = [
        f"HTTP/1.1 {code} {reason}",
        "Date: Tue, 14 Nov 2023 22:13:20 GMT",
        f"Server: {rng.choice(SERVERS)}",
        f"Content-Type: {_content_type(body)}",
        "Connection: keep-alive",
    ]
    if code == 301:
        lines.append(f"Location: https://www.example.com{path}")
    if chunked and not head_only and code != 304:
        lines.append("Transfer-Encoding: chunked")
        out = bytearray()
        pos = 0
        while pos < len(body):
            n = min(len(body) - pos, rng.choice((256, 1000, 4096, 8192)))
            out += f"{n:x}\r\n".encode() + body[pos : pos + n] + b"\r\n"
            pos += n
        out += b"0\r\n\r\n"
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + bytes(out)
    if code != 304:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only or code == 304 else head + body


def conversation(rng: random.Random, link: Link, *, sport: int = 80, host: str | None = None) -> Frames:
    """One keep-alive connection with 2-5 exchanges of varied kinds, then FIN."""
    conv = TcpConversation(link, ephemeral_port(rng), sport, rng)
    conv.handshake()
    host = host or rng.choice(HOSTS)
    agent = rng.choice(USER_AGENTS)
    kinds = ["get", "chunked", "head", "pipeline", "continue", "post"]
    rng.shuffle(kinds)
    for kind in kinds[: rng.randint(2, 5)]:
        path = rng.choice(PATHS)
        body = body_for(rng, path, rng.choice((60, 300, 1200, 5000, 20000)))
        status = rng.choice(STATUSES)
        if kind == "get":
            conv.send(True, request(rng, "GET", host, path, agent=agent), peer_ack=False)
            conv.send(False, response(rng, status, body, path=path))
        elif kind == "chunked":
            conv.send(True, request(rng, "GET", host, path, agent=agent), peer_ack=False)
            conv.send(False, response(rng, (200, "OK"), body, chunked=True, path=path))
        elif kind == "head":
            conv.send(True, request(rng, "HEAD", host, path, agent=agent), peer_ack=False)
            conv.send(False, response(rng, (200, "OK"), body, head_only=True, path=path))
        elif kind == "pipeline":
            path2 = rng.choice(PATHS)
            body2 = body_for(rng, path2, 400)
            conv.send(True, request(rng, "GET", host, path, agent=agent), peer_ack=False)
            conv.send(True, request(rng, "GET", host, path2, agent=agent), peer_ack=False)
            conv.send(
                False, response(rng, status, body, path=path) + response(rng, (200, "OK"), body2, path=path2)
            )
        elif kind == "continue":
            upload = b'{"upload":"' + rng.randbytes(600).hex().encode() + b'"}'
            conv.send(
                True,
                request(rng, "PUT", host, "/api/v1/upload", body=upload, expect=True, agent=agent),
                peer_ack=False,
            )
            conv.send(False, b"HTTP/1.1 100 Continue\r\n\r\n", peer_ack=False)
            conv.send(True, upload, peer_ack=False)
            conv.send(False, response(rng, (201, "Created"), b'{"ok":true}', path="/api/v1/upload"))
        else:
            form = f'{{"user":"u{rng.getrandbits(20)}","action":"update"}}'.encode()
            method = rng.choice(("POST", "DELETE", "PATCH", "OPTIONS"))
            conv.send(
                True, request(rng, method, host, "/api/v1/items", body=form, agent=agent), peer_ack=False
            )
            conv.send(False, response(rng, status, body, path="/api/v1/items"))
    conv.fin(from_client=rng.random() < 0.5)
    return conv.frames


@register_flows(
    "http",
    "HTTP/1.1 keep-alive, pipelining, chunked/Content-Length, HEAD, 100-continue",
    "TCP connections (2-5 requests each)",
    50,
)
def http_flow(rng: random.Random, i: int) -> Frames:
    """Connection number i of the http scenario."""
    return conversation(rng, make_link(rng, NET, i))
