"""Free loopback ports, found by binding port 0 and reading back what the kernel chose."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free right now on `host` for `kind` (TCP by default); the caller binds it soon after."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A free UDP port on `host`."""
    return free_port(socket.SOCK_DGRAM, host)
