"""TLS / mutual TLS settings in one place, used by the etcd client and by gRPC channels and servers.

A config section looks like::

    tls:
      ca: /etc/celltap/ca.pem          # trust anchor for the peer's certificate
      cert: /etc/celltap/client.pem    # our certificate (mutual TLS); needs `key` too
      key: /etc/celltap/client.key
      server_name: etcd.internal       # expected name in the server certificate, if not the host
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celltap.registry.errors import RegistryConfigError


@dataclass(frozen=True)
class TLSConfig:
    """Paths of a CA bundle and an optional client certificate/key, plus a server name override."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise RegistryConfigError("tls: 'cert' and 'key' must be given together (mutual TLS)")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise RegistryConfigError(f"tls.{name}: no such file {path!r}")

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> TLSConfig | None:
        """Build from a config section (keys ca, cert, key, server_name); None or {} means no TLS."""
        if not section:
            return None
        unknown = set(section) - {"ca", "cert", "key", "server_name"}
        if unknown:
            raise RegistryConfigError(f"tls: unknown key(s) {', '.join(sorted(unknown))}")
        return cls(**{k: (str(v) if v is not None else None) for k, v in section.items()})

    @property
    def mutual(self) -> bool:
        """True when we present a client certificate."""
        return self.cert is not None

    def _read(self, path: str | None) -> bytes | None:
        if path is None:
            return None
        with open(path, "rb") as fh:
            return fh.read()

    def channel_credentials(self):  # -> grpc.ChannelCredentials
        """gRPC client credentials: verify the server with `ca` (system roots if None), present `cert`."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca),
            private_key=self._read(self.key),
            certificate_chain=self._read(self.cert),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """gRPC channel options TLS needs (the server name override, if any)."""
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []

    def server_credentials(self, require_client_cert: bool = True):  # -> grpc.ServerCredentials
        """gRPC server credentials from `cert`/`key`; clients are verified against `ca` when required."""
        import grpc

        if not self.mutual:
            raise RegistryConfigError("tls: a server needs 'cert' and 'key'")
        pair = [(self._read(self.key), self._read(self.cert))]
        ca = self._read(self.ca)
        return grpc.ssl_server_credentials(
            pair, root_certificates=ca, require_client_auth=bool(require_client_cert and ca)
        )
