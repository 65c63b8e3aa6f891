"""Hand-written conversations that exercise each protocol's corner cases (independent of loadgen)."""

from __future__ import annotations

import ipaddress
import struct

from tests.analyzers.pcapgen import Conversation

# ---------------------------------------------------------------- HTTP


def http_conversations() -> list[Conversation]:
    """Keep-alive, pipelining, chunked, 100-continue, HEAD, 204/304, large bodies, close-delimited."""
    big = b"x" * 5000
    convs = [
        Conversation(
            "tcp",
            ("10.0.0.1", 40001),
            ("10.0.1.1", 80),
            [
                (True, b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: t/1\r\n\r\n"),
                (False, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nContent-Type: text/html\r\n\r\n" + big),
                (True, b"GET /style.css HTTP/1.1\r\nHost: www.example.com\r\n\r\n"),
                (False, b'HTTP/1.1 304 Not Modified\r\nETag: "1"\r\n\r\n'),
            ],
        ),
        # Pipelining: two requests in one segment, both responses in one segment.
        Conversation(
            "tcp",
            ("10.0.0.2", 40002),
            ("10.0.1.1", 80),
            [
                (True, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n"),
                (
                    False,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n",
                ),
            ],
        ),
        # Chunked request with 100-continue, chunked response with trailer.
        Conversation(
            "tcp",
            ("10.0.0.3", 40003),
            ("10.0.1.2", 8080),
            [
                (
                    True,
                    b"POST /upload HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n"
                    b"Expect: 100-continue\r\n\r\n",
                ),
                (False, b"HTTP/1.1 100 Continue\r\n\r\n"),
                (True, b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"),
                (
                    False,
                    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"a\r\n0123456789\r\n0\r\nX-Checksum: 1\r\n\r\n",
                ),
                (True, b"DELETE /upload/1 HTTP/1.1\r\nHost: up\r\n\r\n"),
                (False, b"HTTP/1.1 204 No Content\r\n\r\n"),
            ],
        ),
        # HTTP/1.0, response delimited by close; client port lower than the server's (endpoint order flips).
        Conversation(
            "tcp",
            ("10.0.2.9", 1025),
            ("10.0.1.3", 8000),
            [
                (True, b"GET /old HTTP/1.0\r\nHost: legacy\r\n\r\n"),
                (False, b"HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnothing here"),
            ],
        ),
        # Large POST with Content-Length across many segments.
        Conversation(
            "tcp",
            ("10.0.0.5", 40005),
            ("10.0.1.1", 80),
            [
                (
                    True,
                    b"POST /form HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 20000\r\n\r\n"
                    + b"y" * 20000,
                ),
                (False, b"HTTP/1.1 302 Found\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n"),
            ],
        ),
    ]
    return convs


# ---------------------------------------------------------------- DNS


def _name(name: str) -> bytes:
    if name in ("", "."):
        return b"\0"
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def _rr(name: bytes, rtype: int, rdata: bytes, ttl: int = 300, rclass: int = 1) -> bytes:
    return name + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


QPTR = b"\xc0\x0c"  # compression pointer to the question name


def dns_message(
    ident: int,
    flags: int,
    qname: str,
    qtype: int,
    answers: list[bytes] = (),
    authority: list[bytes] = (),
    additional: list[bytes] = (),
) -> bytes:
    """A DNS message with one question and the given (already encoded) resource records."""
    head = struct.pack("!HHHHHH", ident, flags, 1, len(answers), len(authority), len(additional))
    return (
        head
        + _name(qname)
        + struct.pack("!HH", qtype, 1)
        + b"".join(answers)
        + b"".join(authority)
        + b"".join(additional)
    )


def _opt(size: int = 1232, do: bool = True) -> bytes:
    padding = struct.pack("!HH", 12, 0)  # an empty PADDING option
    return b"\0" + struct.pack("!HHIH", 41, size, 0x8000 if do else 0, 4) + padding


def dns_conversations() -> list[Conversation]:
    """Queries and responses over UDP and TCP for A, AAAA, CNAME, NS, MX, TXT, SOA, PTR, SRV, OPT."""
    a = ipaddress.IPv4Address("93.184.216.34").packed
    aaaa = ipaddress.IPv6Address("2606:2800:220:1::248").packed
    soa = (
        _name("ns1.example.org")
        + _name("hostmaster.example.org")
        + struct.pack("!IIIII", 2024, 7200, 900, 1209600, 300)
    )
    pairs = [
        (
            dns_message(1, 0x0100, "www.example.org", 1, additional=[_opt()]),
            dns_message(
                1,
                0x8180,
                "www.example.org",
                1,
                [_rr(QPTR, 5, _name("web.example.org")), _rr(_name("web.example.org"), 1, a)],
                [_rr(b"\xc0\x10", 2, _name("ns1.example.org"))],
                [_opt(4096)],
            ),
        ),
        (
            dns_message(2, 0x0100, "example.org", 28),
            dns_message(2, 0x8180, "example.org", 28, [_rr(QPTR, 28, aaaa)]),
        ),
        (
            dns_message(3, 0x0100, "example.org", 15),
            dns_message(
                3,
                0x8180,
                "example.org",
                15,
                [
                    _rr(QPTR, 15, struct.pack("!H", 10) + _name("mx1.example.org")),
                    _rr(QPTR, 15, struct.pack("!H", 20) + b"\x03mx2" + QPTR),
                ],
            ),
        ),
        (
            dns_message(4, 0x0100, "example.org", 16),
            dns_message(4, 0x8180, "example.org", 16, [_rr(QPTR, 16, b"\x0bv=spf1 -all\x05hello")]),
        ),
        (
            dns_message(5, 0x0100, "nope.example.org", 1),
            dns_message(5, 0x8183, "nope.example.org", 1, [], [_rr(b"\xc0\x11", 6, soa)]),
        ),
        (
            dns_message(6, 0x0100, "34.216.184.93.in-addr.arpa", 12),
            dns_message(
                6, 0x8180, "34.216.184.93.in-addr.arpa", 12, [_rr(QPTR, 12, _name("host.example.org"))]
            ),
        ),
        (
            dns_message(7, 0x0100, "_sip._udp.example.org", 33),
            dns_message(
                7,
                0x8580,
                "_sip._udp.example.org",
                33,
                [_rr(QPTR, 33, struct.pack("!HHH", 10, 60, 5060) + _name("sip.example.org"))],
            ),
        ),
        (
            dns_message(8, 0x0100, "example.org", 2),
            dns_message(
                8,
                0x8180,
                "example.org",
                2,
                [_rr(QPTR, 2, _name("ns1.example.org")), _rr(QPTR, 2, _name("ns2.example.org"))],
            ),
        ),
    ]
    convs = []
    for i, (q, r) in enumerate(pairs):
        convs.append(
            Conversation("udp", (f"10.0.3.{i + 1}", 33000 + i), ("10.0.4.53", 53), [(True, q), (False, r)])
        )
    # The same kind of exchange over TCP (2-byte length framing), response split across segments.
    q, r = pairs[0]
    tcp_r = struct.pack("!H", len(r)) + r
    convs.append(
        Conversation(
            "tcp",
            ("10.0.3.99", 34000),
            ("10.0.4.53", 53),
            [(True, struct.pack("!H", len(q)) + q), (False, tcp_r)],
        )
    )
    return convs


# ---------------------------------------------------------------- SMTP


def smtp_conversations() -> list[Conversation]:
    """A session with two messages (dot-stuffing, folded header), and one that upgrades with STARTTLS."""
    msg1 = (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: Hello\r\n"
        b"Message-ID: <m1@example.org>\r\n\r\nHi Bob\r\n..leading dot\r\n"
    )
    msg2 = (
        b"From: carol@example.org\r\nTo: dave@example.net,\r\n erin@example.net\r\nSubject: Second\r\n"
        b"Message-ID: <m2@example.org>\r\n\r\nbody\r\n"
    )
    s = [
        (False, b"220 mx.example.net ESMTP\r\n"),
        (True, b"EHLO client.example.org\r\n"),
        (False, b"250-mx.example.net\r\n250 SIZE 1000000\r\n"),
        (True, b"MAIL FROM:<alice@example.org> SIZE=200\r\n"),
        (False, b"250 OK\r\n"),
        (True, b"RCPT TO:<bob@example.net>\r\n"),
        (False, b"250 OK\r\n"),
        (True, b"DATA\r\n"),
        (False, b"354 go ahead\r\n"),
        (True, msg1 + b".\r\n"),
        (False, b"250 queued\r\n"),
        (True, b"MAIL FROM:<carol@example.org>\r\n"),
        (False, b"250 OK\r\n"),
        (True, b"RCPT TO:<dave@example.net>\r\n"),
        (False, b"250 OK\r\n"),
        (True, b"RCPT TO:<erin@example.net>\r\n"),
        (False, b"250 OK\r\n"),
        (True, b"DATA\r\n"),
        (False, b"354 go ahead\r\n"),
        (True, msg2[:30]),
        (True, msg2[30:] + b".\r\n"),
        (False, b"250 queued\r\n"),
        (True, b"QUIT\r\n"),
        (False, b"221 bye\r\n"),
    ]
    tls = [
        (False, b"220 mx2.example.net ESMTP\r\n"),
        (True, b"EHLO laptop.example.org\r\n"),
        (False, b"250-mx2\r\n250 STARTTLS\r\n"),
        (True, b"STARTTLS\r\n"),
        (False, b"220 ready\r\n"),
        (True, b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"),
    ]
    return [
        Conversation("tcp", ("10.0.5.1", 45000), ("10.0.6.25", 25), s),
        Conversation("tcp", ("10.0.5.2", 45001), ("10.0.6.25", 587), tls),
    ]


# ---------------------------------------------------------------- SIP


def sip_message(start: str, call_id: str, cseq: str, frm: str, to: str, compact: bool = False) -> bytes:
    """A SIP message with the headers the analyzer reports."""
    h = [
        "Via: SIP/2.0/UDP 10.0.7.1:5060;branch=z9hG4bK1",
        "Max-Forwards: 70",
        f"{'f' if compact else 'From'}: {frm}",
        f"{'t' if compact else 'To'}: {to}",
        f"{'i' if compact else 'Call-ID'}: {call_id}",
        f"CSeq: {cseq}",
        "Content-Length: 0",
    ]
    return (start + "\r\n" + "\r\n".join(h) + "\r\n\r\n").encode()


def sip_conversations() -> list[Conversation]:
    """A completed call (INVITE/100/180/200/ACK ... BYE/200) and a rejected one (486)."""
    alice = '"Alice" <sip:alice@example.org>;tag=a1'
    bob = "<sip:bob@example.net>"
    bob_t = "<sip:bob@example.net>;tag=b1"
    c1 = "call-1@10.0.7.1"
    turns = [
        (True, sip_message("INVITE sip:bob@example.net SIP/2.0", c1, "1 INVITE", alice, bob)),
        (False, sip_message("SIP/2.0 100 Trying", c1, "1 INVITE", alice, bob)),
        (False, sip_message("SIP/2.0 180 Ringing", c1, "1 INVITE", alice, bob_t)),
        (False, sip_message("SIP/2.0 200 OK", c1, "1 INVITE", alice, bob_t)),
        (True, sip_message("ACK sip:bob@example.net SIP/2.0", c1, "1 ACK", alice, bob_t)),
        (True, sip_message("BYE sip:bob@example.net SIP/2.0", c1, "2 BYE", alice, bob_t, compact=True)),
        (False, sip_message("SIP/2.0 200 OK", c1, "2 BYE", alice, bob_t)),
    ]
    c2 = "call-2@10.0.7.2"
    carol = "<sip:carol@example.org>;tag=c1"
    turns2 = [
        (True, sip_message("INVITE sip:bob@example.net SIP/2.0", c2, "1 INVITE", carol, bob)),
        (False, sip_message("SIP/2.0 486 Busy Here", c2, "1 INVITE", carol, bob_t)),
        (True, sip_message("ACK sip:bob@example.net SIP/2.0", c2, "1 ACK", carol, bob_t)),
    ]
    return [
        Conversation("udp", ("10.0.7.1", 5060), ("10.0.8.1", 5060), turns),
        Conversation("udp", ("10.0.7.2", 5062), ("10.0.8.1", 5060), turns2),
    ]


# ---------------------------------------------------------------- TLS


def _ext(code: int, body: bytes) -> bytes:
    return struct.pack("!HH", code, len(body)) + body


def client_hello(sni: str | None, alpn: list[str], tls13: bool, pad: int = 0) -> bytes:
    """A ClientHello handshake message (with GREASE values, as browsers send)."""
    ciphers = [0x0A0A, 0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0x009C, 0x002F]
    exts = [_ext(0x1A1A, b"")]
    if sni:
        n = sni.encode()
        exts.append(_ext(0, struct.pack("!HBH", len(n) + 3, 0, len(n)) + n))
    exts.append(_ext(23, b""))
    exts.append(_ext(0xFF01, b"\0"))
    groups = [0x2A2A, 29, 23, 24]
    exts.append(_ext(10, struct.pack(f"!H{len(groups)}H", 2 * len(groups), *groups)))
    exts.append(_ext(11, b"\x01\x00"))
    if alpn:
        body = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
        exts.append(_ext(16, struct.pack("!H", len(body)) + body))
    sigs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
    exts.append(_ext(13, struct.pack(f"!H{len(sigs)}H", 2 * len(sigs), *sigs)))
    if tls13:
        exts.append(_ext(51, struct.pack("!HHH", 36, 29, 32) + bytes(32)))
        exts.append(_ext(43, b"\x06\x3a\x3a\x03\x04\x03\x03"))
        exts.append(_ext(45, b"\x01\x01"))
    if pad:
        exts.append(_ext(21, bytes(pad)))
    ext_bytes = b"".join(exts)
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x20"
        + bytes(32)
        + struct.pack("!H", 2 * len(ciphers))
        + struct.pack(f"!{len(ciphers)}H", *ciphers)
        + b"\x01\x00"
        + struct.pack("!H", len(ext_bytes))
        + ext_bytes
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def server_hello(cipher: int, tls13: bool, alpn: str | None) -> bytes:
    """A ServerHello handshake message."""
    exts = []
    if tls13:
        exts.append(_ext(43, b"\x03\x04"))
        exts.append(_ext(51, struct.pack("!HH", 29, 32) + bytes(32)))
    else:
        exts.append(_ext(0xFF01, b"\0"))
    if alpn:
        exts.append(_ext(16, struct.pack("!HB", len(alpn) + 1, len(alpn)) + alpn.encode()))
    ext_bytes = b"".join(exts)
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x20"
        + bytes(32)
        + struct.pack("!HB", cipher, 0)
        + struct.pack("!H", len(ext_bytes))
        + ext_bytes
    )
    return b"\x02" + len(body).to_bytes(3, "big") + body


def tls_record(ctype: int, body: bytes, version: int = 0x0301) -> bytes:
    """One TLS record."""
    return struct.pack("!BHH", ctype, version, len(body)) + body


def tls_conversations() -> list[Conversation]:
    """TLS 1.3 with a ClientHello split across two records and three TCP segments; TLS 1.2 without SNI."""
    ch = client_hello("www.example.com", ["h2", "http/1.1"], True, pad=3000)
    half = len(ch) // 2
    c1 = tls_record(22, ch[:half]) + tls_record(22, ch[half:])
    s1 = (
        tls_record(22, server_hello(0x1301, True, "h2"), 0x0303)
        + tls_record(20, b"\x01", 0x0303)
        + tls_record(23, bytes(300), 0x0303)
    )
    ch2 = client_hello(None, [], False)
    s2 = tls_record(22, server_hello(0xC02F, False, None), 0x0303)
    return [
        Conversation(
            "tcp",
            ("10.0.9.1", 50001),
            ("10.0.10.1", 443),
            [(True, c1), (False, s1), (True, tls_record(23, bytes(100), 0x0303))],
        ),
        Conversation(
            "tcp", ("10.0.9.2", 50002), ("10.0.10.2", 443), [(True, tls_record(22, ch2)), (False, s2)]
        ),
    ]
