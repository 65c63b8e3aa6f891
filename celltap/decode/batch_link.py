"""Batch decoder, below IP: link headers, then the chain of VLAN / PPPoE / MPLS / inner Ethernet.

The link stage turns each link type's header into a pair per frame: `off`, where the next header
starts, and `et`, an ethertype naming it (an inner Ethernet header is named by 0x6558, GRE's
"transparent Ethernet bridging").  The chain stage then steps every frame one header at a time:
frames are grouped by the kind of their next header (a 64 Ki-entry table lookup), each group is
handled with array operations, and the groups are merged again.  Plain Ethernet frames leave the
loop after one table lookup.  Every kind has a per-frame limit (VLAN tags per Ethernet header,
MPLS labels per stack, nesting depth), so the loop is bounded whatever the bytes say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from celltap.decode.constants import (
    BSD_AF_INET,
    BSD_AF_INET6,
    ENCAP_MPLS,
    ENCAP_PPP,
    ENCAP_PW,
    ENCAP_VLAN,
    ETH_IPV4,
    ETH_IPV6,
    ETH_MPLS_MULTICAST,
    ETH_MPLS_UNICAST,
    ETH_PPPOE_SESSION,
    ETH_TEB,
    MAX_ENCAP_DEPTH,
    MAX_MPLS_LABELS,
    MAX_VLAN_TAGS,
    PPP_IPV4,
    PPP_IPV6,
    PPP_MPLS_MULTICAST,
    PPP_MPLS_UNICAST,
    PPPOE_VER_TYPE,
    VLAN_TPIDS,
)
from celltap.decode.gather import Active, u8, u16
from celltap.decode.linktypes import note_unsupported
from celltap.decode.reasons import Reason

if TYPE_CHECKING:
    from celltap.decode.batch import DecodedBatch

from celltap.pcap.batch import (
    LINKTYPE_C_HDLC,
    LINKTYPE_ETHERNET,
    LINKTYPE_FDDI,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_PPP,
    LINKTYPE_PPP_ETHER,
    LINKTYPE_PPP_HDLC,
    LINKTYPE_RAW,
    FrameBatch,
)

K_DONE, K_VLAN, K_PPPOE, K_MPLS, K_ETHER = 0, 1, 2, 3, 4
_KIND = np.zeros(1 << 16, np.uint8)
_KIND[list(VLAN_TPIDS)] = K_VLAN
_KIND[ETH_PPPOE_SESSION] = K_PPPOE
_KIND[[ETH_MPLS_UNICAST, ETH_MPLS_MULTICAST]] = K_MPLS
_KIND[ETH_TEB] = K_ETHER
# PPP protocol -> ethertype (0: not an IP flow)
_PPP_ET = np.zeros(1 << 16, np.int64)
_PPP_ET[PPP_IPV4] = ETH_IPV4
_PPP_ET[PPP_IPV6] = ETH_IPV6
_PPP_ET[PPP_MPLS_UNICAST] = ETH_MPLS_UNICAST
_PPP_ET[PPP_MPLS_MULTICAST] = ETH_MPLS_MULTICAST
_INET6 = np.array(BSD_AF_INET6, np.int64)
_MAX_STEPS = (MAX_VLAN_TAGS + 1 + MAX_MPLS_LABELS + 1) * (MAX_ENCAP_DEPTH + 1) + 4
_FIXED = {  # link type -> (header length, offset of its ethertype)
    LINKTYPE_ETHERNET: (14, 12),
    LINKTYPE_LINUX_SLL: (16, 14),
    LINKTYPE_LINUX_SLL2: (20, 0),
    LINKTYPE_C_HDLC: (4, 2),
}


class Walk:
    """Per-frame counters that outlive one step of the chain (whole-batch arrays).

    `tags`: VLAN tags met (for the vlan / vlan_inner columns); `level_tags`, `labels`: VLAN tags and
    MPLS labels under the current Ethernet header; `depth`: tunnels and pseudowires entered.  The
    zeroed arrays cost nothing until written (calloc'd pages), and plain Ethernet never writes them.
    """

    def __init__(self, n: int) -> None:
        self.tags = np.zeros(n, np.int64)
        self.level_tags = np.zeros(n, np.int64)
        self.labels = np.zeros(n, np.int64)
        self.depth = np.zeros(n, np.int64)


def link_stage(batch: FrameBatch, out: DecodedBatch) -> Active:
    """Strip the link header: the frames left carry `off` and `et` (next header's ethertype)."""
    buf, base, cap, st = batch.buf, batch.offsets, batch.caplens, out.status
    n = len(batch)
    lt = batch.linktype
    a = Active(np.arange(n, dtype=np.int64), off=np.zeros(n, np.int64))
    if lt in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        a.fail(cap < 1, Reason.TRUNCATED_L3, st)
        version = u8(buf, base[a.idx]) >> 4
        a["et"] = np.where(version == 4, ETH_IPV4, np.where(version == 6, ETH_IPV6, 0))
        a.fail(a["et"] == 0, Reason.BAD_IP_VERSION, st)
        out.ethertype[a.idx] = a["et"]
    elif lt in _FIXED:
        hdr, et_at = _FIXED[lt]
        a["off"] += hdr
        a.fail(cap < hdr, Reason.TRUNCATED_L2, st)
        a["et"] = u16(buf, base[a.idx] + et_at)
    elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        a.fail(cap < 4, Reason.TRUNCATED_L2, st)
        b = base[a.idx]
        fam = (u16(buf, b) << 16) | u16(buf, b + 2)
        if lt == LINKTYPE_NULL:  # host byte order: families are small, so the swapped reading is large
            swapped = u8(buf, b) | (u8(buf, b + 1) << 8) | (u8(buf, b + 2) << 16) | (u8(buf, b + 3) << 24)
            fam = np.where(fam > 0xFFFF, swapped, fam)
        a["et"] = np.where(fam == BSD_AF_INET, ETH_IPV4, np.where(np.isin(fam, _INET6), ETH_IPV6, 0))
        a["off"] += 4
        a.fail(a["et"] == 0, Reason.NON_IP, st)
    elif lt == LINKTYPE_FDDI:
        a.fail(cap < 21, Reason.TRUNCATED_L2, st)
        b = base[a.idx]
        snap = (u16(buf, b + 13) == 0xAAAA) & (u8(buf, b + 15) == 0x03)
        a.fail(~snap, Reason.NON_IP, st)
        a["et"] = u16(buf, base[a.idx] + 19)
        a["off"] += 21
    elif lt == LINKTYPE_PPP_ETHER:
        a["et"] = np.full(n, ETH_PPPOE_SESSION, np.int64)
    elif lt in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
        a = _ppp_link(batch, out, a)
    else:
        note_unsupported(lt)
        st[:] = Reason.UNSUPPORTED_LINKTYPE
        return Active.none()
    return a


def _ppp_link(batch: FrameBatch, out: DecodedBatch, a: Active) -> Active:
    """PPP (HDLC-like framing optional) and PPP_HDLC (which may also hold Cisco HDLC)."""
    buf, base, cap, st = batch.buf, batch.offsets, batch.caplens, out.status
    hdlc_only = batch.linktype == LINKTYPE_PPP_HDLC
    if hdlc_only:
        a.fail(cap < 2, Reason.TRUNCATED_L2, st)
    b = base[a.idx]
    a["hdlc"] = (cap[a.idx] >= 2) & (u8(buf, b) == 0xFF) & (u8(buf, b + 1) == 0x03)
    a["et"] = np.zeros(len(a), np.int64)
    if hdlc_only:
        a.fail(~a["hdlc"] & ((u8(buf, b) & 0x7F) != 0x0F), Reason.NON_IP, st)
        a.fail(~a["hdlc"] & (cap[a.idx] < 4), Reason.TRUNCATED_L2, st)
        cisco = ~a["hdlc"]  # Cisco HDLC: address 0x0F / 0x8F, control, ethertype
        a["et"] = np.where(cisco, u16(buf, base[a.idx] + 2), 0)
        a["off"] = np.where(cisco, 4, 2)
        plain, ppp = a.take(cisco), a.take(~cisco)
    else:
        a["off"] = np.where(a["hdlc"], 2, 0)
        plain, ppp = a.take(np.zeros(len(a), bool)), a
    a = Active.concat([plain, _ppp_protocol(batch, out, ppp)])
    del a.arrays["hdlc"]
    return a


def _ppp_protocol(batch: FrameBatch, out: DecodedBatch, a: Active) -> Active:
    """Read the PPP protocol at `off` (one byte when compressed: odd first byte) into `et`."""
    buf, base, cap, st = batch.buf, batch.offsets, batch.caplens, out.status
    if not len(a):
        return a
    a.fail(cap[a.idx] < a["off"] + 1, Reason.TRUNCATED_L2, st)
    p = base[a.idx] + a["off"]
    short = (u8(buf, p) & 1) == 1
    a.fail(~short & (cap[a.idx] < a["off"] + 2), Reason.TRUNCATED_L2, st)
    p = base[a.idx] + a["off"]
    short = (u8(buf, p) & 1) == 1
    proto = np.where(short, u8(buf, p), u16(buf, p))
    a["off"] += np.where(short, 1, 2)
    a["et"] = _PPP_ET[proto]
    a.fail(a["et"] == 0, Reason.NON_IP, st)
    out.encap[a.idx] |= ENCAP_PPP
    return a


def chain_stage(batch: FrameBatch, out: DecodedBatch, a: Active, walk: Walk) -> Active:
    """Follow VLAN / PPPoE / MPLS / inner Ethernet headers to IP; the rest fail or are NON_IP."""
    st = out.status
    for _ in range(_MAX_STEPS):
        # The usual case costs two compares: every frame is at IPv4 / IPv6 already.
        not_ip = (a["et"] != ETH_IPV4) & (a["et"] != ETH_IPV6)
        if not not_ip.any():
            break
        kind = _kinds(a["et"], not_ip)
        if kind is None:
            break
        parts = []
        done = kind == K_DONE
        if done.any():
            parts.append(a.take(done))
        for k, step in ((K_VLAN, _vlan), (K_PPPOE, _pppoe), (K_MPLS, _mpls), (K_ETHER, _ether)):
            m = kind == k
            if m.any():
                parts.append(step(batch, out, a.take(m), walk))
        a = Active.concat(parts) if parts else a.take(done)
    else:
        a.fail(_KIND[a["et"]] != K_DONE, Reason.TOO_DEEP, st)
        not_ip = (a["et"] != ETH_IPV4) & (a["et"] != ETH_IPV6)
    out.ethertype[a.idx] = a["et"]
    a.fail(not_ip, Reason.NON_IP, st)
    return a


def _kinds(et: np.ndarray, not_ip: np.ndarray) -> np.ndarray | None:
    """Kind of each frame's next header, or None when none has one to follow (looked up only for
    the frames not at IPv4 / IPv6 already)."""
    other = np.flatnonzero(not_ip)
    found = _KIND[et[other]]
    if not found.any():
        return None
    kind = np.zeros(et.shape[0], np.uint8)
    kind[other] = found
    return kind


def _stop(a: Active, bad: np.ndarray, reason: Reason, out: DecodedBatch) -> None:
    """Fail `bad` frames, recording the ethertype they stopped at."""
    if bad.any():
        out.ethertype[a.idx[bad]] = a["et"][bad]
        a.fail(bad, reason, out.status)


def _vlan(batch: FrameBatch, out: DecodedBatch, a: Active, walk: Walk) -> Active:
    _stop(a, walk.level_tags[a.idx] >= MAX_VLAN_TAGS, Reason.TOO_MANY_VLAN_TAGS, out)
    _stop(a, batch.caplens[a.idx] < a["off"] + 4, Reason.TRUNCATED_L2, out)
    pos = batch.offsets[a.idx] + a["off"]
    vid = u16(batch.buf, pos) & 0x0FFF
    tags = walk.tags[a.idx]
    out.vlan[a.idx[tags == 0]] = vid[tags == 0]
    out.vlan_inner[a.idx[tags == 1]] = vid[tags == 1]
    walk.tags[a.idx] += 1
    walk.level_tags[a.idx] += 1
    out.encap[a.idx] |= ENCAP_VLAN
    a["et"] = u16(batch.buf, pos + 2)
    a["off"] += 4
    return a


def _pppoe(batch: FrameBatch, out: DecodedBatch, a: Active, walk: Walk) -> Active:
    _stop(a, batch.caplens[a.idx] < a["off"] + 8, Reason.TRUNCATED_L2, out)
    pos = batch.offsets[a.idx] + a["off"]
    session = (u8(batch.buf, pos) == PPPOE_VER_TYPE) & (u8(batch.buf, pos + 1) == 0)
    a["next"] = _PPP_ET[u16(batch.buf, pos + 6)]
    _stop(a, ~session | (a["next"] == 0), Reason.NON_IP, out)
    out.encap[a.idx] |= ENCAP_PPP
    a["et"] = a.arrays.pop("next")
    a["off"] += 8
    return a


def _mpls(batch: FrameBatch, out: DecodedBatch, a: Active, walk: Walk) -> Active:
    """Pop one label; at the bottom of the stack the first nibble says what follows."""
    buf, base, cap = batch.buf, batch.offsets, batch.caplens
    _stop(a, walk.labels[a.idx] >= MAX_MPLS_LABELS, Reason.TOO_MANY_MPLS_LABELS, out)
    _stop(a, cap[a.idx] < a["off"] + 4, Reason.TRUNCATED_L2, out)
    out.encap[a.idx] |= ENCAP_MPLS
    walk.labels[a.idx] += 1
    a["nib"] = u8(buf, base[a.idx] + a["off"] + 2) & 1  # bottom of stack; then the nibble after it
    a["off"] += 4
    _stop(a, (a["nib"] == 1) & (cap[a.idx] < a["off"] + 1), Reason.TRUNCATED_L2, out)
    a["nib"] = np.where(a["nib"] == 1, u8(buf, base[a.idx] + a["off"]) >> 4, -1)
    nib = a["nib"]
    _stop(a, (nib >= 0) & (nib != 4) & (nib != 6) & (nib != 0), Reason.NON_IP, out)
    _stop(a, (a["nib"] == 0) & (walk.depth[a.idx] >= MAX_ENCAP_DEPTH), Reason.TOO_DEEP, out)
    nib = a.arrays.pop("nib")
    pw = nib == 0
    walk.depth[a.idx[pw]] += 1
    out.encap[a.idx[pw]] |= ENCAP_PW
    a["et"] = np.where(nib == 4, ETH_IPV4, np.where(nib == 6, ETH_IPV6, np.where(pw, ETH_TEB, a["et"])))
    a["off"] += np.where(pw, 4, 0)  # the pseudowire control word
    return a


def _ether(batch: FrameBatch, out: DecodedBatch, a: Active, walk: Walk) -> Active:
    """An inner Ethernet header (tunnel or pseudowire payload)."""
    _stop(a, batch.caplens[a.idx] < a["off"] + 14, Reason.TRUNCATED_L2, out)
    a["et"] = u16(batch.buf, batch.offsets[a.idx] + a["off"] + 12)
    a["off"] += 14
    walk.level_tags[a.idx] = 0
    walk.labels[a.idx] = 0
    return a
