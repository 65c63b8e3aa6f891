"""Independent oracles for the cell tests: tshark's TCP follow (raw) and tshark field extraction."""

from __future__ import annotations

import re
import subprocess

_MISSING = re.compile(rb"^\[\d+ bytes missing in capture file\]\x00?$")


def tshark_streams(tshark: str, pcap: str, count: int) -> dict[tuple[str, str], tuple[bytes, bytes, int]]:
    """Reassembled payload of TCP streams 0..count-1 as {(node0, node1): (node0 bytes, node1 bytes, holes)}.

    Node 0 is the endpoint tshark saw first (the client); "[N bytes missing]" markers are holes.
    """
    args = [tshark, "-r", pcap, "-q"]
    for i in range(count):
        args += ["-z", f"follow,tcp,raw,{i}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    streams: dict[tuple[str, str], tuple[bytes, bytes, int]] = {}
    for block in out.split("=" * 67):
        nodes = re.findall(r"^Node [01]: (\S+)$", block, re.M)
        if len(nodes) != 2:
            continue
        data = [bytearray(), bytearray()]
        holes = 0
        body = block.split(f"Node 1: {nodes[1]}", 1)[1]
        for line in body.splitlines():
            if not line.strip():
                continue
            d = 1 if line.startswith("\t") else 0
            chunk = bytes.fromhex(line.strip())
            if _MISSING.match(chunk):
                holes += 1
                continue
            data[d] += chunk
        streams[(nodes[0], nodes[1])] = (bytes(data[0]), bytes(data[1]), holes)
    return streams


def endpoint(ip: str, port: int) -> str:
    """tshark's spelling of an endpoint (IPv6 in brackets)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
