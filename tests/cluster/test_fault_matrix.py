"""Issue #19's fault matrix, each fault once (bench/bench_faults.py runs it 5 times in a row).

CI streams for 6 s instead of the bench's 9: the fault still starts 3 s in, and every pause still
ends after the stream's records reached the collector (the suite's time budget)."""

from __future__ import annotations

import pytest

from tests.cluster import fault_matrix

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.mark.parametrize("fault", fault_matrix.FAULTS)
def test_cluster_stays_exact(fault: str, etcd_factory, tmp_path) -> None:
    out = fault_matrix.run(fault, etcd_factory(), tmp_path, duration=6.0)
    assert not out.notes, out.notes
    assert out.duplicates == 0, out
    assert out.uncounted_loss == 0, out
    assert out.exact, out
