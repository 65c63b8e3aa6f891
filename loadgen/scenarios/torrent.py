"""`torrent_tracker`: BitTorrent HTTP tracker announces (GET /announce?info_hash=..&peer_id=..)
to trackers on port 6969 (three in four) or 80, with bencoded compact-peer responses.
`--count` = announces (one TCP connection each)."""

from __future__ import annotations

import random
import struct
from urllib.parse import quote_from_bytes

from celltap.loadgen.link import Link, ephemeral_port, make_link
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation

NET = 7
CLIENTS = (
    ("-qB4520-", "qBittorrent/4.5.2"),
    ("-TR3000-", "Transmission/3.00"),
    ("-DE2110-", "Deluge/2.1.1 libtorrent/2.0.9"),
    ("-lt0D80-", "libtorrent/2.0.8.0"),
)


def bencode(value: object) -> bytes:
    """Bencode ints, bytes, str, lists and dicts (keys sorted, as the format requires)."""
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def announce(rng: random.Random, host: str, port: int) -> tuple[bytes, bytes, bytes]:
    """(info_hash, request, response) of one announce."""
    info_hash = rng.randbytes(20)
    prefix, agent = rng.choice(CLIENTS)
    peer_id = prefix.encode() + rng.randbytes(12)
    event = rng.choice(("started", "started", "completed", "stopped", ""))
    q = (
        f"info_hash={quote_from_bytes(info_hash, safe='')}&peer_id={quote_from_bytes(peer_id, safe='')}"
        f"&port={rng.randint(6881, 6999)}&uploaded={rng.randint(0, 10**9)}&downloaded={rng.randint(0, 10**9)}"
        f"&left={rng.randint(0, 4 * 10**9)}&corrupt=0&key={rng.getrandbits(32):08X}"
        + (f"&event={event}" if event else "")
        + "&numwant=200&compact=1&no_peer_id=1"
    )
    host_hdr = host if port == 80 else f"{host}:{port}"
    req = (
        f"GET /announce?{q} HTTP/1.1\r\nHost: {host_hdr}\r\nUser-Agent: {agent}\r\n"
        "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    ).encode()
    peers = b"".join(
        bytes((198, 51, 100, rng.randint(1, 254))) + struct.pack("!H", rng.randint(1024, 65535))
        for _ in range(rng.randint(0, 50))
    )
    body = bencode(
        {
            "complete": rng.randint(0, 500),
            "incomplete": rng.randint(0, 200),
            "interval": 1800,
            "min interval": 900,
            "peers": peers,
        }
    )
    resp = (
        f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    return info_hash, req, resp


def conversation(rng: random.Random, link: Link, port: int) -> Frames:
    """One announce on its own connection; the tracker closes first (Connection: close)."""
    conv = TcpConversation(link, ephemeral_port(rng), port, rng)
    conv.handshake()
    _, req, resp = announce(
        rng, rng.choice(("tracker.example.org", "tracker.example.net", "bt.example.com")), port
    )
    conv.send(True, req, peer_ack=False)
    conv.send(False, resp, peer_ack=False)
    conv.fin(from_client=False)
    return conv.frames


@register_flows(
    "torrent_tracker",
    "BitTorrent HTTP tracker announces on ports 6969 and 80, bencoded replies",
    "announces (every 4th to port 80)",
    30,
)
def torrent_flow(rng: random.Random, i: int) -> Frames:
    """Announce number i of the torrent_tracker scenario."""
    return conversation(rng, make_link(rng, NET, i), 80 if i % 4 == 3 else 6969)
