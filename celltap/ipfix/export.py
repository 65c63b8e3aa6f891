"""Exporting processes: a MessageEncoder bound to a UDP or TCP socket, and the cell's biflow exporter."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

from celltap.ipfix.encoder import MessageEncoder, RefreshPolicy
from celltap.ipfix.enterprise import UID_LENGTH, UID_NAME
from celltap.ipfix.iana import default_registry
from celltap.ipfix.message import IPFIX_VERSION
from celltap.ipfix.template import Template, template_from_names


def _parse_hostport(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class UdpExporter:
    """Send messages over UDP; templates are refreshed by time and by message count."""

    def __init__(
        self,
        target: str,
        domain: int,
        templates: list[Template] = (),  # type: ignore[assignment]
        version: int = IPFIX_VERSION,
        mtu: int = 1400,
        refresh: RefreshPolicy | None = None,
        source: str | None = None,
    ) -> None:
        host, port = _parse_hostport(target)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if source is not None:
            self.sock.bind((source, 0))  # a distinct source address = a distinct exporter to the collector
        self.sock.connect((host, port))
        self.encoder = MessageEncoder(domain, templates, version, mtu, refresh or RefreshPolicy(60.0, 100))
        self.messages = 0
        self.records = 0

    def send(self, messages: list[bytes]) -> None:
        """Send ready-made messages (ECONNREFUSED from an absent collector is ignored, as UDP is lossy)."""
        for m in messages:
            try:
                self.sock.send(m)
            except ConnectionRefusedError:
                pass
            self.messages += 1

    def export(self, template_id: int, columns: Mapping[str, object], now: float | None = None) -> int:
        """Encode and send many records given as columns; returns the number of messages."""
        msgs = self.encoder.encode(template_id, columns, time.time() if now is None else now)
        self.send(msgs)
        n = len(next(iter(columns.values()))) if columns else 0  # type: ignore[arg-type]
        self.records += n
        return len(msgs)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


class TcpExporter:
    """Send messages over one TCP connection; templates go once at the start (RFC 7011 section 8.1)."""

    def __init__(
        self,
        target: str,
        domain: int,
        templates: list[Template] = (),  # type: ignore[assignment]
        mtu: int = 65000,
        source: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        host, port = _parse_hostport(target)
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.encoder = MessageEncoder(domain, templates, IPFIX_VERSION, mtu, RefreshPolicy(None, None))
        self.sock.sendall(self.encoder.templates_message(time.time()))

    def export(self, template_id: int, columns: Mapping[str, object], now: float | None = None) -> int:
        """Encode and send many records given as columns; returns the number of messages."""
        msgs = self.encoder.encode(template_id, columns, time.time() if now is None else now)
        self.sock.sendall(b"".join(msgs))
        return len(msgs)

    def withdraw(self, template_ids: list[int]) -> None:
        """Withdraw templates (mandatory before reusing an id over TCP)."""
        self.sock.sendall(self.encoder.withdrawal_message(template_ids, time.time()))

    def close(self) -> None:
        """Close the connection (the collector forgets this session's templates)."""
        self.sock.close()


BIFLOW_V4_TEMPLATE_ID = 256
BIFLOW_V6_TEMPLATE_ID = 257
_BIFLOW_COMMON = [
    ("sourceTransportPort", None),
    ("destinationTransportPort", None),
    ("protocolIdentifier", None),
    ("octetDeltaCount", None),
    ("packetDeltaCount", None),
    ("reverseOctetDeltaCount", None),
    ("reversePacketDeltaCount", None),
    ("flowStartMilliseconds", None),
    ("flowEndMilliseconds", None),
    ("flowEndReason", None),
    ("applicationName", None),
]


def _identity_fields() -> list[tuple[str, int | None]]:
    """flowId (the uid's 64-bit value) always; the uid text too when celltap's PEN is not 0."""
    try:
        default_registry().by_name(UID_NAME)
    except KeyError:  # CELLTAP_IPFIX_PEN=0: flowId only
        return [("flowId", None)]
    return [("flowId", None), (UID_NAME, UID_LENGTH)]


def biflow_templates() -> list[Template]:
    """The cell's RFC 5103 biflow templates (IPv4 id 256, IPv6 id 257): counters, applicationName, uid."""
    ident = _identity_fields()
    v4 = template_from_names(
        BIFLOW_V4_TEMPLATE_ID,
        [("sourceIPv4Address", None), ("destinationIPv4Address", None), *_BIFLOW_COMMON, *ident],
    )
    v6 = template_from_names(
        BIFLOW_V6_TEMPLATE_ID,
        [("sourceIPv6Address", None), ("destinationIPv6Address", None), *_BIFLOW_COMMON, *ident],
    )
    return [v4, v6]


class BiflowExporter:
    """What a cell uses: one biflow record per ended flow, observation domain = cell id.

    `export(columns)` takes numpy columns for many flows: sourceIPv4Address/destinationIPv4Address
    (uint32) or sourceIPv6Address/destinationIPv6Address ((n, 16) uint8 or V16), the ports,
    protocolIdentifier, octet/packet counts each way, flowStart/EndMilliseconds, flowEndReason,
    applicationName (list of str), flowId (uint64) and celltapUid (S12; see celltap.ipfix.enterprise).
    """

    def __init__(
        self, target: str, cell_id: int, transport: str = "udp", refresh: RefreshPolicy | None = None
    ) -> None:
        templates = biflow_templates()
        if transport == "tcp":
            self.out: UdpExporter | TcpExporter = TcpExporter(target, cell_id, templates)
        else:
            self.out = UdpExporter(target, cell_id, templates, refresh=refresh)

    def export(self, columns: Mapping[str, object], now: float | None = None) -> int:
        """Export many flows at once; returns messages sent."""
        v6 = "sourceIPv6Address" in columns
        return self.out.export(BIFLOW_V6_TEMPLATE_ID if v6 else BIFLOW_V4_TEMPLATE_ID, columns, now)

    def close(self) -> None:
        """Close the transport."""
        self.out.close()
