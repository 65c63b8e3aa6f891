"""The cell's memory budget: the most real memory each part of a cell can hold, and the caps it sets.

Theory of operation. Everything in a cell that grows with traffic has a cap in bytes of real memory
(allocation sizes, not payload): `defrag_memory`, `ooo_memory`, `classify_memory`, `reader_buffer`
(per connected reader), the store's `queue_bytes`, `loopback_max_len`; or a cap in units whose real
size is bounded: `max_flows` live flows of at most FLOW_MEMORY bytes each. The worst case of a cell
is the sum of those caps, plus the process itself (PROCESS: interpreter, numpy, RE2, the rules, the
bounded caches, a batch being decoded) and each live input's buffers (INPUT_MEMORY).

`memory_budget` (global key, default 4 GiB: the pod's memory limit) turns that sum around. The caps a
configuration leaves unset are shares of the budget (defrag 1/64, out of order 1/16, held for
classification 1/16, per reader 1/64: at 4 GiB the long-standing 64 / 256 / 256 / 64 MiB), and
`max_flows`, unless set, takes what is left of the budget minus HEADROOM, at FLOW_MEMORY per flow.
Explicit settings are kept; when they add up to more than the budget, the cell says so at start.

The per-unit figures are bounds above measurements, and tests/cell/test_memory_budget.py re-measures
them on the real cell process (peak RSS) and fails if one is exceeded: a live flow in its costliest
state (classified, IPv6, both directions' stream state) measured 1,250-1,670 bytes of RSS (FLOW_MEMORY
2,048 leaves room for the flow dict's growth steps), the process ~100 MiB.

Assumptions (the budget cannot know them from the config): one reader per interface socket (each
further reader adds `reader_buffer` + READER_KERNEL), one writer on each of loopback7 and pcap when
they are configured. The live inputs are those the cell is started with (`--input`, at least one).
"""

from __future__ import annotations

from dataclasses import dataclass

from celltap.cell.sftap_config import CAP_SHARES, DEFAULT_MEMORY_BUDGET, CellConfig, ConfigError

MiB = 1 << 20
DEFAULT_BUDGET = DEFAULT_MEMORY_BUDGET
HEADROOM = 0.10  # of the budget, never planned for: allocator fragmentation, what no model covers
FLOW_MEMORY = 2048  # bytes of RSS per live flow, bound (measured 1,250-1,670 in the costliest state)
PROCESS = 160 * MiB  # the process with no traffic held: measured ~80-100 MiB peak on a flood
READER_KERNEL = 2 * MiB  # a reader socket's SO_SNDBUF (1 MiB, doubled by the kernel), charged to the pod
# One live input: a VXLAN/Geneve receiver's socket buffer (8 MiB, doubled by the kernel) and, in the
# process, its recvmmsg rows (256 x 64 KiB), a batch being read (LiveSource.max_batch_bytes, 4 MiB,
# plus one last recvmmsg) and its decoded copies and events in flight: measured ~64 MiB of RSS under
# a flood of 64 KB datagrams (tests/cell/test_memory_budget.py); an AF_PACKET ring (32 MiB) is less.
INPUT_KERNEL = 16 * MiB
INPUT_MEMORY = INPUT_KERNEL + 96 * MiB
INPUT_WRITER = 2 * MiB  # a loopback7 / pcap writer: one 1 MiB read plus the record in progress
STORE_FRAME = 128  # store index bytes in memory per frame of the open file (columns, then their concat)
STORE_MIN_RECORD = 36  # the smallest pcap record: 16-byte header + a 20-byte IP packet
MIN_FLOWS = 1024
__all__ = ["CAP_SHARES", "BudgetPlan", "derived_max_flows", "fixed_parts", "plan"]


@dataclass
class BudgetPlan:
    """The worst case of one cell, part by part, and the flow cap it runs with."""

    budget: int
    max_flows: int
    parts: dict[str, int]

    @property
    def total(self) -> int:
        """Bytes of the worst case (all parts)."""
        return sum(self.parts.values())

    @property
    def usable(self) -> int:
        """The budget less its headroom: what the parts may add up to."""
        return int(self.budget * (1 - HEADROOM))

    def describe(self) -> str:
        """One log line: the budget, the worst case and its parts in MiB."""
        parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in self.parts.items())
        return (
            f"memory budget {self.budget / MiB:.0f} MiB ({HEADROOM:.0%} headroom): "
            f"max_flows {self.max_flows:,}, worst case {self.total / MiB:.0f} MiB ({parts})"
        )


def interface_count(cfg: CellConfig) -> int:
    """Interface sockets the cell serves (one reader each is budgeted)."""
    from celltap.cell.abstractor import sink_name

    names = set()
    for rule in [*cfg.rules, *cfg.special.values()]:
        if rule.name in ("loopback7", "pcap"):
            continue
        names.update(sink_name(rule, sock) for sock in rule.socket_names())
    return len(names)


def fixed_parts(cfg: CellConfig, inputs: int = 1) -> dict[str, int]:
    """Worst-case bytes of every part of a cell except its flows."""
    g = cfg.glob
    parts = {
        "process": PROCESS,
        "inputs": max(1, inputs) * INPUT_MEMORY,
        "defrag": g.defrag_memory,
        "out_of_order": g.ooo_memory,
        "classification": g.classify_memory,
        "readers": interface_count(cfg) * (g.reader_buffer + READER_KERNEL),
    }
    writers = sum(1 for name in ("loopback7", "pcap") if name in cfg.special)
    if writers:
        lb = g.loopback_max_len if "loopback7" in cfg.special else 0
        parts["input_sockets"] = writers * INPUT_WRITER + lb
    if g.dedup:
        parts["dedup"] = 32 * MiB  # 1 Mi (hash, time) entries and their sort in flight
    if cfg.store is not None:
        st = cfg.store
        parts["store"] = st.queue_bytes + st.file_bytes // STORE_MIN_RECORD * STORE_FRAME
    return parts


def derived_max_flows(cfg: CellConfig, inputs: int = 1) -> int:
    """The flows that fit the budget after every other part (ConfigError when fewer than MIN_FLOWS)."""
    g = cfg.glob
    fixed = sum(fixed_parts(cfg, inputs).values())
    flows = (int(g.memory_budget * (1 - HEADROOM)) - fixed) // FLOW_MEMORY
    if flows < MIN_FLOWS:
        raise ConfigError(
            f"global.memory_budget: {g.memory_budget} bytes leave room for {max(flows, 0)} flows after the "
            f"buffers ({fixed // MiB} MiB); raise it or lower the buffer caps"
        )
    return flows


def plan(cfg: CellConfig, inputs: int = 1) -> BudgetPlan:
    """The cell's worst case with its flow cap (the configured one, or the one the budget leaves)."""
    g = cfg.glob
    flows = g.max_flows if g.max_flows is not None else derived_max_flows(cfg, inputs)
    parts = fixed_parts(cfg, inputs)
    parts["flows"] = flows * FLOW_MEMORY
    return BudgetPlan(g.memory_budget, flows, parts)
