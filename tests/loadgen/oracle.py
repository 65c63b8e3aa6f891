"""tshark as the oracle for generated captures: run it, read fields, follow TCP streams."""

from __future__ import annotations

import subprocess
from pathlib import Path

from celltap.loadgen.scenario import get

from celltap.pcap import PcapWriter
from tests.conftest import require_tool

# Verify every checksum tshark can verify; SCTP's CRC32c is off by default.
CHECKSUM_PREFS = (
    "-o",
    "tcp.check_checksum:TRUE",
    "-o",
    "udp.check_checksum:TRUE",
    "-o",
    "ip.check_checksum:TRUE",
    "-o",
    "sctp.checksum:CRC-32C",
)
# Frames that are broken as far as tshark can tell: malformed, an expert error, or any checksum it
# checked not "good" (status 1; 0 is bad, 2 unverified, so a preference that failed to apply shows).
BAD_FILTER = (
    "_ws.malformed || _ws.expert.severity >= error || ip.checksum.status != 1 || "
    "tcp.checksum.status != 1 || udp.checksum.status != 1 || icmp.checksum.status != 1 || "
    "icmpv6.checksum.status != 1 || sctp.checksum.status != 1"
)


def write_scenario(path: Path, name: str, count: int, seed: int = 1, **kwargs: object) -> Path:
    """Generate scenario `name` into a nanosecond pcap at `path`."""
    with PcapWriter(str(path), nanosecond=True) as w:
        for ts, frame in get(name).generate(seed, count, **kwargs):
            w.write(ts, frame)
    return path


def tshark(pcap: Path, *args: str) -> str:
    """Run tshark on `pcap` with checksum verification on; return stdout (fail on a non-zero exit)."""
    exe = require_tool("tshark")
    proc = subprocess.run(
        [exe, "-n", "-r", str(pcap), *CHECKSUM_PREFS, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fields(
    pcap: Path, names: list[str], display_filter: str | None = None, *extra: str, aggregator: str = ","
) -> list[list[str]]:
    """One row per frame (matching `display_filter`) with the values of `names`; a field's several
    values in one frame are joined by `aggregator`."""
    args = [
        "-T",
        "fields",
        *[a for n in names for a in ("-e", n)],
        "-E",
        "occurrence=a",
        "-E",
        f"aggregator={aggregator}",
    ]
    if display_filter:
        args += ["-Y", display_filter]
    out = tshark(pcap, *extra, *args)
    return [line.split("\t") for line in out.splitlines()]


def values(pcap: Path, name: str, display_filter: str | None = None, *extra: str) -> list[str]:
    """Every value of field `name` over all frames (multi-valued fields split)."""
    return [v for row in fields(pcap, [name], display_filter, *extra) for v in row[0].split(",") if v]


def follow_tcp(pcap: Path, streams: list[int], *extra: str) -> dict[int, tuple[bytes, bytes]]:
    """tshark's reassembled (client->server, server->client) bytes of each TCP stream."""
    args = ["-q", *[a for s in streams for a in ("-z", f"follow,tcp,raw,{s}")]]
    out = tshark(pcap, *extra, *args)
    result: dict[int, tuple[bytes, bytes]] = {}
    for block in out.split("Follow: tcp,raw")[1:]:
        lines = block.splitlines()
        stream = int(lines[1].split("tcp.stream eq ")[1])
        c2s, s2c = bytearray(), bytearray()
        for line in lines[4:]:
            if line.startswith("="):
                break
            if line.startswith("\t"):
                s2c += bytes.fromhex(line.strip())
            elif line.strip():
                c2s += bytes.fromhex(line.strip())
        result[stream] = (bytes(c2s), bytes(s2c))
    return result
