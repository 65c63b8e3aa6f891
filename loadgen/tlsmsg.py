"""TLS records and handshake messages as browsers send them: ClientHello (SNI, ALPN,
supported_versions, supported_groups, signature_algorithms, key_share, GREASE), ServerHello."""

from __future__ import annotations

import random
import struct

GREASE = tuple(0x0A0A + 0x1010 * k for k in range(16))
TLS13_SUITES = (0x1301, 0x1302, 0x1303)
TLS12_SUITES = (
    0xC02B,
    0xC02F,
    0xC02C,
    0xC030,
    0xCCA9,
    0xCCA8,
    0xC013,
    0xC014,
    0x009C,
    0x009D,
    0x002F,
    0x0035,
)
GROUPS = (0x001D, 0x0017, 0x0018)  # x25519, secp256r1, secp384r1
SIG_ALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)

CONTENT_CCS, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPDATA = 20, 21, 22, 23


def record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
    """One TLS record."""
    return struct.pack("!BHH", content_type, version, len(body)) + body


def handshake(msg_type: int, body: bytes) -> bytes:
    """A handshake message header (type, 24-bit length) + body."""
    return struct.pack("!B", msg_type) + len(body).to_bytes(3, "big") + body


def _ext(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def _u16list(values: tuple[int, ...] | list[int]) -> bytes:
    return struct.pack("!H", 2 * len(values)) + b"".join(struct.pack("!H", v) for v in values)


def client_hello(
    rng: random.Random, sni: str, alpn: list[str], *, tls13: bool = True, session_id: bytes | None = None
) -> bytes:
    """A ClientHello record (Chrome-like extension set, GREASE in suites, groups, versions, key_share)."""
    grease = rng.sample(GREASE, 4)
    suites = [grease[0], *(TLS13_SUITES if tls13 else ()), *TLS12_SUITES]
    sni_b = sni.encode()
    alpn_b = b"".join(bytes((len(p),)) + p.encode() for p in alpn)
    exts = [
        _ext(grease[1], b""),
        _ext(0, struct.pack("!HBH", len(sni_b) + 3, 0, len(sni_b)) + sni_b),
        _ext(23, b""),  # extended_master_secret
        _ext(0xFF01, b"\x00"),  # renegotiation_info
        _ext(10, _u16list([grease[2], *GROUPS])),
        _ext(11, b"\x01\x00"),  # ec_point_formats: uncompressed
        _ext(35, b""),  # session_ticket
        _ext(16, struct.pack("!H", len(alpn_b)) + alpn_b),
        _ext(5, b"\x01\x00\x00\x00\x00"),  # status_request (OCSP)
        _ext(13, _u16list(SIG_ALGS)),
        _ext(18, b""),  # signed_certificate_timestamp
    ]
    if tls13:
        shares = (
            struct.pack("!HH", grease[2], 1) + b"\x00" + struct.pack("!HH", 0x001D, 32) + rng.randbytes(32)
        )
        exts += [
            _ext(51, struct.pack("!H", len(shares)) + shares),
            _ext(45, b"\x01\x01"),  # psk_key_exchange_modes: psk_dhe_ke
            _ext(43, bytes((6,)) + struct.pack("!HHH", grease[3], 0x0304, 0x0303)),
        ]
    exts.append(_ext(grease[3], b"\x00"))  # Chrome ends with a second GREASE extension
    ext_bytes = b"".join(exts)
    sid = session_id if session_id is not None else rng.randbytes(32)
    body = (
        struct.pack("!H", 0x0303)
        + rng.randbytes(32)
        + bytes((len(sid),))
        + sid
        + _u16list(suites)
        + b"\x01\x00"
        + struct.pack("!H", len(ext_bytes))
        + ext_bytes
    )
    return record(CONTENT_HANDSHAKE, handshake(1, body), version=0x0301)


def server_hello(
    rng: random.Random, session_id: bytes, *, tls13: bool, alpn: str | None, suite: int | None = None
) -> bytes:
    """A ServerHello record: TLS 1.3 (supported_versions + key_share) or TLS 1.2 (ALPN, EMS, reneg)."""
    if tls13:
        suite = suite or rng.choice(TLS13_SUITES)
        exts = _ext(43, b"\x03\x04") + _ext(51, struct.pack("!HH", 0x001D, 32) + rng.randbytes(32))
    else:
        suite = suite or rng.choice(TLS12_SUITES[:6])
        exts = _ext(0xFF01, b"\x00") + _ext(23, b"")
        if alpn:
            a = alpn.encode()
            exts += _ext(16, struct.pack("!HB", len(a) + 1, len(a)) + a)
    body = (
        struct.pack("!H", 0x0303)
        + rng.randbytes(32)
        + bytes((len(session_id),))
        + session_id
        + struct.pack("!HB", suite, 0)
        + struct.pack("!H", len(exts))
        + exts
    )
    return record(CONTENT_HANDSHAKE, handshake(2, body))


def change_cipher_spec() -> bytes:
    """A ChangeCipherSpec record."""
    return record(CONTENT_CCS, b"\x01")


def encrypted(rng: random.Random, content_type: int, size: int) -> bytes:
    """A record whose body is opaque ciphertext of `size` bytes (AEAD overhead included by caller)."""
    return record(content_type, rng.randbytes(size))
