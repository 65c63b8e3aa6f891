"""Frame decoding for every plane: Ethernet / VLAN / SLL / raw IP, IPv4, IPv6, TCP, UDP, SCTP, ICMP."""

from celltap.decode.batch import DecodedBatch, decode_batch
from celltap.decode.reasons import BENIGN, Reason
from celltap.decode.scalar import Decoded, decode_frame

__all__ = ["BENIGN", "Decoded", "DecodedBatch", "Reason", "decode_batch", "decode_frame"]
