"""cell/event_times.ts_texts: the array formatter of event times against Python's own "%.17g".

The expectation is `_ts_text` (the double tv_sec + tv_usec * 0.000001 through Python's correctly
rounded float formatting), independent of ts_texts' integer digit arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
from celltap.cell.event_times import ts_texts
from celltap.cell.events import _ts_text

INT64_MAX = 2**63 - 1


def _check(ts: np.ndarray) -> None:
    got = ts_texts(ts)
    want = [_ts_text(t) for t in ts.tolist()]
    bad = [(t, g, w) for t, g, w in zip(ts.tolist(), got, want, strict=True) if g != w]
    assert not bad, bad[:5]


@pytest.mark.parametrize(
    "low,high",
    [
        (1_600_000_000 * 10**9, 1_800_000_000 * 10**9),  # this decade
        (0, INT64_MAX),  # anything int64 holds (before 2001: the fallback)
        (999_999_990 * 10**9, 1_000_000_010 * 10**9),  # across the ten-digit boundary
        (INT64_MAX - 10**12, INT64_MAX),  # the largest times
    ],
)
def test_random_times_match_percent_17g(low: int, high: int) -> None:
    rng = np.random.default_rng(low % 1000 + 7)
    _check(rng.integers(low, high, 50_000, dtype=np.int64))


def test_every_microsecond_of_a_quarter_second_and_exact_ties() -> None:
    # every microsecond of the first quarter of a second in 2017 and in 2223: every last-digit pattern,
    # trailing zeros, and (in 2223, where a double's step is 2^-20 s) doubles whose binary fraction
    # lies exactly half-way between two seven-decimal numbers (rounded half to even)
    us_of_second = np.arange(250_000, dtype=np.int64) * 1000
    ts = np.concatenate((1_500_000_000 * 10**9 + us_of_second, 8_000_000_000 * 10**9 + us_of_second))
    us = ts // 1000
    value = (us // 1_000_000).astype(np.float64) + (us % 1_000_000).astype(np.float64) * 0.000001
    scaled = ((value - np.floor(value)) * 2**23).astype(np.int64) * 10_000_000
    assert ((scaled & (2**23 - 1)) == 2**22).sum() > 0  # the ties are really there
    _check(ts)


def test_documented_examples_and_small_arrays() -> None:
    # cell/events.py's documented examples (SF-TAP's own output): .873262 s is the double
    # 1449325525.87326189..., whose 17 digits end in 9; .873261 s rounds to six decimals
    got = ts_texts(np.array([1449325525873262000, 1449325525873261000] * 100, np.int64))
    assert got[:2] == [b"1449325525.8732619", b"1449325525.873261"]
    assert ts_texts(np.array([1_700_000_000 * 10**9] * 200, np.int64))[0] == b"1700000000"
    assert ts_texts(np.zeros(0, np.int64)) == []
    _check(np.array([0, 999, 10**9, INT64_MAX, 1_700_000_000_123_456_789], np.int64))  # the short path
