"""The head every analyzer record starts with: Zeek's connection fields plus the Community ID.

`{"ts", "uid", "community_id", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"}`: the same names
as Zeek's logs, so a record joins to its connection (conn.log, the cell's IPFIX record) by `uid` and to
other tools' records by `community_id`. `orig` is the endpoint (1 or 2) that originated the
connection (for most protocols the client).
"""

from __future__ import annotations

from functools import lru_cache

from celltap.cell.sdk.events import FlowId

from celltap.flowid import community_id


@lru_cache(maxsize=65536)
def _ids(flow: FlowId, orig: int) -> tuple[tuple[str, object], ...]:
    oh, op = flow.endpoint(orig)
    rh, rp = flow.endpoint(3 - orig)
    try:
        cid = community_id(flow.l4, oh, op, rh, rp) if flow.l4 not in ("icmp", "icmpv6") else ""
    except ValueError:  # an address the cell wrote that is not an IP address: no Community ID
        cid = ""
    return (
        ("uid", flow.uid),
        ("community_id", cid),
        ("id.orig_h", oh),
        ("id.orig_p", op),
        ("id.resp_h", rh),
        ("id.resp_p", rp),
    )


def conn_fields(flow: FlowId, orig: int, ts: float) -> dict:
    """A new record's head: ts, uid, community_id and Zeek's id.* fields, `orig` being the originator."""
    rec: dict = {"ts": ts}
    rec.update(_ids(flow, orig))
    return rec
