"""crafted: TLS analyzer cases no tool in the test bed produces on demand, fed straight to the
analyzer (sans-IO). Expected values come from the crafted bytes themselves.

Real traffic for the same classes is in test_tls_real.py; these pin the edges: every byte split,
several handshake messages in one record, a server's banner before the ClientHello, a garbage server,
STARTTLS refused then accepted (SMTP), XMPP's <proceed/>, a certificate that does not decode.
"""

from __future__ import annotations

import struct

import pytest
from celltap.cell.analyzers.tls_analyzer import TlsAnalyzer
from celltap.cell.analyzers.tls_names import CIPHERS, GROUPS
from celltap.cell.analyzers.tls_starttls import StartTls
from celltap.cell.sdk.events import FlowId

from tests.analyzers import traffic

FLOW = FlowId("10.9.0.1", "10.9.0.2", 40000, 443, 0, "ipv4", "tcp", "Ctest")


def run(turns: list[tuple[int, bytes]], split: int = 0) -> tuple[list[dict], list[dict], TlsAnalyzer]:
    """Feed (sender, bytes) turns, each cut into `split`-byte pieces if split; return ssl, other, analyzer."""
    a = TlsAnalyzer()
    h = a.stream(FLOW, 1.0)
    t = 1.0
    for sender, data in turns:
        pieces = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
        for p in pieces:
            t += 0.001
            h.data(sender, p, t)
    h.end("NORMAL", t + 1)
    ssl = [r for r in a.records if not r.get("_log")]
    return ssl, [r for r in a.records if r.get("_log")], a


def hs(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def tls12_server_flight(cert: bytes = b"") -> bytes:
    """ServerHello + Certificate + ServerKeyExchange (secp384r1) + ServerHelloDone, in ONE record."""
    sh = traffic.server_hello(0xC02F, False, None)
    certs = hs(11, (len(cert) + 3).to_bytes(3, "big") + len(cert).to_bytes(3, "big") + cert) if cert else b""
    ske = hs(12, b"\x03\x00\x18\x41" + bytes(65) + b"\x04\x01\x00\x02" + bytes(2))
    return traffic.tls_record(22, sh + certs + ske + hs(14, b""), 0x0303)


def finish12(sender: int) -> bytes:
    return traffic.tls_record(20, b"\x01", 0x0303) + traffic.tls_record(22, bytes(40), 0x0303)


CH = traffic.tls_record(22, traffic.client_hello("split.example", ["http/1.1"], False))


@pytest.mark.parametrize("split", [0, 1, 3, 7])
def test_any_byte_split_and_several_messages_per_record(split: int) -> None:
    turns = [(1, CH), (2, tls12_server_flight()), (1, finish12(1)), (2, finish12(2))]
    ssl, weird, _ = run(turns, split)
    assert not weird
    [rec] = ssl
    assert rec["server_name"] == "split.example"
    assert rec["cipher"] == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert rec["curve"] == "secp384r1"  # 0x0018 in the crafted ServerKeyExchange
    assert rec["ssl_history"] == "CsknIi"
    assert rec["established"] is True


def test_handshake_message_across_records() -> None:
    ch = traffic.client_hello("across.example", [], True, pad=5000)
    parts = [ch[:10], ch[10:3000], ch[3000:]]
    ssl, weird, _ = run([(1, b"".join(traffic.tls_record(22, p) for p in parts))])
    assert [r["server_name"] for r in ssl] == ["across.example"] and not weird


def test_server_banner_before_client_hello_keeps_the_hello() -> None:
    turns = [(2, b"SSH-2.0-banner\r\n"), (1, CH), (2, tls12_server_flight())]
    ssl, weird, _ = run(turns)
    [rec] = ssl
    assert rec["server_name"] == "split.example" and rec["version"] == "TLSv12"
    assert not weird  # the server's records started after its banner


def test_garbage_server_does_not_stop_the_client() -> None:
    ssl, weird, _a = run([(1, CH), (2, b"\x16\x03\x03\x00\x05" + b"\xff" * 5 + b"garbage" * 10)])
    [rec] = ssl
    assert rec["server_name"] == "split.example" and "version" not in rec
    assert [w["name"] for w in weird] == ["handshake_too_long"]  # type 0xff, length 0xffffff


def test_sslv2_format_hello_then_tls_server_hello() -> None:
    specs = [0x00002F, 0x010080]
    body = b"\x01\x03\x01" + struct.pack(">HHH", 6, 0, 16) + b"".join(s.to_bytes(3, "big") for s in specs)
    body += bytes(16)
    v2 = (0x8000 | len(body)).to_bytes(2, "big") + body
    ssl, _weird, _ = run([(1, v2), (2, tls12_server_flight())])
    [rec] = ssl
    assert (
        rec["sslv2_client_hello"] is True
        and rec["client_ciphers"] == specs
        and rec["client_version"] == 0x0301
    )
    assert rec["version"] == "TLSv12" and rec["ssl_history"].startswith("Cs")


SMTP_REFUSED_THEN_OK = [
    (2, b"220 mx ESMTP\r\n"),
    (1, b"EHLO c\r\n"),
    (2, b"250-mx\r\n250 STARTTLS\r\n"),
    (1, b"STARTTLS\r\n"),
    (2, b"454 4.7.0 TLS not available due to temporary reason\r\n"),
    (1, b"STARTTLS\r\n"),
    (2, b"220 2.0.0 Ready to start TLS\r\n"),
    (1, CH),
    (2, tls12_server_flight()),
]


def test_smtp_starttls_refused_then_accepted() -> None:
    ssl, weird, _ = run(SMTP_REFUSED_THEN_OK)
    [rec] = ssl
    assert rec["starttls"] is True and rec["server_name"] == "split.example" and rec["version"] == "TLSv12"
    assert not weird


def test_starttls_never_used_is_plaintext_only() -> None:
    ssl, weird, _ = run([*SMTP_REFUSED_THEN_OK[:5], (1, b"QUIT\r\n"), (2, b"221 bye\r\n")])
    assert not ssl
    assert [w["name"] for w in weird] == ["not_tls"]


def test_xmpp_proceed() -> None:
    s = StartTls()
    assert s.feed(1, b"<?xml version='1.0'?><stream:stream to='x' xmlns='jabber:client'>") is None
    feats = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    assert s.feed(2, b"<stream:stream from='x'>" + feats + b"</stream:features>") is None
    assert s.feed(1, b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") is None
    assert s.feed(1, CH[:10]) is None  # the client's hello before the reply is read: held
    assert s.feed(2, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") == {2: b"", 1: CH[:10]}


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"a1 STARTTLS\r\n", b"* OK still\r\na1 OK Begin TLS\r\n"),
        (b"STLS\r\n", b"+OK go\r\n"),
        (b"AUTH TLS\r\n", b"234 AUTH TLS ok\r\n"),
    ],
)
def test_imap_pop3_ftp_switch(command: bytes, reply: bytes) -> None:
    s = StartTls()
    greet = {b"a": b"* OK IMAP ready\r\n", b"S": b"+OK POP3\r\n", b"A": b"220 FTP\r\n"}[command[:1]]
    assert s.feed(2, greet) is None
    assert s.feed(1, command) is None
    assert s.feed(2, reply + b"\x16\x03") == {2: b"\x16\x03", 1: b""}


