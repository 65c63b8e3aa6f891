"""What the decoders do with tunnels: one small frozen object shared by both decode paths.

By default GRE (IP or Ethernet payload), ERSPAN types I/II/III, VXLAN (UDP destination port
4789), Geneve (UDP 6081) and IPv4 / IPv6 in IP (protocols 4, 41) are decapsulated and the frame
reports its innermost IP flow, as Zeek and Suricata do.  With `decapsulate=False` a tunnel packet
is the outer flow (GRE: protocol 47, no ports; VXLAN, Geneve: the outer UDP flow; IP in IP:
protocol 4 / 41).  Encapsulations below IP that carry no flow of their own (VLAN, PPPoE, MPLS) are
always followed.
"""

from __future__ import annotations

from dataclasses import dataclass

from celltap.decode.constants import GENEVE_PORT, VXLAN_PORT


@dataclass(frozen=True)
class DecodeOptions:
    """Tunnel handling for `decode_batch` / `decode_frame`."""

    decapsulate: bool = True
    vxlan_ports: tuple[int, ...] = (VXLAN_PORT,)
    geneve_ports: tuple[int, ...] = (GENEVE_PORT,)

    def udp_tunnel_ports(self) -> tuple[int, ...]:
        """UDP destination ports whose datagrams are decapsulated (none when decapsulation is off)."""
        return self.vxlan_ports + self.geneve_ports if self.decapsulate else ()


DEFAULT_OPTIONS = DecodeOptions()
OUTER_ONLY = DecodeOptions(decapsulate=False)
