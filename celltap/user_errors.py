"""User mistakes and the outside world's refusals as one line each, never a traceback.

A subcommand raises UserError (or lets an OSError escape) for what the user can fix: a port in use,
a missing file or directory, an unknown interface, a bad `host:port`. The `celltap` entry point turns
either into `celltap COMMAND: <one line>` and exit status 2; `explain` words an OSError so that the
line names what failed (the port, the path, the interface) rather than just the errno.
"""

from __future__ import annotations

import errno
import os
import threading

PORT_IN_USE = "port {port} is already in use"


class UserError(Exception):
    """A mistake the user can fix; its text is the whole message."""


def explain(exc: OSError, subject: str = "") -> str:
    """One line for an OSError: what failed, naming `subject` (or the error's own file name)."""
    what = subject or (str(exc.filename) if exc.filename is not None else "")
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code == errno.EADDRINUSE:
        return f"{what}: address already in use" if what else "address already in use"
    if code == errno.ENODEV:
        return f"no network interface named {what!r}" if what else "no such network interface"
    if code == errno.ENOENT:
        return f"no such file or directory: {what}" if what else reason
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {what}" if what else "permission denied (needs root or CAP_NET_RAW?)"
    if code == errno.EADDRNOTAVAIL:
        return f"{what}: address not available on this host" if what else reason
    return f"{what}: {reason}" if what else reason


METRICS_ADDR = "127.0.0.1"  # every /metrics endpoint's default: this host only (docs/security.md)


def serve_metrics(port: int, addr: str = "", registry: object = None) -> None:
    """Start the Prometheus /metrics endpoint on `addr` (127.0.0.1 unless given), or raise UserError."""
    from prometheus_client import REGISTRY, start_http_server

    addr = addr or METRICS_ADDR
    try:
        start_http_server(port, addr, registry=registry if registry is not None else REGISTRY)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"--metrics-port {port}: port {port} is already in use on {addr}") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--metrics-addr {addr}: address not available on this host") from None
        raise UserError(f"--metrics-port {port} on {addr}: {exc.strerror or exc}") from None
    except OverflowError:
        raise UserError(f"--metrics-port {port}: not a port number (0-65535)") from None
    except UnicodeError:
        raise UserError(f"--metrics-addr {addr!r}: not an address") from None


def add_metrics_addr_argument(parser: object) -> None:
    """The `--metrics-addr ADDR` option every long-running command shares."""
    parser.add_argument(  # type: ignore[attr-defined]
        "--metrics-addr",
        default=None,
        metavar="ADDR",
        help=f"address /metrics listens on (default {METRICS_ADDR}; 0.0.0.0 or :: for every interface)",
    )


def parse_host_port(text: str, option: str, default_host: str = "") -> tuple[str, int]:
    """Split `host:port` (`[v6]:port` too), or raise UserError naming the option."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise UserError(f"{option}: expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or default_host
    try:
        value = int(port)
    except ValueError:
        raise UserError(f"{option}: port {port!r} is not a number (in {text!r})") from None
    if not 0 <= value <= 65535:
        raise UserError(f"{option}: port {value} is out of range 0-65535")
    return host, value


def wait_for_path(path: str, seconds: float, stop: threading.Event | None = None) -> bool:
    """True once `path` exists, False after `seconds` without it (or as soon as `stop` is set)."""
    import time

    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            return False
        if stop is not None:
            stop.wait(0.05)
        else:
            time.sleep(0.05)
    return True
