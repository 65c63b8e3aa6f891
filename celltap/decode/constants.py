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
