"""pcap / pcapng I/O in batches: the capture format every plane reads and writes."""

from celltap.pcap.batch import (
    LINKTYPE_C_HDLC,
    LINKTYPE_ETHERNET,
    LINKTYPE_FDDI,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_ETHER,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    FrameBatch,
    gather_frames,
    scatter_rows,
)
from celltap.pcap.reader import CaptureFormatError, CaptureReader, open_capture, read_all
from celltap.pcap.writer import PcapngWriter, PcapWriter, pack_pcap_records

__all__ = [
    "LINKTYPE_C_HDLC",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_FDDI",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_LOOP",
    "LINKTYPE_NULL",
    "LINKTYPE_PPP",
    "LINKTYPE_PPP_ETHER",
    "LINKTYPE_PPP_HDLC",
    "LINKTYPE_RAW",
    "CaptureFormatError",
    "CaptureReader",
    "FrameBatch",
    "PcapWriter",
    "PcapngWriter",
    "gather_frames",
    "open_capture",
    "pack_pcap_records",
    "read_all",
    "scatter_rows",
]
