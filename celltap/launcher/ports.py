"""Free loopback ports for processes we start, chosen so that they stay free until bound.

Binding port 0 and reading back the kernel's choice is racy for a child that binds later: the
kernel hands the same ephemeral range to every outgoing connection (scrapes, gRPC, analyzers), and
may even hand the same port back on the next call.  So ports come from below the ephemeral range,
at random, checked by a test bind, and never twice from one process.
"""

from __future__ import annotations

import random
import socket

_ISSUED: set[tuple[int, int]] = set()
_RNG = random.Random()
_FLOOR = 10000  # keep clear of well-known and registered service ports people run locally


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free right now on `host` for `kind` (TCP by default); the caller binds it soon after."""
    high = _ephemeral_low()
    if high - _FLOOR >= 1000:
        for _ in range(500):
            port = _RNG.randrange(_FLOOR, high)
            if (kind, port) in _ISSUED:
                continue
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _ISSUED.add((kind, port))
            return port
    while True:  # no room below the ephemeral range: the kernel's choice, never repeated
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if (kind, port) not in _ISSUED:
            _ISSUED.add((kind, port))
            return port


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A free UDP port on `host`."""
    return free_port(socket.SOCK_DGRAM, host)
