"""Numbers from the wire: ethertypes, IP protocols, IPv6 extension headers."""

from __future__ import annotations

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 3

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_SCTP = 132
PROTO_UDPLITE = 136

# Hop-by-hop, routing, fragment, ESP is not walkable, AH, destination options, mobility, HIP, shim6.
V6_EXT_HOPOPT = 0
V6_EXT_ROUTING = 43
V6_EXT_FRAGMENT = 44
V6_EXT_AH = 51
V6_EXT_DSTOPTS = 60
V6_EXT_MOBILITY = 135
V6_EXT_HIP = 139
V6_EXT_SHIM6 = 140
V6_EXT_HEADERS = (
    V6_EXT_HOPOPT,
    V6_EXT_ROUTING,
    V6_EXT_FRAGMENT,
    V6_EXT_AH,
    V6_EXT_DSTOPTS,
    V6_EXT_MOBILITY,
    V6_EXT_HIP,
    V6_EXT_SHIM6,
)
MAX_V6_EXT_HEADERS = 8

# Transport header bytes we need before ports (and for TCP, flags) can be read.
L4_HEADER_LEN = {
    PROTO_TCP: 20,
    PROTO_UDP: 8,
    PROTO_UDPLITE: 8,
    PROTO_SCTP: 12,
    PROTO_ICMP: 4,
    PROTO_ICMPV6: 4,
}
PORT_PROTOCOLS = (PROTO_TCP, PROTO_UDP, PROTO_UDPLITE, PROTO_SCTP)

# Encapsulations between the link header and IP (ethertypes), and what they carry.
ETH_TEB = 0x6558  # transparent Ethernet bridging: an Ethernet header follows (GRE; also our "inner Ethernet")
ETH_PPPOE_SESSION = 0x8864
ETH_MPLS_UNICAST = 0x8847
ETH_MPLS_MULTICAST = 0x8848
ETH_ERSPAN_2 = 0x88BE  # ERSPAN type II (GRE with a sequence number) and type I (without)
ETH_ERSPAN_3 = 0x22EB
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057
PPP_MPLS_UNICAST = 0x0281
PPP_MPLS_MULTICAST = 0x0283
PPPOE_VER_TYPE = 0x11
MAX_MPLS_LABELS = 8
# Nested Ethernet headers (inner Ethernet of a tunnel or pseudowire) plus tunnels, per frame.
MAX_ENCAP_DEPTH = 4

# BSD loopback (DLT_NULL / DLT_LOOP) address families: AF_INET, and AF_INET6 of
# NetBSD/OpenBSD (24), FreeBSD (28) and Darwin (30).
BSD_AF_INET = 2
BSD_AF_INET6 = (24, 28, 30)

PROTO_GRE = 47
PROTO_IPIP = 4  # IPv4 in IP
PROTO_IPV6_IN_IP = 41
GRE_CSUM = 0x8000
GRE_ROUTING = 0x4000
GRE_KEY = 0x2000
GRE_SEQ = 0x1000
GRE_VERSION = 0x0007
VXLAN_PORT = 4789
VXLAN_FLAG_I = 0x08
GENEVE_PORT = 6081

# Bits of the `encap` column: what was passed on the way to the innermost IP header.
ENCAP_VLAN = 0x01
ENCAP_PPP = 0x02  # a PPPoE session, or a PPP link type
ENCAP_MPLS = 0x04
ENCAP_PW = 0x08  # an Ethernet pseudowire (control word + Ethernet) under MPLS
ENCAP_GRE = 0x10  # GRE carrying IP or Ethernet
ENCAP_ERSPAN = 0x20
ENCAP_VXLAN = 0x40
ENCAP_IPIP = 0x80  # IPv4 / IPv6 directly in IP (protocols 4, 41)
ENCAP_GENEVE = 0x100
