"""celltap's enterprise-specific information elements, and the Private Enterprise Number they live under.

celltap has no IANA Private Enterprise Number of its own. Its one enterprise element, `celltapUid`
(element id 1, a 12-octet string: the connection's uid, e.g. "CK3x9...") is therefore registered by
default under PEN 32473, the number RFC 5612 reserves for use in documentation, rather than under a
number that belongs to somebody else. That is a stop-gap made visible on purpose: a deployment that
mixes celltap's records with other vendors' may set its own PEN (an organisation can get one from IANA
free of charge) in the environment variable CELLTAP_IPFIX_PEN, read once per process by both the cell
(what it exports) and the collector and nodes (what they decode by name). CELLTAP_IPFIX_PEN=0 leaves
the element out: the record then carries the uid only as the standard `flowId` (IANA 148,
unsigned64), from which celltap.flowid.uid_from_flow_id gives the text; `flowId` is always exported.
"""

from __future__ import annotations

import os

from celltap.ipfix.iana import InformationElement
from celltap.user_errors import UserError

DOCUMENTATION_PEN = 32473  # RFC 5612
PEN_ENV = "CELLTAP_IPFIX_PEN"
UID_ELEMENT_ID = 1
UID_NAME = "celltapUid"
UID_LENGTH = 12  # "C" + 11 base-62 digits


def celltap_pen(environ: dict[str, str] | None = None) -> int:
    """The PEN celltap's enterprise elements use (0: none exported); UserError on a bad setting."""
    raw = (os.environ if environ is None else environ).get(PEN_ENV, "").strip()
    if not raw:
        return DOCUMENTATION_PEN
    if not raw.isdigit() or int(raw) >= 1 << 32:
        raise UserError(f"{PEN_ENV}={raw!r}: expected a Private Enterprise Number (0 to 4294967295)")
    pen = int(raw)
    if pen == 29305:
        raise UserError(f"{PEN_ENV}=29305 is RFC 5103's reverse-element number, not an enterprise's")
    return pen


def celltap_elements(pen: int) -> list[InformationElement]:
    """celltap's enterprise elements under `pen` (none when pen is 0)."""
    if pen == 0:
        return []
    return [InformationElement(UID_ELEMENT_ID, pen, UID_NAME, "string")]
