"""Column access shared by apps: counters, address keys and their text form."""

from __future__ import annotations

import ipaddress

import numpy as np

from collector.routing import address_rows

ADDR_KEY_LEN = 17  # l3 byte + 16 address bytes (IPv4 in the first 4)


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


def address_keys(records: np.ndarray, side: str, prefix_v4: int = 32, prefix_v6: int = 128) -> np.ndarray:
    """Per record a V17 key (l3 byte + address), optionally masked to a prefix."""
    l3, rows = address_rows(records, side)
    if prefix_v4 < 32 or prefix_v6 < 128:
        rows = rows.copy()
        for version, plen, width in ((4, prefix_v4, 4), (6, prefix_v6, 16)):
            sel = l3 == version
            if not sel.any():
                continue
            bits = np.unpackbits(rows[sel, :width], axis=1)
            bits[:, plen:] = 0
            rows[np.ix_(np.flatnonzero(sel), np.arange(width))] = np.packbits(bits, axis=1)
    out = np.empty((len(records), ADDR_KEY_LEN), dtype=np.uint8)
    out[:, 0] = l3
    out[:, 1:] = rows
    return out.view(f"V{ADDR_KEY_LEN}").reshape(-1)


def key_text(key: bytes) -> str:
    """Text form of an address key ('-' when the record had no address)."""
    l3 = key[0]
    if l3 == 4:
        return str(ipaddress.IPv4Address(key[1:5]))
    if l3 == 6:
        return str(ipaddress.IPv6Address(key[1:17]))
    return "-"


def text_key(text: str) -> bytes:
    """Inverse of key_text."""
    if text == "-":
        return bytes(ADDR_KEY_LEN)
    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        return b"\x04" + addr.packed + bytes(12)
    return b"\x06" + addr.packed


def sums_by_key(keys: np.ndarray, *values: np.ndarray) -> tuple[list, list[list[int]]]:
    """Unique keys (as Python objects) and the exact uint64 sum of each value column per key."""
    if len(keys) == 0:
        return [], [[] for _ in values]
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sums = [np.add.reduceat(v.astype(np.uint64)[order], starts).tolist() for v in values]
    return ordered[starts].tolist(), sums
