"""The byte layout analyzer harnesses share: one fuzz input = one connection's stream chunks.

Layout: a mode byte, then chunks of `u16 header | payload`. The header's top bit says who sent the
chunk (1 = the client), its low 15 bits the payload length (a final chunk may be cut short). Mode bits:
0 the client is endpoint 1 (else 2), 1 the flow is UDP (each chunk a datagram) where the analyzer
reads datagrams, 2-3 how the flow ends (NORMAL, RESET, TIMEOUT, or only the analyzer's close()).
Mutating the headers re-splits the stream and swaps directions; seeds are real conversations
encoded this way, so the fuzzer starts from valid traffic.
"""

from __future__ import annotations

import struct

MAX_CHUNK = 0x7FFF
END_REASONS = ("NORMAL", "RESET", "TIMEOUT", None)


def encode_turns(turns: list[tuple[bool, bytes]], udp: bool = False, mode: int = 0) -> bytes:
    """Encode (from_client, payload) turns; a payload longer than a chunk is split."""
    out = [bytes([(mode & ~2) | (2 if udp else 0)])]
    for from_client, payload in turns:
        for i in range(0, max(len(payload), 1), MAX_CHUNK):
            piece = payload[i : i + MAX_CHUNK]
            out.append(struct.pack("!H", (0x8000 if from_client else 0) | len(piece)) + piece)
    return b"".join(out)


def decode_turns(data: bytes) -> tuple[int, list[tuple[bool, bytes]]]:
    """The mode byte and the (from_client, payload) chunks of a fuzz input."""
    if not data:
        return 0, []
    mode = data[0]
    turns = []
    pos = 1
    n = len(data)
    while pos + 2 <= n:
        head = (data[pos] << 8) | data[pos + 1]
        size = head & MAX_CHUNK
        turns.append((bool(head & 0x8000), data[pos + 2 : pos + 2 + size]))
        pos += 2 + size
    return mode, turns