def test_pop3_capa_listing_stls_is_not_a_command() -> None:
    s = StartTls()
    s.feed(2, b"+OK POP3\r\n")
    s.feed(1, b"CAPA\r\n")
    s.feed(2, b"+OK\r\nSTLS\r\nUSER\r\n.\r\n")
    assert s.client == 0


def test_undecodable_certificate_keeps_fingerprint_and_weird() -> None:
    cert = b"\x30\x03\x02\x01\x01"  # DER, but not a certificate
    ssl, other, _ = run([(1, CH), (2, tls12_server_flight(cert))])
    x509 = [r for r in other if r["_log"] == "x509"]
    assert len(x509) == 1 and "parse_error" in x509[0] and len(x509[0]["fingerprint"]) == 64
    assert ssl[0]["cert_chain_fps"] == [x509[0]["fingerprint"]]
    assert [w["name"] for w in other if w["_log"] == "weird"] == ["x509_parse_error"]


def test_encrypted_renegotiation_is_counted() -> None:
    turns = [(1, CH), (2, tls12_server_flight()), (1, finish12(1)), (2, finish12(2))]
    turns += [(1, traffic.tls_record(22, bytes(80), 0x0303)), (1, traffic.tls_record(22, bytes(80), 0x0303))]
    ssl, weird, _ = run(turns)
    assert ssl[0]["established"] is True
    assert [(w["name"], w.get("addl")) for w in weird] == [("tls_encrypted_renegotiation", "2")]


def test_names_agree_with_openssl_stdnames() -> None:
    """Every cipher suite OpenSSL knows has the same IANA name in our table (an independent source)."""
    import re
    import subprocess

    out = subprocess.run(
        ["openssl", "ciphers", "-V", "-stdname", "ALL:COMPLEMENTOFALL:@SECLEVEL=0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seen = 0
    for line in out.splitlines():
        m = re.match(r"\s*0x(..),0x(..) - (\S+)", line)
        if m:
            assert CIPHERS[int(m.group(1) + m.group(2), 16)] == m.group(3)
            seen += 1
    assert seen > 100
    assert GROUPS[29] == "x25519" and GROUPS[23] == "secp256r1"


def test_starttls_without_reply_is_bounded() -> None:
    s = StartTls()
    s.feed(2, b"220 mx\r\n")
    s.feed(1, b"STARTTLS\r\n")
    for _ in range(100):
        s.feed(1, bytes(1024))
    assert s.failed and len(s.pending) == 0
