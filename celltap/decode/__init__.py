"""Frame decoding for every plane: link types, VLAN / PPPoE / MPLS, tunnels, IPv4, IPv6, transports."""

from celltap.decode.batch import DecodedBatch, decode_batch
from celltap.decode.options import DEFAULT_OPTIONS, DecodeOptions
from celltap.decode.reasons import BENIGN, Reason
from celltap.decode.scalar import Decoded, decode_frame

__all__ = [
    "BENIGN",
    "DEFAULT_OPTIONS",
    "DecodeOptions",
    "Decoded",
    "DecodedBatch",
    "Reason",
    "decode_batch",
    "decode_frame",
]
