"""The incubator's worst-case memory, part by part, from its configuration (docs/incubator.md).

Theory of operation. What an AF_PACKET incubator holds grows with traffic only up to its caps: the
flow table's arrays (sized once from `flows.max_flows`: the next power of two at or above twice it,
21 bytes a slot) and what an eviction or a rehash allocates on top (FLOW_TABLE_TRANSIENT of it);
the capture rings (`batch.ring_mb` each, kernel memory charged to the pod; inline mode has two); a
batch read out of the ring (8 one-MiB blocks) and its copies; the fragment waiting room
(`fragments.max_bytes` of real memory) and the remembered first fragments (FragmentTracker.max_known
entries of KNOWN_ENTRY bytes); and the process itself (PROCESS). tests/incubator/test_memory_budget.py
measures the per-unit figures and checks the Helm chart's values sets against the sum. XDP mode keeps
its flow table in BPF maps, not modelled here.
"""

from __future__ import annotations

from typing import Any

from celltap.incubator.fragments import FragmentTracker

MiB = 1 << 20
PROCESS = 128 * MiB  # interpreter, numpy, the registry client, metrics
SLOT_BYTES = 21  # keys u64, deadline i64, cells i32, closing bool
FLOW_TABLE_TRANSIENT = 2.0  # a rehash's copies of the live entries and its probe arrays, on top
BATCH = 32 * MiB  # 8 ring blocks of 1 MiB read at once, their copy and the per-cell outputs
KNOWN_ENTRY = 512  # a remembered first fragment: key, addresses, (slot, expiry) (~410 B measured)
HEADROOM = 0.10


def table_slots(max_flows: int) -> int:
    """Slots of the flow table for `max_flows` (incubator/flowtable.py's sizing)."""
    size = 1
    while size < max(16, max_flows) * 2:
        size <<= 1
    return size


def worst_case(cfg: dict[str, Any]) -> dict[str, int]:
    """Bytes of each part at its cap, from a parsed incubator config (incubator/config.py)."""
    rings = 2 if cfg["mode"] == "inline" else 1
    table = table_slots(cfg["flows"]["max_flows"]) * SLOT_BYTES
    known = FragmentTracker().max_known
    return {
        "process": PROCESS,
        "flow_table": int(table * (1 + FLOW_TABLE_TRANSIENT)),
        "capture_rings": rings * max(2, cfg["batch"]["ring_mb"]) * MiB,
        "batch": rings * BATCH,
        "fragments": cfg["fragments"]["max_bytes"] + known * KNOWN_ENTRY,
    }


def fits(parts: dict[str, int], limit: int) -> bool:
    """True when the parts add up to no more than `limit` less the headroom."""
    return sum(parts.values()) <= limit * (1 - HEADROOM)
