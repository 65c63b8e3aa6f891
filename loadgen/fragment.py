"""IPv4 and IPv6 fragmentation of a datagram into chosen byte ranges (overlaps allowed)."""

from __future__ import annotations

from celltap.loadgen.packets import ExtHeader, fragment_header, ipv4, ipv6


def even_pieces(length: int, size: int) -> list[tuple[int, int]]:
    """Split [0, length) into consecutive ranges of `size` bytes (a multiple of 8), the last shorter."""
    if size % 8:
        raise ValueError("fragment size must be a multiple of 8")
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def ipv4_fragments(
    src: bytes,
    dst: bytes,
    proto: int,
    datagram: bytes,
    ident: int,
    pieces: list[tuple[int, int]],
    *,
    ttl: int = 64,
) -> list[bytes]:
    """IPv4 packets carrying datagram[start:end] for each (start, end); MF unless end is the end."""
    out = []
    for start, end in pieces:
        if start % 8:
            raise ValueError("fragment offsets must be multiples of 8")
        out.append(
            ipv4(
                src,
                dst,
                proto,
                datagram[start:end],
                ident=ident,
                ttl=ttl,
                frag_offset=start,
                more_fragments=end < len(datagram),
            )
        )
    return out


def ipv6_fragments(
    src: bytes,
    dst: bytes,
    next_header: int,
    datagram: bytes,
    ident: int,
    pieces: list[tuple[int, int]],
    *,
    unfragmentable: tuple[ExtHeader, ...] = (),
    hop_limit: int = 64,
) -> list[bytes]:
    """IPv6 packets with a fragment header carrying datagram[start:end] for each (start, end).

    `datagram` is the fragmentable part (extension headers after the fragment header + upper layer);
    `next_header` is the protocol of its first header."""
    out = []
    for start, end in pieces:
        if start % 8:
            raise ValueError("fragment offsets must be multiples of 8")
        ext = (*unfragmentable, fragment_header(ident, start, end < len(datagram)))
        out.append(ipv6(src, dst, next_header, datagram[start:end], ext=ext, hop_limit=hop_limit))
    return out
