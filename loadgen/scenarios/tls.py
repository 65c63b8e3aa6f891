"""`tls`: TLS 1.3 full handshakes and TLS 1.2 session resumptions on port 443, then application
data both ways; every 4th ClientHello is split across two TCP segments. `--count` = connections."""

from __future__ import annotations

import random

from celltap.loadgen import tlsmsg as t
from celltap.loadgen.link import Link, ephemeral_port, make_link
from celltap.loadgen.scenario import Frames, register_flows
from celltap.loadgen.tcpconv import TcpConversation

NET = 3
SNIS = (
    "www.example.com",
    "mail.example.net",
    "api.example.org",
    "login.example.com",
    "video.example.net",
    "updates.example.org",
    "chat.example.com",
)


def conversation(rng: random.Random, link: Link, *, tls13: bool, split: bool, sport: int = 443) -> Frames:
    """One TLS connection on `link`: handshake, 1-4 request/response pairs, close_notify, FIN."""
    conv = TcpConversation(link, ephemeral_port(rng), sport, rng)
    conv.handshake()
    sni = rng.choice(SNIS)
    offer = ["h2", "http/1.1"] if rng.random() < 0.8 else ["http/1.1"]
    chosen = rng.choice(offer)
    sid = rng.randbytes(32)
    hello = t.client_hello(rng, sni, offer, tls13=tls13, session_id=sid)
    if split:
        cut = rng.randint(40, len(hello) - 40)
        conv.send(True, hello[:cut], peer_ack=False)
        conv.send(True, hello[cut:], peer_ack=False)
    else:
        conv.send(True, hello, peer_ack=False)
    sh = t.server_hello(rng, sid, tls13=tls13, alpn=chosen)
    if tls13:
        # EncryptedExtensions, Certificate, CertificateVerify, Finished travel as application data.
        conv.send(
            False, sh + t.change_cipher_spec() + t.encrypted(rng, t.CONTENT_APPDATA, rng.randint(2500, 4500))
        )
        conv.send(True, t.change_cipher_spec() + t.encrypted(rng, t.CONTENT_APPDATA, 53), peer_ack=False)
    else:
        # Abbreviated handshake (resumed session): no certificate on the wire.
        conv.send(
            False, sh + t.change_cipher_spec() + t.encrypted(rng, t.CONTENT_HANDSHAKE, 40), peer_ack=False
        )
        conv.send(True, t.change_cipher_spec() + t.encrypted(rng, t.CONTENT_HANDSHAKE, 40), peer_ack=False)
    for _ in range(rng.randint(1, 4)):
        conv.send(True, t.encrypted(rng, t.CONTENT_APPDATA, rng.randint(90, 700)), peer_ack=False)
        size = rng.choice((300, 1500, 9000, 16401))
        body = b"".join(
            t.encrypted(rng, t.CONTENT_APPDATA, min(16401, size - k)) for k in range(0, size, 16401)
        )
        conv.send(False, body)
    conv.send(True, t.encrypted(rng, t.CONTENT_APPDATA if tls13 else t.CONTENT_ALERT, 26), peer_ack=False)
    conv.fin(from_client=True)
    return conv.frames


@register_flows(
    "tls",
    "TLS 1.3 / 1.2-resumption handshakes (SNI, ALPN, GREASE, key_share), app data",
    "TCP connections (1/3 TLS 1.2; every 4th ClientHello split in two segments)",
    50,
)
def tls_flow(rng: random.Random, i: int) -> Frames:
    """Connection number i of the tls scenario."""
    return conversation(rng, make_link(rng, NET, i), tls13=i % 3 != 2, split=i % 4 == 1)
