"""Why a frame could not be decoded fully: one code per frame, shared by both decode paths."""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Decode status of a frame; the first problem found wins, fields before it stay valid."""

    OK = 0
    NON_IP = 1  # ARP, LLDP, ...: a valid frame that carries no IP flow
    TRUNCATED_L2 = 2  # shorter than its link header, VLAN tags, PPPoE / MPLS headers or inner Ethernet
    TRUNCATED_L3 = 3  # the IP header (or IPv4 options) runs past the captured bytes
    BAD_IP_VERSION = 4  # IP version nibble disagrees with the ethertype / link type
    BAD_IHL = 5  # IPv4 header length below 20 bytes
    BAD_TOTAL_LENGTH = 6  # IP length shorter than its header, or longer than the frame on the wire
    BAD_EXT_HEADER = 7  # IPv6 extension header chain too long, truncated, or past the payload
    TRUNCATED_L4 = 8  # transport (or GRE / VXLAN) header past the captured bytes or the IP payload
    BAD_TCP_OFFSET = 9  # TCP data offset below 20 bytes or past the segment
    UNSUPPORTED_LINKTYPE = 10  # a link type we do not decode
    TOO_MANY_VLAN_TAGS = 11  # more stacked tags than we follow
    TOO_MANY_MPLS_LABELS = 12  # an MPLS label stack deeper than we follow
    TOO_DEEP = 13  # tunnels / inner Ethernet headers nested deeper than we follow

    @property
    def label(self) -> str:
        """Metric label value for this reason."""
        return self.name.lower()


# Reasons that are not damage: the frame is fine, it just has no (complete) flow in it.
BENIGN = frozenset({Reason.OK, Reason.NON_IP})
