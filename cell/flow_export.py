"""IPFIX export of ended flows: one RFC 5103 biflow record per flow, many flows per call, over UDP.

Forward direction = the flow's initiator (TCP: the SYN's sender; UDP/ICMP: the first packet's).
Templates 256 (IPv4) and 257 (IPv6); templates are refreshed by time and message count
(celltap.ipfix.RefreshPolicy). Observation domain = cell id. applicationName = the rule that
classified the flow ("" when none did). flowId (IANA 148) = the 64-bit value of the connection's uid
and celltapUid (enterprise element, celltap.ipfix.enterprise) = its text, the `uid` of every
analyzer record and conn.log line of the same connection; both are computed for the whole batch at
once (cell.flow_identity.flow_ids, one vectorised XXH64 pass).
"""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlparse

import numpy as np
from celltap.cell.flow_identity import flow_ids
from celltap.cell.flow_table import Flow
from celltap.cell.tcp_state import control_bits

from celltap.flowid import uids_from_flow_ids
from celltap.ipfix import MessageEncoder, RefreshPolicy
from celltap.ipfix.enterprise import UID_NAME
from celltap.ipfix.export import BIFLOW_V4_TEMPLATE_ID, BIFLOW_V6_TEMPLATE_ID, biflow_templates

log = logging.getLogger("celltap.cell.ipfix")

TEMPLATE_V4, TEMPLATE_V6 = BIFLOW_V4_TEMPLATE_ID, BIFLOW_V6_TEMPLATE_ID


def flow_columns(flows: list[Flow], v: int) -> dict[str, object]:
    """Column arrays (IANA names) of the biflow records of `flows` (all of IP version v)."""
    n = len(flows)
    alen = 4 if v == 4 else 16
    src = np.empty((n, alen), np.uint8)
    dst = np.empty((n, alen), np.uint8)
    cols: dict[str, list[int]] = {
        k: [] for k in ("sp", "dp", "pr", "o", "p", "ro", "rp", "s", "e", "r", "f", "rf")
    }
    names: list[bytes] = []
    for i, f in enumerate(flows):
        fwd = f.init_dir == 1
        a, b = (f.addr1, f.addr2) if fwd else (f.addr2, f.addr1)
        src[i] = np.frombuffer(a, np.uint8)
        dst[i] = np.frombuffer(b, np.uint8)
        cols["sp"].append(f.port1 if fwd else f.port2)
        cols["dp"].append(f.port2 if fwd else f.port1)
        cols["pr"].append(f.l4)
        cols["o"].append(f.octets1 if fwd else f.octets2)
        cols["p"].append(f.pkts1 if fwd else f.pkts2)
        cols["ro"].append(f.octets2 if fwd else f.octets1)
        cols["rp"].append(f.pkts2 if fwd else f.pkts1)
        cols["s"].append(f.start_ns // 1_000_000)
        # RFC 7011 (IANA 153): the last packet's time -- not when the flow was ended (idle timeout, shutdown)
        cols["e"].append(f.last_ns // 1_000_000)
        cols["r"].append(f.ipfix_end or 1)
        cols["f"].append(control_bits(f, 1 if fwd else 2))
        cols["rf"].append(control_bits(f, 2 if fwd else 1))
        names.append(f.rule.name.encode() if f.rule is not None else b"")
    a = "IPv4" if v == 4 else "IPv6"
    ids = flow_ids(flows)
    return {
        f"source{a}Address": src.reshape(-1).view(">u4") if v == 4 else src,
        f"destination{a}Address": dst.reshape(-1).view(">u4") if v == 4 else dst,
        "sourceTransportPort": np.array(cols["sp"], np.uint16),
        "destinationTransportPort": np.array(cols["dp"], np.uint16),
        "protocolIdentifier": np.array(cols["pr"], np.uint8),
        "octetDeltaCount": np.array(cols["o"], np.uint64),
        "packetDeltaCount": np.array(cols["p"], np.uint64),
        "reverseOctetDeltaCount": np.array(cols["ro"], np.uint64),
        "reversePacketDeltaCount": np.array(cols["rp"], np.uint64),
        "flowStartMilliseconds": np.array(cols["s"], np.uint64),
        "flowEndMilliseconds": np.array(cols["e"], np.uint64),
        "flowEndReason": np.array(cols["r"], np.uint8),
        "tcpControlBits": np.array(cols["f"], np.uint16),
        "reverseTcpControlBits": np.array(cols["rf"], np.uint16),
        "applicationName": names,
        "flowId": ids,
        UID_NAME: uids_from_flow_ids(ids),
    }


class FlowExporter:
    """Encode ended flows into IPFIX messages and send them to one UDP collector."""

    def __init__(self, target: str, domain: int, mtu: int = 1400, refresh_seconds: float = 60.0) -> None:
        u = urlparse(target)
        if u.scheme != "udp" or not u.hostname or not u.port:
            raise ValueError(f"--ipfix: expected udp://HOST:PORT, got {target!r}")
        self.addr = (u.hostname, u.port)
        self.encoder = MessageEncoder(
            domain,
            biflow_templates(),
            mtu=mtu,
            refresh=RefreshPolicy(seconds=refresh_seconds, messages=100),
        )
        family = socket.AF_INET6 if ":" in u.hostname else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.records = 0
        self.messages = 0
        self.send_errors = 0

    def messages_for(self, flows: list[Flow], now: float) -> list[bytes]:
        """IPFIX messages carrying the records of `flows` (sans-IO part)."""
        out: list[bytes] = []
        for v, tid in ((4, TEMPLATE_V4), (6, TEMPLATE_V6)):
            sel = [f for f in flows if f.l3 == v]
            if sel:
                out += self.encoder.encode(tid, flow_columns(sel, v), now, len(sel))
        return out

    def export(self, flows: list[Flow], now: float) -> None:
        """Send the records of `flows`."""
        if not flows:
            return
        for msg in self.messages_for(flows, now):
            try:
                self.sock.sendto(msg, self.addr)
                self.messages += 1
            except OSError as exc:
                self.send_errors += 1
                log.warning("IPFIX send to %s:%d failed: %s", *self.addr, exc)
        self.records += len(flows)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
