"""IPv4 and IPv6 reassembly, sans-IO: fragments in, whole IP datagrams (raw IP bytes) out.

Overlap policy ("first wins", BSD's "first"): bytes of a datagram that are already held are never
replaced; a later fragment contributes only the bytes nobody covered yet. Identical retransmitted
fragments are therefore harmless; overlapping ones are counted (`overlap`) but not dropped.
A datagram that is not complete within `timeout` seconds of its first fragment is dropped
(`timeout`); when the memory held exceeds `memory_cap`, the oldest datagrams are dropped (`memory`).
Memory is counted as allocated, not as payload: a pending datagram costs PENDING_BASE plus its
header plus its byte runs (cell/run_buffer.py: one bytearray per contiguous run, sized to what
arrived, never a 64 KiB buffer per datagram), so a flood of tiny first fragments is bounded by the
cap in real bytes. Fragments are stored as runs, so one datagram's n fragments cost O(n log n).
Drops are counted per fragment in `self.drops[reason]`.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from sys import getsizeof

from celltap.cell.run_buffer import RunBuffer

MAX_DATAGRAM = 65535
# Real memory of one pending datagram besides its header and byte runs: the _Pending object, its key
# tuple with the address / id bytes objects, the OrderedDict entry (measured with tracemalloc;
# tests/cell/test_memory_bounds.py checks the accounting never underestimates what tracemalloc sees).
PENDING_BASE = 512
_V6_EXT = (0, 43, 60, 135, 139, 140)  # walkable extension headers before a fragment header


@dataclass(slots=True)
class _Pending:
    first_ns: int
    header: bytes = b""  # rebuilt unfragmentable header (set by the offset-0 fragment)
    runs: RunBuffer = field(default_factory=RunBuffer)  # the payload bytes received so far
    total: int = -1  # payload length, known once the last fragment arrived
    frags: int = 0
    wire_bytes: int = 0
    held: int = 0  # payload bytes
    mem: int = 0  # real memory of this datagram's state (PENDING_BASE + header + runs)


def v6_fragment_header(packet: bytes) -> tuple[int, int] | None:
    """(offset of the fragment header, offset of the next-header byte pointing at it) in an IPv6 packet."""
    nh = packet[6]
    nh_at = 6
    pos = 40
    while nh != 44:
        if nh not in _V6_EXT and nh != 51:
            return None
        if pos + 8 > len(packet):
            return None
        step = (packet[pos + 1] + 2) * 4 if nh == 51 else (packet[pos + 1] + 1) * 8
        nh, nh_at = packet[pos], pos
        pos += step
    if pos + 8 > len(packet):
        return None
    return pos, nh_at


class Defragmenter:
    """Reassemble fragments of IPv4 and IPv6 datagrams (any order)."""

    def __init__(self, timeout_s: float = 30.0, memory_cap: int = 64 << 20) -> None:
        self.timeout_ns = int(timeout_s * 1e9)
        self.memory_cap = memory_cap
        self.pending: OrderedDict[tuple, _Pending] = OrderedDict()
        self.held = 0  # payload bytes held, all datagrams
        self.mem = 0  # real memory held, all datagrams (what memory_cap caps)
        self.drops: dict[str, int] = {}
        self.overlaps = 0
        self.completed = 0

    def _drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def _discard(self, key: tuple, reason: str) -> None:
        p = self.pending.pop(key)
        self.held -= p.held
        self.mem -= p.mem
        self._drop(reason, p.frags)

    def expire(self, now_ns: int) -> None:
        """Drop datagrams whose first fragment is older than the timeout."""
        limit = now_ns - self.timeout_ns
        while self.pending:
            key, p = next(iter(self.pending.items()))
            if p.first_ns > limit:
                break
            self._discard(key, "timeout")

    def push(self, packet: bytes, ts_ns: int, wire_len: int) -> tuple[bytes, int, int] | None:
        """Add one fragment (raw IP packet, no link header).

        Returns (datagram, fragments, wire bytes of all fragments) when it completes one.
        """
        version = packet[0] >> 4 if packet else 0
        if version == 4:
            ihl = (packet[0] & 15) * 4
            ip_len = struct.unpack_from(">H", packet, 2)[0]
            flags = struct.unpack_from(">H", packet, 6)[0]
            off = (flags & 0x1FFF) * 8
            more = bool(flags & 0x2000)
            key: tuple = (4, packet[12:16], packet[16:20], packet[9], packet[4:6])
            data = packet[ihl:ip_len]
            header = packet[:ihl]
        elif version == 6:
            where = v6_fragment_header(packet)
            if where is None:
                self._drop("bad_header")
                return None
            fpos, nh_at = where
            ip_len = 40 + struct.unpack_from(">H", packet, 4)[0]
            fword = struct.unpack_from(">H", packet, fpos + 2)[0]
            off = fword & 0xFFF8
            more = bool(fword & 1)
            key = (6, packet[8:24], packet[24:40], packet[fpos + 4 : fpos + 8])
            data = packet[fpos + 8 : ip_len]
            if off == 0:
                hdr = bytearray(packet[:fpos])
                hdr[nh_at] = packet[fpos]  # the fragment header disappears from the chain
                header = bytes(hdr)
            else:
                header = b""
        else:
            self._drop("bad_header")
            return None
        end = off + len(data)
        if end > MAX_DATAGRAM - len(header):
            self._drop("too_big")
            return None
        if more and len(data) % 8:
            self._drop("bad_length")
            return None
        p = self.pending.get(key)
        if p is None:
            p = self.pending[key] = _Pending(ts_ns)
            p.mem = PENDING_BASE + p.runs.mem
            self.mem += p.mem
        p.frags += 1
        p.wire_bytes += wire_len
        if off == 0 and not p.header:
            p.header = header
            p.mem += getsizeof(header)
            self.mem += getsizeof(header)
        if not more:
            if p.total >= 0 and p.total != end:
                self._discard(key, "inconsistent")
                return None
            p.total = end
        runs = p.runs
        m0 = runs.mem
        got = runs.add(off, data)
        if got != end - off:
            self.overlaps += 1
        grew = runs.mem - m0
        p.mem += grew
        self.mem += grew
        p.held += got
        self.held += got
        if p.total >= 0 and p.header:
            whole = runs.single()
            if whole is not None and whole[0] == 0 and len(whole[1]) == p.total:
                del self.pending[key]
                self.held -= p.held
                self.mem -= p.mem
                self.completed += 1
                return self._rebuild(p, whole[1]), p.frags, p.wire_bytes
        while self.mem > self.memory_cap and self.pending:
            self._discard(next(iter(self.pending)), "memory")
        return None

    @staticmethod
    def _rebuild(p: _Pending, body: bytearray) -> bytes:
        hdr = bytearray(p.header)
        if hdr[0] >> 4 == 4:
            struct.pack_into(">HH", hdr, 2, len(hdr) + p.total, 0)
            struct.pack_into(">H", hdr, 6, 0)
            struct.pack_into(">H", hdr, 10, 0)
            s = sum(struct.unpack(f">{len(hdr) // 2}H", bytes(hdr)))
            while s > 0xFFFF:
                s = (s & 0xFFFF) + (s >> 16)
            struct.pack_into(">H", hdr, 10, ~s & 0xFFFF)
        else:
            struct.pack_into(">H", hdr, 4, len(hdr) - 40 + p.total)
        return bytes(hdr) + body
