"""Every scenario is a pure function of (seed, count): same seed, same bytes; other seed, other bytes."""

from __future__ import annotations

import hashlib

import pytest
from celltap.loadgen.scenario import EPOCH_NS, all_scenarios, get

SMALL_COUNTS = {"small": 2000, "cps": 40, "mixed": 40}
NAMES = [sc.name for sc in all_scenarios()]


def digest(name: str, seed: int) -> tuple[str, int, list[int]]:
    h = hashlib.sha256()
    n = 0
    stamps = []
    for ts, frame in get(name).generate(seed, SMALL_COUNTS.get(name, 16)):
        h.update(ts.to_bytes(8, "big") + len(frame).to_bytes(4, "big") + frame)
        stamps.append(ts)
        n += 1
    return h.hexdigest(), n, stamps


def test_all_required_scenarios_registered() -> None:
    required = {
        "http",
        "dns",
        "tls",
        "smtp",
        "sip",
        "ssh",
        "torrent_tracker",
        "cps",
        "small",
        "frag",
        "vlan",
        "ipv6",
        "tcpfaults",
        "mixed",
    }
    assert required <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_bytes_other_seed_other_bytes(name: str) -> None:
    a, n, stamps = digest(name, 7)
    b, _, _ = digest(name, 7)
    c, _, _ = digest(name, 8)
    assert n > 0
    assert a == b
    assert a != c
    assert stamps == sorted(stamps), "frames must come out in time order"
    assert stamps[0] >= EPOCH_NS


@pytest.mark.parametrize("name", NAMES)
def test_frames_are_ethernet_sized(name: str) -> None:
    for _, frame in get(name).generate(3, SMALL_COUNTS.get(name, 16)):
        assert 60 <= len(frame) <= 1514 + 8, len(frame)
