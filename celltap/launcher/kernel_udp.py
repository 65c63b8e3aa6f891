"""Kernel receive-buffer drops of local UDP sockets, from /proc/net/udp (a datagram the kernel
discarded never reaches the process, so no process counter can see it)."""

from __future__ import annotations

from pathlib import Path


def _rows(ports: set[int], proc_file: str) -> list[tuple[int, list[str]]]:
    try:
        lines = Path(proc_file).read_text().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 13:
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in ports:
                out.append((port, fields))
    return out


def udp_drops(ports: set[int], proc_file: str = "/proc/net/udp") -> dict[int, int]:
    """Drops per local UDP port among `ports` (ports without a socket are left out)."""
    out: dict[int, int] = {}
    for port, fields in _rows(ports, proc_file):
        out[port] = out.get(port, 0) + int(fields[-1])
    return out


def udp_queued(ports: set[int], proc_file: str = "/proc/net/udp") -> dict[int, int]:
    """Bytes waiting in the receive queue of each local UDP port among `ports`."""
    out: dict[int, int] = {}
    for port, fields in _rows(ports, proc_file):
        out[port] = out.get(port, 0) + int(fields[4].split(":")[1], 16)
    return out
