"""Column access shared by apps: counters, address keys and their text form."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import numpy as np
from celltap.collector.routing import address_rows

V4_TAG = 4 << 32  # address keys are ints: 4<<32 | IPv4, 6<<128 | IPv6, 0 when absent
V6_TAG = 6 << 128
_V6_MASK = (1 << 128) - 1


def column_or_zero(records: np.ndarray, *names: str) -> np.ndarray:
    """The first present column among `names` as uint64, else zeros."""
    have = records.dtype.names or ()
    for name in names:
        if name in have:
            return records[name].astype(np.uint64)
    return np.zeros(len(records), dtype=np.uint64)


def octets(records: np.ndarray) -> np.ndarray:
    """Bytes per record (octetDeltaCount, else octetTotalCount)."""
    return column_or_zero(records, "octetDeltaCount", "octetTotalCount")


def packets(records: np.ndarray) -> np.ndarray:
    """Packets per record (packetDeltaCount, else packetTotalCount)."""
    return column_or_zero(records, "packetDeltaCount", "packetTotalCount")


def reverse_octets(records: np.ndarray) -> np.ndarray:
    """Bytes of the reverse direction of an RFC 5103 biflow record (zeros for one-way records)."""
    return column_or_zero(records, "reverseOctetDeltaCount", "reverseOctetTotalCount")


def reverse_packets(records: np.ndarray) -> np.ndarray:
    """Packets of the reverse direction of an RFC 5103 biflow record (zeros for one-way records)."""
    return column_or_zero(records, "reversePacketDeltaCount", "reversePacketTotalCount")


def directed_counters(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(forward bytes, reverse bytes, forward packets, reverse packets) of every record.

    Forward is what the record's source sent; reverse what it received (biflow records: the cells'
    and many routers'; one-way records have no reverse, so their reverse counters are zero). Apps
    count `bytes` and `packets` as both directions and keep the directions apart where asked.
    """
    return octets(records), reverse_octets(records), packets(records), reverse_packets(records)


DIRECTED = ("orig_bytes", "resp_bytes", "orig_packets", "resp_packets")


def directed_row(vals: list[int]) -> dict[str, int]:
    """An answer row's counters from [orig bytes, resp bytes, orig packets, resp packets, (count)]."""
    row = {"bytes": vals[0] + vals[1], "packets": vals[2] + vals[3]}
    row.update(zip(DIRECTED, vals[:4], strict=True))
    if len(vals) > 4:
        row["records"] = vals[4]
    return row


def directed_measure(by: str, columns: dict[str, int]) -> Callable[[list[int]], int]:
    """The sort key for `by`: bytes/packets (both directions), one direction, or a count column."""
    if by == "bytes":
        return lambda v: v[0] + v[1]
    if by == "packets":
        return lambda v: v[2] + v[3]
    col = columns.get(by)
    if col is None:
        names = ", ".join(["bytes", "packets", *columns])
        raise ValueError(f"by must be one of {names}, not {by!r}")
    return lambda v: v[col]


def address_keys(records: np.ndarray, side: str, prefix_v4: int = 32, prefix_v6: int = 128) -> np.ndarray:
    """Per record an address key, optionally masked to a prefix.

    IPv4-only batches (the common case) give a uint64 array (4<<32 | address), sorted and summed at
    numpy speed; batches with an IPv6 column give Python ints in an object array.
    """
    names = records.dtype.names or ()
    prefix = "source" if side == "src" else "destination"
    v4, v6 = f"{prefix}IPv4Address", f"{prefix}IPv6Address"
    mask4 = (0xFFFFFFFF << (32 - prefix_v4)) & 0xFFFFFFFF
    if v6 not in names:
        if v4 not in names:
            return np.zeros(len(records), dtype=np.uint64)
        return (records[v4].astype(np.uint64) & np.uint64(mask4)) | np.uint64(V4_TAG)
    l3, rows = address_rows(records, side)
    mask6 = (_V6_MASK << (128 - prefix_v6)) & _V6_MASK
    out = np.zeros(len(records), dtype=object)
    for i, (version, row) in enumerate(zip(l3.tolist(), rows, strict=True)):
        if version == 4:
            out[i] = V4_TAG | (int.from_bytes(row[:4].tobytes(), "big") & mask4)
        elif version == 6:
            out[i] = V6_TAG | (int.from_bytes(row.tobytes(), "big") & mask6)
        else:
            out[i] = 0
    return out


def key_text(key: int) -> str:
    """Text form of an address key ('-' when the record had no address)."""
    if key >> 128 == 6:
        return str(ipaddress.IPv6Address(key & _V6_MASK))
    if key >> 32 == 4:
        return str(ipaddress.IPv4Address(key & 0xFFFFFFFF))
    return "-"


def text_key(text: str) -> int:
    """Inverse of key_text."""
    if text == "-":
        return 0
    addr = ipaddress.ip_address(text)
    return (V4_TAG if addr.version == 4 else V6_TAG) | int(addr)


def key_address(key: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of a key (None when absent)."""
    if key >> 128 == 6:
        return ipaddress.IPv6Address(key & _V6_MASK)
    if key >> 32 == 4:
        return ipaddress.IPv4Address(key & 0xFFFFFFFF)
    return None


def sums_by_key(keys: np.ndarray, *values: np.ndarray) -> tuple[list, list[list[int]]]:
    """Unique keys (as Python objects) and the exact uint64 sum of each value column per key."""
    if len(keys) == 0:
        return [], [[] for _ in values]
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sums = [np.add.reduceat(v.astype(np.uint64)[order], starts).tolist() for v in values]
    return ordered[starts].tolist(), sums


def sums_by_pair(a: np.ndarray, b: np.ndarray, *values: np.ndarray) -> tuple[list[tuple], list[list[int]]]:
    """Like sums_by_key for composite (a, b) keys, with one lexsort."""
    if len(a) == 0:
        return [], [[] for _ in values]
    if a.dtype == object or b.dtype == object:
        ua, ca = np.unique(a, return_inverse=True)
        ub, cb = np.unique(b, return_inverse=True)
        keys, sums = sums_by_pair(ca.reshape(-1).astype(np.int64), cb.reshape(-1).astype(np.int64), *values)
        ual, ubl = ua.tolist(), ub.tolist()
        return [(ual[x], ubl[y]) for x, y in keys], sums
    order = np.lexsort((b, a))
    sa, sb = a[order], b[order]
    starts = np.flatnonzero(np.r_[True, (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])])
    sums = [np.add.reduceat(v.astype(np.uint64)[order], starts).tolist() for v in values]
    return list(zip(sa[starts].tolist(), sb[starts].tolist(), strict=True)), sums
