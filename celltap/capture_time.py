"""A frame's capture time carried across a hop: the two encodings the incubator writes and cells read.

Theory of operation.  A frame is stamped once, by the kernel of the host that captures it first
(TPACKET_V3's per-frame tp_sec/tp_nsec, SO_TIMESTAMPNS).  The incubator sends frames on in batches,
so the time a cell receives them says nothing about when they were captured: a burst of 300
frames captured over 10 ms arrives within a few microseconds.  So the incubator puts the capture
time into what it sends, and the cell takes it from there.  Two encodings, both decoded by
Wireshark/tshark (the oracle of the tests):

* Geneve (RFC 8926) with one option: class 0xFF01 (RFC 8926 section 7.2: 0xFF00..0xFFFF is
  "Experimental Use"), type 0x01 (critical bit clear, so a receiver that does not know the option
  ignores it -- a Linux geneve device still decapsulates), length 2 words, data = the capture time
  as nanoseconds since the Unix epoch (UTC), unsigned 64-bit big-endian.  The header is 20 bytes.
* The Arista timestamp header (Wireshark's `avsp` dissector) for raw frames on a NIC: 14 bytes put
  between the source MAC and the EtherType, as Arista switches do: EtherType 0xD28B, subtype 0x0001
  (timestamp), version 0x0110 (64-bit UTC), seconds (u32), nanoseconds (u32), all big-endian; the
  frame's own EtherType follows.

Both are built and parsed for whole batches with numpy: one header row per frame, no Python step per
frame.  Plain VXLAN (RFC 7348) has no room for a time (Linux drops VXLAN packets whose reserved bits
are set), so VXLAN frames keep their receive time at the cell.
"""

from __future__ import annotations

import numpy as np

from celltap.pcap.batch import FrameBatch, scatter_rows

NS = 1_000_000_000

GENEVE_DEFAULT_PORT = 6081
GENEVE_PROTO_TEB = 0x6558  # Transparent Ethernet Bridging: the payload is an Ethernet frame
GENEVE_BASE = 8
TIME_OPTION_CLASS = 0xFF01
TIME_OPTION_TYPE = 0x01
TIME_OPTION_WORDS = 2  # 8 data bytes
GENEVE_TIME_HEADER = GENEVE_BASE + 4 + 4 * TIME_OPTION_WORDS  # 20 bytes

ARISTA_ETHERTYPE = 0xD28B
ARISTA_SUBTYPE_TIMESTAMP = 0x0001
ARISTA_TS64_UTC = 0x0110
ARISTA_TS64_TAI = 0x0010  # accepted on input (a switch's own stamps): TAI is read as if it were UTC
ARISTA_HEADER = 14
_MAC_END = 12


