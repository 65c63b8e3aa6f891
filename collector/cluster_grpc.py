"""gRPC channels and server ports, plain or TLS / mutual TLS from the one TLSConfig."""

from __future__ import annotations

from typing import Any

import grpc

from celltap.registry.tls import TLSConfig

# Record batches are large by design (thousands of records per message).
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    # A node that comes back (restart, pause) must be reached within a second, not after gRPC's
    # default reconnect backoff (up to 120 s), which the global subchannel pool would carry over
    # into the router's next channel to the same address.
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.use_local_subchannel_pool", 1),
]


def make_channel(address: str, tls: TLSConfig | None = None) -> grpc.Channel:
    """A channel to host:port, secured with `tls` when given."""
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(
        address, tls.channel_credentials(), options=CHANNEL_OPTIONS + tls.channel_options()
    )


def add_port(server: grpc.Server, address: str, tls: TLSConfig | None = None) -> int:
    """Bind `server` to host:port (TLS when configured; clients verified when `tls.ca` is set)."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials(require_client_cert=True))
