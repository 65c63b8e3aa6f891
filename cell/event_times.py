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
_MIN_ARRAY = 128  # below this many times the array passes' fixed cost is more than it saves
# per column from the point on: a decimal goes when its index reaches `keep`, the point when keep is 0
_COLS_POINT = np.array([0, 0, 1, 2, 3, 4, 5, 6])


def _digit_table() -> tuple[np.ndarray, np.ndarray]:
    """(ASCII digits of 0..9999 as 4 bytes each, their trailing '0' count), built once (10,000 rows)."""
    k = np.arange(10_000)
    d4 = np.empty((10_000, 4), np.uint8)
    tz4 = np.zeros(10_000, np.int64)
    for col in range(4):
        d4[:, 3 - col] = (k // 10**col) % 10 + 48
        tz4 += k % 10 ** (col + 1) == 0
    return d4, tz4


_D4, _TZ4 = _digit_table()


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
    ipart = np.where(fast, ipart, 1_000_000_000)
    hi, lo = q // 1000, q % 1000
    # decimals kept: up to the last nonzero one (none: the point goes too)
    keep = np.where(lo != 0, 7 - _TZ4[lo], np.where(hi != 0, 4 - _TZ4[hi], 0))
    rows = np.empty((n, 18), np.uint8)
    rows[:, :2] = _D4[ipart // 100_000_000, 2:]
    rows[:, 2:6] = _D4[ipart // 10_000 % 10_000]
    rows[:, 6:10] = _D4[ipart % 10_000]
    rows[:, 11:15] = _D4[hi]
    rows[:, 15:] = _D4[lo, 1:]
    rows[:, 10] = 46
    rows[:, 10:][_COLS_POINT >= keep[:, None]] = 0
    out: list[bytes] = rows.view("S18").ravel().tolist()
    if not fast.all():
        for i in np.flatnonzero(~fast).tolist():
            out[i] = _ts_text(int(ts[i]))
    return out
