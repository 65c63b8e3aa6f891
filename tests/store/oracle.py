"""Oracles for the packet store tests: tshark's extraction of a flow, and a pcap reader of our own.

The reader is a dozen lines of `struct`, independent of celltap.pcap (the code under test writes
with it), for classic pcap in micro- or nanoseconds, either byte order: what tshark -F pcap / nsecpcap
and the store write.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

Frame = tuple[int, int, bytes]  # (capture time ns, wire length, captured bytes)
CELLTAP = [sys.executable, "-m", "celltap.cli"]


def read_pcap(path: Path) -> tuple[int, list[Frame]]:
    """(link type, frames) of a classic pcap file."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        order = "<"
    else:
        order = ">"
        magic = struct.unpack(">I", data[:4])[0]
    assert magic in (0xA1B2C3D4, 0xA1B23C4D), f"{path}: not a classic pcap (magic {data[:4].hex()})"
    scale = 1 if magic == 0xA1B23C4D else 1000
    linktype = struct.unpack(order + "I", data[20:24])[0]
    frames, pos = [], 24
    while pos + 16 <= len(data):
        sec, frac, cap, wire = struct.unpack(order + "IIII", data[pos : pos + 16])
        frames.append((sec * 1_000_000_000 + frac * scale, wire, data[pos + 16 : pos + 16 + cap]))
        pos += 16 + cap
    assert pos == len(data), f"{path}: trailing partial record"
    return linktype, frames


def tshark_extract(orig: Path, display_filter: str, out: Path) -> list[Frame]:
    """The frames tshark selects from `orig` with a display filter, written with -w and read back."""
    cmd = ["tshark", "-r", str(orig), "-Y", display_filter, "-F", "nsecpcap", "-w", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return read_pcap(out)[1]


def five_tuple_filter(proto: str, a: str, pa: int, b: str, pb: int) -> str:
    """A tshark filter for both directions of one 5-tuple."""
    ip = "ipv6" if ":" in a else "ip"
    return (
        f"({ip}.src=={a} && {proto}.srcport=={pa} && {ip}.dst=={b} && {proto}.dstport=={pb}) || "
        f"({ip}.src=={b} && {proto}.srcport=={pb} && {ip}.dst=={a} && {proto}.dstport=={pa})"
    )


def celltap_pcap(args: list[str], out: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `celltap pcap ... -w out`."""
    return subprocess.run([*CELLTAP, "pcap", *args, "-w", str(out)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
