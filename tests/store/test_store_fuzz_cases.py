"""The store's fuzz harness (fuzz/harness_store.py) on its seeds and on the crashers it found."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import harness_store

CRASHERS = sorted((Path(__file__).resolve().parents[1] / "fuzz" / "crashers" / "store").glob("*"))


@pytest.mark.parametrize("data", harness_store.seeds(), ids=lambda d: f"seed-{d[:1].hex()}-{len(d)}")
def test_seeds(data: bytes) -> None:
    harness_store.test_one_input(data)


@pytest.mark.parametrize("path", CRASHERS, ids=lambda p: p.name)
def test_crashers(path: Path) -> None:
    """Each was an exception escaping the harness (nul_in_address: ValueError from inet_pton)."""
    harness_store.test_one_input(path.read_bytes())


def test_damaged_index_and_capture_bytes() -> None:
    """Every truncation of a valid index and of a valid capture is handled (rebuilt or skipped)."""
    cap, idx = (
        next(s for s in harness_store.seeds() if s[:1] == b"\x01"),
        next(s for s in harness_store.seeds() if s[:1] == b"\x02"),
    )
    for blob in (cap, idx):
        for cut in range(1, len(blob), max(1, len(blob) // 60)):
            harness_store.test_one_input(blob[:cut])
