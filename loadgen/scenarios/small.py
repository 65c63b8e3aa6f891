"""`small`: minimum-size frames (64 bytes on the wire with the FCS, 60 in the pcap) over many
TCP and UDP IPv4 flows, both directions, at 1 Gbit/s line rate (one frame every 672 ns).
`--count` = frames; flows = count // 8 unless `--flows` says otherwise.

Frames are made by patching per-flow templates: only the IP identification, TCP seq/ack or the
UDP counter change, and their checksums are updated from precomputed partial sums."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

from celltap.loadgen.checksum import ones_sum, pseudo_header_sum
from celltap.loadgen.link import client_v4, mac, server_v4
from celltap.loadgen.packets import ACK, ETH_IPV4, PROTO_TCP, PROTO_UDP, PSH, ethernet, ipv4, tcp, udp
from celltap.loadgen.scenario import EPOCH_NS, register

NET = 9
FRAME_GAP_NS = 672  # (60 + 4 FCS + 20 preamble/IFG) bytes at 1 Gbit/s
TCP_PAYLOAD = b"celtap"  # 14 + 20 + 20 + 6 = 60 bytes
UDP_PAYLOAD = b"celltap-small-\x00\x00\x00\x00"  # 14 + 20 + 8 + 18 = 60; counter at the end


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class _Template:
    """One direction of one flow: a 60-byte frame and the partial checksums of its fixed parts."""

    def __init__(
        self,
        src_mac: bytes,
        dst_mac: bytes,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        is_tcp: bool,
        ipid: int,
    ) -> None:
        proto = PROTO_TCP if is_tcp else PROTO_UDP
        if is_tcp:
            l4 = tcp(src, dst, sport, dport, 0, 0, ACK | PSH, TCP_PAYLOAD, window=502)
        else:
            l4 = udp(src, dst, sport, dport, UDP_PAYLOAD)
        self.frame = bytearray(ethernet(dst_mac, src_mac, ETH_IPV4, ipv4(src, dst, proto, l4, ident=0)))
        struct.pack_into("!H", self.frame, 24, 0)
        self.ip_base = ones_sum(self.frame[14:34])
        self.is_tcp = is_tcp
        csum_at = 34 + (16 if is_tcp else 6)
        self.csum_at = csum_at
        struct.pack_into("!H", self.frame, csum_at, 0)
        self.l4_base = pseudo_header_sum(src, dst, proto, len(l4)) + ones_sum(self.frame[34:])
        self.ipid = ipid
        self.seq = 0

    def next_frame(self, peer_seq: int) -> bytes:
        """The next frame of this direction (ack = the peer's next seq for TCP)."""
        f = self.frame
        self.ipid = (self.ipid + 1) & 0xFFFF
        struct.pack_into("!HH", f, 18, self.ipid, 0)
        struct.pack_into("!H", f, 24, ~_fold(self.ip_base + self.ipid) & 0xFFFF)
        seq = self.seq
        if self.is_tcp:
            struct.pack_into("!II", f, 38, seq, peer_seq)
            s = self.l4_base + (seq >> 16) + (seq & 0xFFFF) + (peer_seq >> 16) + (peer_seq & 0xFFFF)
            self.seq = (seq + len(TCP_PAYLOAD)) & 0xFFFFFFFF
            struct.pack_into("!H", f, self.csum_at, ~_fold(s) & 0xFFFF)
        else:
            struct.pack_into("!I", f, 56, seq)
            s = self.l4_base + (seq >> 16) + (seq & 0xFFFF)
            self.seq = (seq + 1) & 0xFFFFFFFF
            struct.pack_into("!H", f, self.csum_at, (~_fold(s) & 0xFFFF) or 0xFFFF)
        return bytes(f)


@register(
    "small",
    "64-byte (wire) frames over many TCP/UDP IPv4 flows at 1 Gbit/s line rate",
    "frames (flows = count // 8, or --flows)",
    100_000,
)
def small(seed: int, count: int, flows: int | None = None) -> Iterator[tuple[int, bytes]]:
    """`count` minimum-size frames spread over `flows` bidirectional flows (even: TCP, odd: UDP)."""
    rng = random.Random(f"{seed}/small")
    nflows = max(1, flows if flows else count // 8)
    pairs: list[tuple[_Template, _Template]] = []
    for f in range(nflows):
        is_tcp = f % 2 == 0
        caddr, saddr = client_v4(NET, f), server_v4(f % 60)
        # Client addresses repeat after 65024 flows; the port range keeps 5-tuples distinct.
        cport = 32768 + f // 65024 if f >= 65024 else rng.randint(55000, 59999)
        # Well-known low ports whose dissectors take any bytes, so tshark never guesses a protocol.
        sport = rng.choice((80, 8080, 9) if is_tcp else (7, 9))
        cmac, smac = mac(0x0C, NET, f), mac(0x5E, 0, f % 60)
        c = _Template(cmac, smac, caddr, saddr, cport, sport, is_tcp, rng.getrandbits(16))
        s = _Template(smac, cmac, saddr, caddr, sport, cport, is_tcp, rng.getrandbits(16))
        c.seq, s.seq = rng.getrandbits(32), rng.getrandbits(32)
        pairs.append((c, s))
    ts = EPOCH_NS
    randbits = rng.getrandbits
    for _ in range(count):
        r = randbits(40)
        c, s = pairs[(r >> 1) % nflows]
        yield ts, (c.next_frame(s.seq) if r & 1 else s.next_frame(c.seq))
        ts += FRAME_GAP_NS
