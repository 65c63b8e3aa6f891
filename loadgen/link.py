"""A Link: both ends of one conversation (MACs, addresses, VLAN tags, IPv6 extension headers),
turning transport segments into complete Ethernet frames in either direction.

Addresses are only ever written into pcap files: clients come from 10/8 or 2001:db8:c::/48,
servers from the documentation ranges 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8:5::/48."""

from __future__ import annotations

import random

from celltap.loadgen.fragment import ipv4_fragments, ipv6_fragments
from celltap.loadgen.packets import ETH_IPV4, ETH_IPV6, ExtHeader, ethernet, ipv4, ipv6, pad_frame

SERVER_POOL = 32  # server numbers per scenario: scenario `net` uses net*32 .. net*32+31
_SERVER_NETS = (bytes((192, 0, 2)), bytes((198, 51, 100)), bytes((203, 0, 113)))


def client_v4(net: int, i: int) -> bytes:
    """Client address number i of scenario subnet `net`: 10.net.hi.lo, lo in 1..254 (wraps after 65024)."""
    n = i % (254 * 256)
    return bytes((10, net & 0xFF, n // 254, 1 + n % 254))


def server_v4(i: int) -> bytes:
    """Server address number i, cycling over the three IPv4 documentation /24s (hosts 1..254)."""
    return _SERVER_NETS[i % 3] + bytes((1 + (i // 3) % 254,))


def client_v6(net: int, i: int) -> bytes:
    """Client address 2001:db8:c:net::i."""
    return bytes.fromhex("20010db8000c") + (net & 0xFFFF).to_bytes(2, "big") + i.to_bytes(8, "big")


def server_v6(i: int) -> bytes:
    """Server address 2001:db8:5::i (never ::0)."""
    return bytes.fromhex("20010db80005") + bytes(2) + (1 + i).to_bytes(8, "big")


def mac(kind: int, net: int, i: int) -> bytes:
    """A locally administered unicast MAC 02:kind:net:i(3 bytes)."""
    return bytes((0x02, kind & 0xFF, net & 0xFF)) + (i & 0xFFFFFF).to_bytes(3, "big")


class Link:
    """One client/server pair; `frame(from_client, proto, l4)` wraps a transport segment."""

    def __init__(
        self,
        cmac: bytes,
        smac: bytes,
        caddr: bytes,
        saddr: bytes,
        *,
        tags: tuple[tuple[int, int], ...] = (),
        ext: tuple[ExtHeader, ...] = (),
        ext_reverse: tuple[ExtHeader, ...] | None = None,
        client_ttl: int = 64,
        server_ttl: int = 57,
        ipid: tuple[int, int] = (0, 0),
        v4_options: bytes = b"",
    ) -> None:
        if len(caddr) != len(saddr):
            raise ValueError("client and server addresses must be of one family")
        self.cmac, self.smac, self.caddr, self.saddr = cmac, smac, caddr, saddr
        self.tags, self.v4_options = tags, v4_options
        # IPv6 extension headers of client->server and server->client packets (a routing
        # header names different segments in each direction).
        self.ext = (ext, ext if ext_reverse is None else ext_reverse)
        self.ttl = (client_ttl, server_ttl)
        self._ipid = list(ipid)

    @property
    def is_v6(self) -> bool:
        """True for an IPv6 link."""
        return len(self.caddr) == 16

    @property
    def l3_header_len(self) -> int:
        """Bytes of IP header (with options / extension headers) before the transport header."""
        if self.is_v6:
            return 40 + max(sum(len(e.body) for e in chain) for chain in self.ext)
        return 20 + len(self.v4_options) + (-len(self.v4_options) % 4)

    def addrs(self, from_client: bool) -> tuple[bytes, bytes]:
        """(source, destination) addresses of a packet in that direction."""
        return (self.caddr, self.saddr) if from_client else (self.saddr, self.caddr)

    def next_ipid(self, from_client: bool) -> int:
        """The next IPv4 identification of that direction (a per-sender counter, as Linux does)."""
        d = 0 if from_client else 1
        self._ipid[d] = (self._ipid[d] + 1) & 0xFFFF
        return self._ipid[d]

    def _eth(self, from_client: bool, l3: bytes) -> bytes:
        src, dst = (self.cmac, self.smac) if from_client else (self.smac, self.cmac)
        return pad_frame(ethernet(dst, src, ETH_IPV6 if self.is_v6 else ETH_IPV4, l3, self.tags))

    def packet(self, from_client: bool, proto: int, l4: bytes) -> bytes:
        """The IP packet carrying `l4` in that direction."""
        src, dst = self.addrs(from_client)
        ttl = self.ttl[0 if from_client else 1]
        if self.is_v6:
            return ipv6(src, dst, proto, l4, hop_limit=ttl, ext=self.ext[0 if from_client else 1])
        return ipv4(
            src,
            dst,
            proto,
            l4,
            ident=self.next_ipid(from_client),
            ttl=ttl,
            dont_fragment=proto == 6,
            options=self.v4_options,
        )

    def frame(self, from_client: bool, proto: int, l4: bytes) -> bytes:
        """The Ethernet frame (padded to 60 bytes) carrying `l4` in that direction."""
        return self._eth(from_client, self.packet(from_client, proto, l4))

    def fragment_frames(
        self,
        from_client: bool,
        proto: int,
        l4: bytes,
        pieces: list[tuple[int, int]],
        ident: int | None = None,
    ) -> list[bytes]:
        """Frames carrying `l4` fragmented into `pieces` (byte ranges of l4), in the order given."""
        src, dst = self.addrs(from_client)
        ttl = self.ttl[0 if from_client else 1]
        if self.is_v6:
            ident = ident if ident is not None else 0x10000 + self.next_ipid(from_client)
            pkts = ipv6_fragments(
                src,
                dst,
                proto,
                l4,
                ident,
                pieces,
                unfragmentable=self.ext[0 if from_client else 1],
                hop_limit=ttl,
            )
        else:
            ident = ident if ident is not None else self.next_ipid(from_client)
            pkts = ipv4_fragments(src, dst, proto, l4, ident, pieces, ttl=ttl)
        return [self._eth(from_client, p) for p in pkts]


def make_link(
    rng: random.Random,
    net: int,
    i: int,
    *,
    v6: bool = False,
    tags: tuple[tuple[int, int], ...] = (),
    ext: tuple[ExtHeader, ...] = (),
    servers: int = 24,
) -> Link:
    """The Link of flow i of the scenario using client subnet `net`; the server is drawn from a
    small pool of that scenario (many clients share few servers, as on a real link; scenarios
    never share a server, so a blend of them keeps every application on its own addresses)."""
    server = net * SERVER_POOL + rng.randrange(min(servers, SERVER_POOL))
    caddr = client_v6(net, i) if v6 else client_v4(net, i)
    saddr = server_v6(server) if v6 else server_v4(server)
    return Link(
        mac(0x0C, net, i),
        mac(0x5E, 0, server),
        caddr,
        saddr,
        tags=tags,
        ext=ext,
        client_ttl=64 if rng.random() < 0.7 else 128,
        server_ttl=rng.choice((52, 57, 61, 64)),
        ipid=(rng.getrandbits(16), rng.getrandbits(16)),
    )


def ephemeral_port(rng: random.Random) -> int:
    """A client port from Linux's default ephemeral range."""
    return rng.randint(32768, 60999)
