"""Capture sources of the incubator: AF_PACKET TPACKET_V3 rings, netmap, pcap files."""
