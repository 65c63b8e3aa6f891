"""TLS fingerprints against published values (not only against our own reading of the specs)."""

from __future__ import annotations

import hashlib
import struct

from celltap.cell.analyzers.tls_hello import parse_client_hello

from tests.analyzers.traffic import _ext

CHROME_CIPHERS = [
    0x1301,
    0x1302,
    0x1303,
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
]
CHROME_SIGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def _chrome_hello() -> bytes:
    """A Chrome-like ClientHello: 15 ciphers and 16 extensions plus GREASE, as in FoxIO's JA4 example."""
    sni = b"www.example.com"
    exts = [
        _ext(0x2A2A, b""),
        _ext(0x0000, struct.pack("!HBH", len(sni) + 3, 0, len(sni)) + sni),
        _ext(0x0017, b""),
        _ext(0xFF01, b"\0"),
        _ext(0x000A, struct.pack("!HHHH", 6, 0x4A4A, 29, 23)),
        _ext(0x000B, b"\x01\x00"),
        _ext(0x0023, b""),
        _ext(0x0010, b"\x00\x0c\x02h2\x08http/1.1"),
        _ext(0x0005, b"\x01\x00\x00\x00\x00"),
        _ext(0x000D, struct.pack(f"!H{len(CHROME_SIGS)}H", 2 * len(CHROME_SIGS), *CHROME_SIGS)),
        _ext(0x0012, b""),
        _ext(0x0033, struct.pack("!HHH", 36, 29, 32) + bytes(32)),
        _ext(0x002D, b"\x01\x01"),
        _ext(0x002B, b"\x06\x7a\x7a\x03\x04\x03\x03"),
        _ext(0x001B, b"\x02\x00\x02"),
        _ext(0x4469, b"\x00\x03\x02h2"),
        _ext(0x0015, bytes(20)),
        _ext(0x3A3A, b"\x00"),
    ]
    ciphers = [0x0A0A, *CHROME_CIPHERS]
    ext_bytes = b"".join(exts)
    return (
        b"\x03\x03"
        + bytes(32)
        + b"\x20"
        + bytes(32)
        + struct.pack("!H", 2 * len(ciphers))
        + struct.pack(f"!{len(ciphers)}H", *ciphers)
        + b"\x01\x00"
        + struct.pack("!H", len(ext_bytes))
        + ext_bytes
    )


def test_ja4_matches_foxio_published_chrome_fingerprint() -> None:
    # FoxIO's JA4 README gives t13d1516h2_8daaf6152771_e5627efa2ab1 for this cipher/extension/sig set.
    assert parse_client_hello(_chrome_hello())["ja4"] == "t13d1516h2_8daaf6152771_e5627efa2ab1"


def test_ja3_drops_grease_and_hashes_the_string() -> None:
    hello = parse_client_hello(_chrome_hello())
    version, ciphers, exts, groups, formats = hello["ja3_string"].split(",")
    assert version == "771"
    assert ciphers.split("-") == [str(c) for c in CHROME_CIPHERS]
    assert "10794" not in exts.split("-") and "14906" not in exts.split("-")  # GREASE 0x2a2a, 0x3a3a
    assert groups == "29-23" and formats == "0"
    assert hello["ja3"] == hashlib.md5(hello["ja3_string"].encode()).hexdigest()
