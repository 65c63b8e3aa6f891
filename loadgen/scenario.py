"""Scenario registry and the scheduler that interleaves flows in time as a real link would."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# Every generated capture starts at this instant (2023-11-14T22:13:20Z) so files are byte-stable.
EPOCH_NS = 1_700_000_000 * 1_000_000_000

Frames = list[tuple[int, bytes]]  # (ns relative to the flow's start, frame), in capture order
FlowFn = Callable[[random.Random, int], Frames]


@dataclass(frozen=True)
class Scenario:
    """A named traffic generator: `generate(seed, count)` yields (ts_ns, frame) in time order."""

    name: str
    description: str
    count_means: str
    default_count: int
    generate: Callable[[int, int], Iterator[tuple[int, bytes]]]
    flow: FlowFn | None = None  # one flow/transaction number i, for scenarios built from flows
    mean_gap_ns: int = 3_000_000


REGISTRY: dict[str, Scenario] = {}


def flow_rng(seed: int, name: str, i: int) -> random.Random:
    """The RNG of flow i of scenario `name`: independent of every other flow, stable across runs."""
    return random.Random(f"{seed}/{name}/{i}")


def interleave(
    flow_of: Callable[[int], Frames],
    count: int,
    sched: random.Random,
    mean_gap_ns: int,
    start_ns: int = EPOCH_NS,
) -> Iterator[tuple[int, bytes]]:
    """Start flow i after an exponential gap from flow i-1 and merge all flows' frames by time."""
    heap: list[tuple[int, int, int, int, Frames]] = []
    i, next_start = 0, start_ns
    while i < count or heap:
        while i < count and (not heap or next_start <= heap[0][0]):
            frames = flow_of(i)
            if frames:
                heapq.heappush(heap, (next_start + frames[0][0], i, 0, next_start, frames))
            i += 1
            next_start += 1 + int(sched.expovariate(1.0 / mean_gap_ns))
        ts, fi, pos, base, frames = heapq.heappop(heap)
        yield ts, frames[pos][1]
        if pos + 1 < len(frames):
            heapq.heappush(heap, (base + frames[pos + 1][0], fi, pos + 1, base, frames))


def register_flows(
    name: str,
    description: str,
    count_means: str = "flows",
    default_count: int = 100,
    mean_gap_ns: int = 3_000_000,
) -> Callable[[FlowFn], FlowFn]:
    """Register a scenario built from one flow function `(rng, i) -> Frames`, flows interleaved."""

    def deco(fn: FlowFn) -> FlowFn:
        def generate(seed: int, count: int) -> Iterator[tuple[int, bytes]]:
            sched = random.Random(f"{seed}/{name}/schedule")
            return interleave(lambda i: fn(flow_rng(seed, name, i), i), count, sched, mean_gap_ns)

        REGISTRY[name] = Scenario(name, description, count_means, default_count, generate, fn, mean_gap_ns)
        return fn

    return deco


def register(name: str, description: str, count_means: str, default_count: int = 100) -> Callable:
    """Register a scenario given directly as a generator function `(seed, count) -> (ts_ns, frame)`."""

    def deco(fn: Callable[[int, int], Iterator[tuple[int, bytes]]]) -> Callable:
        REGISTRY[name] = Scenario(name, description, count_means, default_count, fn)
        return fn

    return deco


def get(name: str) -> Scenario:
    """The registered scenario `name` (importing all scenario modules first)."""
    import celltap.loadgen.scenarios  # noqa: F401  (registers every scenario)

    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def all_scenarios() -> list[Scenario]:
    """Every registered scenario, by name."""
    import celltap.loadgen.scenarios  # noqa: F401

    return [REGISTRY[k] for k in sorted(REGISTRY)]
