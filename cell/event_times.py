"""SF-TAP's event time text for a whole array of packet times at once (numpy), byte for byte `%.17g`.

Theory of operation. An event's time is the double `tv_sec + tv_usec * 0.000001` printed with
"%.17g" (cell/events.py's `_ts_text`). Formatting a double with 17 significant digits costs about a
microsecond in Python, three times per connection on the whole-connection path. For every time
of this century the double lies in [1e9, 1e10): ten integer digits, so "%.17g" prints it correctly
rounded to seven decimals (round half to even on an exact tie, as the correctly rounded conversion
Python uses does), trailing zeros and then a bare point dropped. Such a double is an integer number
of 2^-23 (its ulp is at least that above 2^29), so its fraction times 2^23 is an exact integer and the
rounding to seven decimals is integer arithmetic: done here for the whole array, the digits are
written into fixed 18-byte rows whose dropped characters are NUL, which numpy's `S18` drops when it
hands out bytes. The double itself is computed with the same IEEE operations as `_ts_text`. Times
outside that range, and those whose rounding carries into an eleventh digit, take `_ts_text`.
tests/cell/test_event_times.py checks the result against `_ts_text` on random and edge times.
"""

from __future__ import annotations

import numpy as np
from celltap.cell.events import _ts_text

_FRAC_BITS = 23
_HALF = 1 << (_FRAC_BITS - 1)
_LOW = (1 << _FRAC_BITS) - 1
# per column from the point on: a decimal goes when its index reaches `keep`, the point when keep is 0
_MIN_ARRAY = 128  # below this many times the array passes' fixed cost is more than it saves
_COLS_POINT = np.array([0, 0, 1, 2, 3, 4, 5, 6])
_tables: list[np.ndarray] = []


def _digit_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ASCII digits of 0..99999 as 5 bytes, of 0..99 as 2 bytes, trailing zeros of each), built once."""
    if not _tables:
        k5 = np.arange(100_000)
        d5 = ((k5[:, None] // (10 ** np.arange(4, -1, -1))) % 10 + 48).astype(np.uint8)
        k2 = np.arange(100)
        d2 = ((k2[:, None] // np.array([10, 1])) % 10 + 48).astype(np.uint8)
        # trailing zeros: the number of trailing '0' characters (those of 0 are never used)
        tz5 = np.cumprod(d5[:, ::-1] == 48, axis=1).sum(axis=1).astype(np.int64)
        tz2 = np.cumprod(d2[:, ::-1] == 48, axis=1).sum(axis=1).astype(np.int64)
        _tables.extend((d5, d2, tz5, tz2))
    d5, d2, tz5, tz2 = _tables
    return d5, d2, tz5, tz2


def ts_texts(ts_ns: np.ndarray) -> list[bytes]:
    """`_ts_text(t)` for every t of `ts_ns` (int64 nanoseconds), as one list."""
    ts = np.asarray(ts_ns, np.int64)
    n = ts.shape[0]
    if n < _MIN_ARRAY:
        return [_ts_text(t) for t in ts.tolist()]
    us = ts // 1000
    value = (us // 1_000_000).astype(np.float64) + (us % 1_000_000).astype(np.float64) * 0.000001
    fast = (value >= 1e9) & (value < 1e10)
    whole = np.floor(np.where(fast, value, 1e9))
    # exact: the fraction of a double >= 2^29 is a multiple of 2^-23
    frac = ((np.where(fast, value, 1e9) - whole) * (1 << _FRAC_BITS)).astype(np.int64)
    scaled = frac * 10_000_000
    q = scaled >> _FRAC_BITS
    rem = scaled & _LOW
    q += (rem > _HALF) | ((rem == _HALF) & ((q & 1) == 1))
    ipart = whole.astype(np.int64) + (q >= 10_000_000)
    q = np.where(q >= 10_000_000, q - 10_000_000, q)
    fast &= ipart < 10_000_000_000
    d5, d2, tz5, tz2 = _digit_tables()
    ipart = np.where(fast, ipart, 1_000_000_000)
    hi, lo = q // 100, q % 100
    # decimals kept: up to the last nonzero one (none: the point goes too)
    keep = np.where(lo != 0, 7 - tz2[lo], np.where(hi != 0, 5 - tz5[hi], 0))
    rows = np.empty((n, 18), np.uint8)
    rows[:, :5] = d5[ipart // 100_000]
    rows[:, 5:10] = d5[ipart % 100_000]
    rows[:, 11:16] = d5[hi]
    rows[:, 16:] = d2[lo]
    rows[:, 10] = 46
    rows[:, 10:][_COLS_POINT >= keep[:, None]] = 0
    out: list[bytes] = rows.view("S18").ravel().tolist()
    if not fast.all():
        for i in np.flatnonzero(~fast).tolist():
            out[i] = _ts_text(int(ts[i]))
    return out
