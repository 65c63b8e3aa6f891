"""Client/server endpoint objects in the record shape every analyzer shares ({"ip", "port"} as strings,
as in SF-TAP's Figure 6)."""

from __future__ import annotations

from celltap.cell.sdk.events import FlowId


def endpoint(flow: FlowId, which: int) -> dict[str, str]:
    """Return {"ip", "port"} of endpoint 1 or 2 of a flow."""
    if which == 1:
        return {"ip": flow.ip1, "port": str(flow.port1)}
    return {"ip": flow.ip2, "port": str(flow.port2)}