def _be(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) big-endian bytes of unsigned integers."""
    return values.astype(f">u{width}").view(np.uint8).reshape(-1, width)


def geneve_headers(ts_ns: np.ndarray, vni: int) -> np.ndarray:
    """(n, 20) uint8: a Geneve header with the capture-time option for each capture time."""
    n = ts_ns.shape[0]
    h = np.zeros((n, GENEVE_TIME_HEADER), np.uint8)
    h[:, 0] = 1 + TIME_OPTION_WORDS  # version 0, options length in 4-byte words
    h[:, 2:4] = _be(np.array([GENEVE_PROTO_TEB]), 2)
    h[:, 4:7] = _be(np.array([vni]), 4)[:, 1:]
    h[:, 8:10] = _be(np.array([TIME_OPTION_CLASS]), 2)
    h[:, 10] = TIME_OPTION_TYPE
    h[:, 11] = TIME_OPTION_WORDS
    h[:, 12:20] = _be(np.maximum(ts_ns, 0).astype(np.uint64), 8)
    return h


def arista_headers(ts_ns: np.ndarray) -> np.ndarray:
    """(n, 14) uint8: an Arista 64-bit UTC timestamp header for each capture time."""
    n = ts_ns.shape[0]
    h = np.empty((n, ARISTA_HEADER), np.uint8)
    h[:, 0:2] = _be(np.array([ARISTA_ETHERTYPE]), 2)
    h[:, 2:4] = _be(np.array([ARISTA_SUBTYPE_TIMESTAMP]), 2)
    h[:, 4:6] = _be(np.array([ARISTA_TS64_UTC]), 2)
    sec, nsec = np.divmod(np.maximum(ts_ns, 0), NS)
    h[:, 6:10] = _be(sec.astype(np.uint32), 4)
    h[:, 10:14] = _be(nsec.astype(np.uint32), 4)
    return h


def _gather(buf: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """(n, width) bytes buf[at[i] : at[i] + width] (callers guarantee they are in bounds)."""
    return buf[at[:, None] + np.arange(width)]


def _word(rows: np.ndarray) -> np.ndarray:
    """Big-endian integers of (n, k) byte rows, as int64 (k <= 7) -- or uint64 for k == 8."""
    out = np.zeros(rows.shape[0], np.uint64)
    for k in range(rows.shape[1]):
        out = (out << np.uint64(8)) | rows[:, k].astype(np.uint64)
    return out if rows.shape[1] == 8 else out.astype(np.int64)


def strip_arista(batch: FrameBatch) -> tuple[FrameBatch, int]:
    """(the batch with every Arista timestamp header taken out and its time as the frame's, count).

    Frames without the header are returned unchanged, with the time they had.  A header with another
    subtype or version, or a frame too short for it, is left alone (decoded as an unknown EtherType).
    """
    n = len(batch)
    if n == 0:
        return batch, 0
    long_enough = batch.caplens >= _MAC_END + ARISTA_HEADER + 2
    cand = np.flatnonzero(long_enough)
    if cand.size == 0:
        return batch, 0
    at = batch.offsets[cand] + _MAC_END
    head = _gather(batch.buf, at, ARISTA_HEADER)
    etype = _word(head[:, 0:2])
    sub = _word(head[:, 2:4])
    ver = _word(head[:, 4:6])
    ok = (etype == ARISTA_ETHERTYPE) & (sub == ARISTA_SUBTYPE_TIMESTAMP)
    ok &= (ver == ARISTA_TS64_UTC) | (ver == ARISTA_TS64_TAI)
    if not ok.any():
        return batch, 0
    hit = cand[ok]
    sec = _word(head[ok, 6:10])
    nsec = _word(head[ok, 10:14])
    ts = batch.ts_ns.copy()
    ts[hit] = sec * NS + np.minimum(nsec, NS - 1)
    cut = np.zeros(n, np.int64)
    cut[hit] = ARISTA_HEADER
    caplen = batch.caplens - cut
    starts = np.zeros(n, np.int64)
    np.cumsum(caplen[:-1], out=starts[1:])
    out = np.empty(int(caplen.sum()), np.uint8)
    first = np.minimum(batch.caplens, _MAC_END)
    scatter_rows(out, starts, batch.buf, batch.offsets, first)
    rest = batch.caplens - first - cut
    scatter_rows(out, starts + first, batch.buf, batch.offsets + first + cut, rest)
    wire = np.maximum(batch.wirelens - cut, caplen)
    return FrameBatch(out, starts, caplen, wire, ts, batch.linktype), int(hit.size)


def geneve_time_options(
    rows: np.ndarray, which: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """Capture time (ns) from the Geneve options rows[which[k], start[k]:end[k]]; 0 where there is none.

    Walks the option TLVs of all those rows at once: one numpy step per option position, never per
    row, and only the bytes it reads are gathered.
    """
    n = which.shape[0]
    ts = np.zeros(n, np.int64)
    pos = start.astype(np.int64).copy()
    active = pos + 4 <= end
    width = rows.shape[1]
    while active.any():
        i = np.flatnonzero(active)
        r = which[i]
        p = pos[i]
        cls = rows[r, p].astype(np.int64) << 8 | rows[r, p + 1]
        typ = rows[r, p + 2]
        olen = 4 * (rows[r, p + 3] & 0x1F).astype(np.int64)
        mine = (cls == TIME_OPTION_CLASS) & (typ == TIME_OPTION_TYPE) & (olen >= 8) & (p + 12 <= end[i])
        if mine.any():
            cols = np.minimum(p[mine][:, None] + 4 + np.arange(8), width - 1)
            v = _word(rows[r[mine][:, None], cols])
            ts[i[mine]] = np.where(v < np.uint64(1 << 63), v, 0).astype(np.int64)  # beyond int64: none
        pos[i] = p + 4 + olen
        active[i] = ~mine & (pos[i] + 4 <= end[i])
    return ts
