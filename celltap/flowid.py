"""Connection identities that join records across logs, cells and tools: the `uid` and Community ID v1.

**uid.** Zeek gives every connection a random uid; a random one could not be recomputed by an
analyzer in another process, nor by a cell in another host. celltap's uid is a pure function of what
every component sees of a connection: its canonical flow key (celltap.flowkey) and the capture time
of its first packet in microseconds (the resolution of SF-TAP's `time=` field and binary timeval, so
an analyzer reading a CREATED event computes the cell's uid exactly). Hash: XXH64 with the cluster
seed, written as "C" and 11 base-62 digits (Zeek's uids are "C" + base 62 too). The 64-bit hash
itself is the `flowId` of the cell's IPFIX records; uid_from_flow_id / flow_id_from_uid convert between
the two. SF-TAP's hop count is left out on purpose: a stream handed on through the L7 loopback (TLS
after STARTTLS or CONNECT) is re-injected with its connection's start time and so keeps its
connection's uid, as Zeek's protocol records of one connection share one uid. Two connections
collide only if their keys and first-packet microseconds collide, or with probability ~n²/2⁶⁵.

**Community ID v1** (https://github.com/corelight/community-id-spec): base64 of SHA-1 over
seed (u16) | saddr | daddr | proto (u8) | 0 | sport (u16) | dport (u16), the endpoints ordered so
that (saddr, sport) < (daddr, dport), with ICMP type/code standing in for ports. Zeek and Suricata
both emit it; tests compare ours to the `communityid` package.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct

import numpy as np

from celltap.flowhash import xxh64

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_L3 = {"ipv4": 4, "ipv6": 6, 4: 4, 6: 6}
_L4 = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}

# ICMP message types whose counterpart the spec pairs them with (type -> reply type), v4 and v6
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10}
_ICMP6_PAIRS = {
    128: 129,
    129: 128,
    130: 131,
    131: 130,
    133: 134,
    134: 133,
    135: 136,
    136: 135,
    139: 140,
    140: 139,
    144: 145,
    145: 144,
}


def flow_id_from_key(key: bytes, start_us: int, seed: int = 0) -> int:
    """The 64-bit value behind the uid (exported in IPFIX as `flowId`, IANA element 148)."""
    return xxh64(key + struct.pack("<Q", start_us & 0xFFFFFFFFFFFFFFFF), seed)


def uid_from_flow_id(flow_id: int) -> str:
    """The uid text of a 64-bit flowId: "C" and 11 base-62 digits (62**11 > 2**64, so it is lossless)."""
    if not 0 <= flow_id < 1 << 64:
        raise ValueError(f"flowId {flow_id} is not an unsigned 64-bit value")
    h = flow_id
    digits = []
    for _ in range(11):
        h, r = divmod(h, 62)
        digits.append(_B62[r])
    return "C" + "".join(reversed(digits))


def uids_from_flow_ids(flow_ids: np.ndarray) -> np.ndarray:
    """uid texts of many flowIds at once, as a numpy bytes array (dtype S12), equal to uid_from_flow_id's."""
    h = np.asarray(flow_ids, np.uint64).copy()
    out = np.empty((len(h), 12), np.uint8)
    out[:, 0] = ord("C")
    alphabet = np.frombuffer(_B62.encode(), np.uint8)
    base = np.uint64(62)
    for pos in range(11, 0, -1):
        out[:, pos] = alphabet[(h % base).astype(np.intp)]
        h //= base
    return out.view("S12").reshape(-1)


def flow_id_from_uid(uid: str) -> int:
    """Inverse of uid_from_flow_id: the flowId a uid stands for (ValueError if it is not a celltap uid)."""
    if len(uid) != 12 or uid[0] != "C":
        raise ValueError(f"not a celltap uid: {uid!r}")
    value = 0
    for ch in uid[1:]:
        digit = _B62.find(ch)
        if digit < 0:
            raise ValueError(f"not a celltap uid: {uid!r}")
        value = value * 62 + digit
    if value >= 1 << 64:
        raise ValueError(f"not a celltap uid (above 64 bits): {uid!r}")
    return value


def _packed(addr: str) -> bytes:
    """Address bytes of an IPv4 or IPv6 address in text (inet_pton: ~20x faster than ipaddress)."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
    except OSError:
        raise ValueError(f"not an IP address: {addr!r}") from None


def uid_from_key(key: bytes, start_us: int, seed: int = 0) -> str:
    """The uid of the connection with canonical key bytes `key` whose first packet came at `start_us`."""
    return uid_from_flow_id(flow_id_from_key(key, start_us, seed))


def key_bytes(
    l3: int | str, l4: int | str, addr1: str | bytes, port1: int, addr2: str | bytes, port2: int
) -> bytes:
    """Canonical key bytes (celltap.flowkey layout) of a flow named by its endpoints 1 and 2."""
    a1 = addr1 if isinstance(addr1, bytes) else _packed(addr1)
    a2 = addr2 if isinstance(addr2, bytes) else _packed(addr2)
    proto = l4 if isinstance(l4, int) else _L4.get(l4, 0)
    return bytes((_L3[l3], proto)) + a1 + port1.to_bytes(2, "big") + a2 + port2.to_bytes(2, "big")


def flow_uid(
    l3: int | str,
    l4: int | str,
    addr1: str | bytes,
    port1: int,
    addr2: str | bytes,
    port2: int,
    start_us: int,
    seed: int = 0,
) -> str:
    """The uid of a flow named by its canonical endpoints (endpoint 1 is the smaller) and start time."""
    return uid_from_key(key_bytes(l3, l4, addr1, port1, addr2, port2), start_us, seed)


def community_id(
    proto: int | str, saddr: str | bytes, sport: int, daddr: str | bytes, dport: int, seed: int = 0
) -> str:
    """Community ID v1 ("1:" + base64 SHA-1) of a flow; for ICMP, sport/dport are type/code."""
    p = proto if isinstance(proto, int) else _L4.get(proto, 0)
    s = saddr if isinstance(saddr, bytes) else _packed(saddr)
    d = daddr if isinstance(daddr, bytes) else _packed(daddr)
    one_way = False
    if p in (1, 58):
        pairs = _ICMP4_PAIRS if p == 1 else _ICMP6_PAIRS
        icmp_type, code = sport, dport
        if icmp_type in pairs:
            sport, dport = icmp_type, pairs[icmp_type]
        else:
            sport, dport = icmp_type, code
            one_way = True
    if not one_way and (s, sport) > (d, dport):
        s, sport, d, dport = d, dport, s, sport
    data = struct.pack(">H", seed) + s + d + struct.pack(">BBHH", p, 0, sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()
