"""Build recorded interface event streams (SF-TAP text or binary) from conversations, as the cell would."""

from __future__ import annotations

import ipaddress

from celltap.cell.sdk.binary_format import encode_binary
from celltap.cell.sdk.events import CREATED, DATA, DESTROYED, FlowId
from celltap.cell.sdk.text_format import encode_text

from tests.analyzers.pcapgen import Conversation


def flow_of(conv: Conversation) -> tuple[FlowId, int]:
    """Canonical flow id and the endpoint number (1 or 2) of the client."""
    (cip, cport), (sip, sport) = conv.client, conv.server
    a, b = ipaddress.ip_address(cip), ipaddress.ip_address(sip)
    l3 = "ipv4" if a.version == 4 else "ipv6"
    if (a.packed, cport) <= (b.packed, sport):
        return FlowId(cip, sip, cport, sport, 0, l3, conv.l4), 1
    return FlowId(sip, cip, sport, cport, 0, l3, conv.l4), 2


def event_stream(convs: list[Conversation], fmt: str = "text", segment: int = 1400) -> bytes:
    """The interface byte stream for the conversations (TCP payloads cut into `segment`-byte DATA events)."""
    enc = encode_text if fmt == "text" else encode_binary
    out = []
    for conv in convs:
        flow, client = flow_of(conv)
        t = conv.start
        if conv.l4 == "tcp":
            out.append(enc(flow, CREATED, t))
        for from_client, payload in conv.turns:
            sender = client if from_client else 3 - client
            step = segment if conv.l4 == "tcp" else max(len(payload), 1)
            for i in range(0, max(len(payload), 1), step):
                t += 0.001
                out.append(enc(flow, DATA, t, sender, payload[i : i + step]))
        if conv.l4 == "tcp":
            out.append(enc(flow, DESTROYED, t + 0.001, reason="RESET" if conv.reset else "NORMAL"))
    return b"".join(out)
