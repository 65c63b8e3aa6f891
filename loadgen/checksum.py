"""Internet checksum (RFC 1071) and CRC32c (SCTP, RFC 9260 appendix B)."""

from __future__ import annotations


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """One's-complement 16-bit sum of `data` (odd length padded with a zero byte), not inverted."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    # 2**16 == 1 (mod 0xffff), so the big-endian integer of the bytes is congruent to the sum of
    # its 16-bit words: one C-level modulo replaces a Python loop over words.
    n = int.from_bytes(data, "big")
    if n == 0:
        return 0
    s = n % 0xFFFF
    return s or 0xFFFF


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data`, optionally continuing a previous `ones_sum`."""
    s = ones_sum(data) + initial
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """One's-complement sum of the IPv4 or IPv6 pseudo-header for a transport checksum."""
    if len(src) == 4:
        hdr = src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
    else:
        hdr = src + dst + length.to_bytes(4, "big") + bytes((0, 0, 0, proto))
    return ones_sum(hdr)


def transport_checksum(src: bytes, dst: bytes, proto: int, segment: bytes | bytearray) -> int:
    """TCP/UDP/ICMPv6 checksum of `segment` (its checksum field zero) under the pseudo-header."""
    return internet_checksum(segment, pseudo_header_sum(src, dst, proto, len(segment)))


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes | bytearray) -> int:
    """CRC32c (Castagnoli) of `data`, as SCTP computes it."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
