"""The numpy flow table behaves like a dict with deadlines, a cap and partial sweeps."""

from __future__ import annotations

import numpy as np
from celltap.incubator.flowtable import FlowTable

S = 1_000_000_000


def test_random_ops_against_a_dict_model():
    rng = np.random.default_rng(3)
    t = FlowTable(max_flows=50_000, idle_timeout_s=1e6)
    model: dict[int, int] = {}
    universe = rng.integers(0, 2**64, 30_000, dtype=np.uint64)
    for step in range(60):
        h = rng.choice(universe, 2000)
        got = t.lookup(h, step)
        for x, g in zip(h.tolist(), got.tolist(), strict=True):
            assert g == model.get(x if x > 1 else 2, -1)
        new = got < 0
        cells = (h[new] % np.uint64(7)).astype(np.int32)
        t.insert(h[new], cells, step)
        for x, c in zip(h[new].tolist(), cells.tolist(), strict=True):
            model.setdefault(x if x > 1 else 2, c)
        if step % 10 == 9:
            drop = [3, 5]
            gone = t.drop_cells(drop)
            assert gone == sum(1 for v in model.values() if v in drop)
            model = {k: v for k, v in model.items() if v not in drop}
        assert len(t) == len(model)


def test_idle_expiry_and_fin_linger():
    t = FlowTable(max_flows=1000, idle_timeout_s=10, close_linger_s=1, sweep_slots=1 << 20)
    h = np.array([11, 22, 33], dtype=np.uint64)
    t.insert(h, np.array([0, 1, 2], np.int32), 0, closing=np.array([False, True, False]))
    t.lookup(np.array([33], np.uint64), 5 * S)  # refreshes 33's idle deadline
    r = t.sweep(2 * S)
    assert (r.expired_closed, r.expired_idle) == (1, 0)
    assert t.lookup(h, 2 * S).tolist() == [0, -1, 2]  # both live ones now due at 12 s
    t.lookup(np.array([33], np.uint64), 6 * S)  # 33 now due at 16 s
    r = t.sweep(12 * S)
    assert r.expired_idle == 1
    assert t.lookup(h, 12 * S).tolist() == [-1, -1, 2]


def test_memory_cap_evicts_and_counts():
    t = FlowTable(max_flows=1000, idle_timeout_s=100)
    h = np.arange(10, 1010, dtype=np.uint64)
    t.insert(h, np.zeros(1000, np.int32), 0)
    assert len(t) == 1000
    ev = t.insert(np.arange(5000, 5100, dtype=np.uint64), np.ones(100, np.int32), S)
    assert ev >= 100
    assert len(t) <= 1000
    # The newest flows are the ones kept.
    assert (t.lookup(np.arange(5000, 5100, dtype=np.uint64), S) == 1).all()


def test_many_inserts_rehash_through_tombstones():
    t = FlowTable(max_flows=4096, idle_timeout_s=100)
    rng = np.random.default_rng(0)
    for round_ in range(30):
        h = rng.integers(2, 2**64, 3000, dtype=np.uint64)
        t.insert(h, np.full(3000, round_ % 4, np.int32), round_)
        assert (t.lookup(h, round_) == round_ % 4).all()
        t.drop_cells([round_ % 4])
        assert len(t) == 0
