"""Who may ask an analysis node, and with whose identity a node asks its peers (docs/security.md).

Theory of operation. The node's HTTP query API is served with the same `tls:` section as its gRPC
port: no section, plain HTTP; `cert`/`key`, HTTPS; `cert`/`key`/`ca`, HTTPS that verifies a client
certificate against `ca`, exactly when gRPC requires one. The TLS handshake is done in each request's
own thread (never in the accept loop, so a silent client cannot stall the server), bounded by
HANDSHAKE_SECONDS. A client certificate is requested but optional at the TLS layer, so that probes
and Prometheus can read `/metrics` without one; every other path (`/query`, `/status`, `/nodes`)
answers 403 without a verified certificate when `ca` is configured.

A cluster-wide query is a scatter over every node's gRPC port. The node presents its own client
certificate to its peers on a caller's behalf only when that caller presented a certificate the node
verified; it then names the caller's certificate subject in the `celltap-caller` gRPC metadata, and
each peer logs the query with the peer it came through and the caller it names. A caller without a
verified certificate is forwarded anonymously: TLS without a client certificate (or plain gRPC when
the node has no TLS), so a peer that requires client certificates refuses it, and the answer says
which nodes did (`complete: false`, `errors`). A node therefore never lends its identity.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import replace
from http.server import ThreadingHTTPServer
from typing import Any

from celltap.registry.tls import TLSConfig

log = logging.getLogger("celltap.node.auth")

CALLER_METADATA = "celltap-caller"  # gRPC metadata: the certificate subject a forwarded query is for
HANDSHAKE_SECONDS = 10.0
OPEN_PATHS = ("metrics",)  # readable without a client certificate (probes, Prometheus)


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The HTTPS context of the query API: our cert/key; clients verified against `ca` when set."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert is not None and tls.key is not None  # TLSConfig: a server needs both
    ctx.load_cert_chain(tls.cert, tls.key)
    if tls.ca:
        ctx.load_verify_locations(tls.ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # required per path: /metrics stays readable by probes
    return ctx


def subject_text(cert: dict[str, Any] | None) -> str | None:
    """`CN=...,O=...` of a verified peer certificate (ssl.getpeercert()), or None without one."""
    if not cert:
        return None
    parts = [f"{_SHORT.get(k, k)}={v}" for rdn in reversed(cert.get("subject", ())) for k, v in rdn]
    return ",".join(parts) or None  # most specific first, as RFC 4514 and gRPC's x509_subject write it


_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


def forwarding_tls(tls: TLSConfig | None, caller: str | None) -> TLSConfig | None:
    """The TLS a scatter uses for `caller`: ours with our certificate only for a verified caller."""
    if tls is None or caller is not None:
        return tls
    return replace(tls, cert=None, key=None)


def caller_metadata(caller: str | None) -> list[tuple[str, str]]:
    """gRPC metadata naming the caller a query is forwarded for (none for an anonymous caller)."""
    return [] if caller is None else [(CALLER_METADATA, caller)]


def grpc_peer(context: Any) -> tuple[str | None, str | None]:
    """(peer certificate name verified by gRPC, caller named in metadata) of a gRPC call."""
    auth = context.auth_context() or {}
    names = auth.get("x509_subject") or auth.get("x509_common_name") or []
    peer = names[0].decode(errors="replace") if names else None
    claimed = dict(context.invocation_metadata() or ()).get(CALLER_METADATA)
    return peer, claimed


class TLSHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose connections are TLS, handshaken in the request's own thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, context: ssl.SSLContext | None) -> None:
        self.tls_context = context
        self.handshake_failures = 0
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Handshake TLS here, in the request thread, then serve the request on the TLS socket."""
        if self.tls_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_SECONDS)
        try:
            conn = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_failures += 1
            log.info("query API: TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            conn.settimeout(None)
            super().finish_request(conn, client_address)
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
