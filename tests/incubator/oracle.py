"""Independent oracles for the incubator tests: tshark decodes, and the ring owner of a 5-tuple
computed from the xxhash package (not from the incubator's code)."""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

import xxhash
from celltap.incubator.cells import TABLE_BITS

from celltap.ring import Ring

FIELDS = (
    "frame.number",
    "ip.src",
    "ipv6.src",
    "ip.dst",
    "ipv6.dst",
    "ip.proto",
    "ipv6.nxt",
    "ip.id",
    "ipv6.fraghdr.ident",
    "ip.frag_offset",
    "ipv6.fraghdr.offset",
    "ip.flags.mf",
    "ipv6.fraghdr.more",
    "ipv6.fraghdr.nxt",
    "udp.srcport",
    "udp.dstport",
    "tcp.srcport",
    "tcp.dstport",
    "sctp.srcport",
    "sctp.dstport",
    "icmpv6.type",
    "frame.len",
)


@dataclass(frozen=True)
class Pkt:
    """One frame as tshark sees it (fragments not reassembled)."""

    number: int
    l3: int
    src: str
    dst: str
    proto: int
    frag_id: int | None
    frag_off: int
    more: bool
    sport: int
    dport: int
    length: int

    @property
    def is_frag(self) -> bool:
        """A fragment (not a whole datagram)."""
        return self.frag_id is not None and (self.frag_off > 0 or self.more)

    @property
    def datagram(self) -> tuple:
        """Key of the datagram a fragment belongs to."""
        return (self.l3, self.src, self.dst, self.proto if self.l3 == 4 else 0, self.frag_id)

    @property
    def flow(self) -> tuple:
        """Direction-free 5-tuple."""
        a, b = sorted(
            [
                (ipaddress.ip_address(self.src).packed, self.sport),
                (ipaddress.ip_address(self.dst).packed, self.dport),
            ]
        )
        return (self.l3, self.proto, a, b)


def _int(v: str, base: int = 10) -> int:
    v = v.split(",")[0]
    return int(v, 16) if v.startswith("0x") else int(v, base) if v else 0


def tshark_packets(path: str, tshark: str = "tshark") -> list[Pkt]:
    """Every IP frame of a capture, decoded by tshark with defragmentation off."""
    cmd = [tshark, "-r", path, "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-T", "fields"]
    for f in FIELDS:
        cmd += ["-e", f]
    out = subprocess.run([*cmd, "-E", "separator=/t"], capture_output=True, text=True, check=True).stdout
    pkts = []
    for line in out.splitlines():
        v = dict(zip(FIELDS, line.split("\t"), strict=True))
        if v["ip.src"]:
            l3, src, dst, proto = 4, v["ip.src"], v["ip.dst"], _int(v["ip.proto"])
            fid = (
                _int(v["ip.id"]) if (v["ip.flags.mf"] in ("1", "True") or _int(v["ip.frag_offset"])) else None
            )
            off, more = _int(v["ip.frag_offset"]), v["ip.flags.mf"] in ("1", "True")
        elif v["ipv6.src"]:
            l3, src, dst = 6, v["ipv6.src"], v["ipv6.dst"]
            if v["ipv6.fraghdr.ident"]:
                fid, proto = _int(v["ipv6.fraghdr.ident"]), _int(v["ipv6.fraghdr.nxt"])
                off, more = _int(v["ipv6.fraghdr.offset"]), v["ipv6.fraghdr.more"] in ("1", "True")
            else:
                # The last header of the chain, not the first next-header field.
                proto = (
                    6
                    if v["tcp.srcport"]
                    else 17
                    if v["udp.srcport"]
                    else 132
                    if v["sctp.srcport"]
                    else 58
                    if v["icmpv6.type"]
                    else _int(v["ipv6.nxt"].split(",")[-1])
                )
                fid, off, more = None, 0, False
        else:
            continue
        sport = _int(v["udp.srcport"] or v["tcp.srcport"] or v["sctp.srcport"])
        dport = _int(v["udp.dstport"] or v["tcp.dstport"] or v["sctp.dstport"])
        pkts.append(
            Pkt(
                _int(v["frame.number"]),
                l3,
                src,
                dst,
                proto,
                fid,
                off,
                more,
                sport,
                dport,
                _int(v["frame.len"]),
            )
        )
    return pkts


def key_bytes(l3: int, proto: int, src: str, sport: int, dst: str, dport: int) -> bytes:
    """Canonical flow key bytes as DESIGN.md defines them, built here from first principles."""
    a = (ipaddress.ip_address(src).packed, sport)
    b = (ipaddress.ip_address(dst).packed, dport)
    (a1, p1), (a2, p2) = sorted([a, b])
    return bytes((l3, proto)) + a1 + p1.to_bytes(2, "big") + a2 + p2.to_bytes(2, "big")


def expected_owner(
    ring: Ring, l3: int, proto: int, src: str, sport: int, dst: str, dport: int, seed: int = 0
) -> str:
    """Cell of a flow by DESIGN.md's partition table, hashing with the xxhash package.

    The flow's bucket is the top TABLE_BITS of its hash; the bucket belongs to the ring owner of its
    first hash value (the bucket number shifted back up).
    """
    h = xxhash.xxh64_intdigest(key_bytes(l3, proto, src, sport, dst, dport), seed)
    shift = 64 - TABLE_BITS
    return ring.owner_of((h >> shift) << shift)
