"""Vectorised ingest of a recvmmsg batch whose datagrams are all plain IPFIX data messages.

recvmmsg leaves datagram i at row i of a (slots, slot_size) buffer.  When every datagram of the
batch is an IPFIX message holding exactly one data set of a known, fresh, fixed-length template
(what routers send between template refreshes), headers are read for all of them with numpy,
sequence numbers are checked per exporter and domain with numpy, and each template's records are
gathered with one strided fancy-index: no Python work per datagram.  Any other batch returns None
before changing anything, and the caller takes the general path (Ingestor.feed).
"""

from __future__ import annotations

import numpy as np
from celltap.collector.ingest import U32, Ingestor, scale_counters
from numpy.lib.stride_tricks import as_strided

from celltap.ipfix.decode import convert_wire
from celltap.ipfix.message import IPFIX_VERSION
from celltap.ipfix.records import RecordBatch

HEADER = 20  # message header (16) + set header (4)


def _be16(rows: np.ndarray, off: int) -> np.ndarray:
    return (rows[:, off].astype(np.int64) << 8) | rows[:, off + 1]


def _be32(rows: np.ndarray, off: int) -> np.ndarray:
    r = rows[:, off : off + 4].astype(np.int64)
    return (r[:, 0] << 24) | (r[:, 1] << 16) | (r[:, 2] << 8) | r[:, 3]


def feed_slots(
    ing: Ingestor, rows: np.ndarray, lens: np.ndarray, addrs: np.ndarray, names: dict[int, str], now: float
) -> list[RecordBatch] | None:
    """Decode n datagrams held in rows[:n] (lengths `lens`, IPv4 sources `addrs` as uint32).

    `names` maps an address to its exporter string.  Returns None, having changed nothing, unless
    every datagram qualifies for this path.
    """
    n = len(lens)
    if n == 0:
        return []
    rows = rows[:n]
    lens = lens.astype(np.int64)
    if int(lens.min()) < HEADER + 1:
        return None
    version = _be16(rows, 0)
    mlen = _be16(rows, 2)
    sid = _be16(rows, 16)
    slen = _be16(rows, 18)
    if not (
        bool((version == IPFIX_VERSION).all())
        and bool((mlen == lens).all())
        and bool((slen + 16 == mlen).all())
        and bool((sid >= 256).all())
    ):
        return None
    seq = _be32(rows, 8)
    odid = _be32(rows, 12)
    key = np.stack([addrs.astype(np.int64), odid, sid], axis=1)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    # Every (exporter, domain, template) must be decodable here; look them up once each.
    plan = []
    expiry = ing.config.template_expiry
    for k, (addr, dom_id, tid) in enumerate(uniq.tolist()):
        exporter = names.get(addr)
        if exporter is None or not ing.allow.allowed(exporter):
            return None
        dom = ing._domains.get((exporter, dom_id))
        if dom is None:
            return None
        e = dom.templates.get(tid)
        if e is None or e.template.record_length is None or e.template.scope_count or now - e.seen > expiry:
            return None
        plan.append((k, exporter, dom_id, tid, dom, e.template))
    reclen = np.empty(len(uniq), dtype=np.int64)
    for k, *_rest, t in plan:
        reclen[k] = t.record_length
    nrec = (slen - 4) // reclen[inverse]
    stats = ing.stats
    # Sequence numbers, per exporter and domain, in arrival order (all templates of a domain count).
    dom_key = addrs.astype(np.int64) << 32 | odid
    for dk in np.unique(dom_key).tolist():
        idx = np.flatnonzero(dom_key == dk)
        exporter = names[dk >> 32]
        dom_id = dk & 0xFFFFFFFF
        dom = ing._domains[(exporter, dom_id)]
        s, c = seq[idx], nrec[idx]
        expected = np.empty(len(idx), dtype=np.int64)
        expected[1:] = (s[:-1] + c[:-1]) % U32
        expected[0] = s[0] if dom.next_seq is None else dom.next_seq
        diff = (s - expected) % U32
        bad = diff != 0
        if bad.any():
            fwd = bad & (diff < U32 // 2)
            if fwd.any():
                stats.sequence_gaps[(exporter, dom_id)] += int(fwd.sum())
                stats.sequence_lost[(exporter, dom_id, "records")] += int(diff[fwd].sum())
            back = int((bad & ~fwd).sum())
            if back:
                stats.sequence_reordered[(exporter, dom_id)] += back
        dom.next_seq = int((s[-1] + c[-1]) % U32)
        dom.last = now
        ing._touched.add((exporter, dom_id))
        stats.messages[exporter] += len(idx)
        stats.records[exporter] += int(c.sum())
        stats.bytes[exporter] += int(lens[idx].sum())
    # Records: view the buffer as (datagram, record slot, byte) and pick the records that exist.
    slot = rows.strides[0]
    base = rows[:, HEADER:]
    out = []
    for k, exporter, dom_id, tid, dom, t in plan:
        idx = np.flatnonzero(inverse == k)
        counts = nrec[idx]
        width = int(reclen[k])
        most = int(counts.max())
        if most == 0:
            continue
        grid = as_strided(base, shape=(n, most, width), strides=(slot, width, 1), writeable=False)
        if int(counts.min()) == most:
            raw = grid[idx].reshape(-1)
        else:
            which = np.repeat(idx, counts)
            pos = np.arange(len(which)) - np.repeat(np.cumsum(counts) - counts, counts)
            raw = grid[which, pos].reshape(-1)
        wire = np.ascontiguousarray(raw).view(t.wire_dtype)
        records = convert_wire(t, wire)
        scale_counters(records, t, dom)
        export_time = int(_be32(rows[idx[-1] : idx[-1] + 1], 4)[0])
        out.append(RecordBatch(exporter, dom_id, tid, t, records, IPFIX_VERSION, export_time))
    return out
