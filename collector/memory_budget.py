"""The collector's worst-case memory, part by part, from its configuration (docs/collector.md).

Theory of operation. A collector runs one UDP worker per UDP listen address, or `workers` of them per
address (each then a forked process with its own state, router and socket). Every part of a worker
that grows with traffic is capped in bytes of real memory: its state (`max_state_bytes`: templates and
domains), its router's pending records (`routing.max_pending_bytes`, when it routes), its socket's
receive buffer (`receive_buffer`, which the kernel doubles and charges to the pod), its recvmmsg
slots (`batch_datagrams` x 64 KiB) and the records decoded from one full receive (at most
DECODE_FACTOR times the bytes received: a 2-byte variable-length value, 3 bytes with its length on
the wire, becomes a bytes object and a pointer of 48). On top: each worker process's own interpreter
(WORKER_PROCESS, what a forked worker does not share) and the main process (PROCESS). The sum is what
the pod's memory limit must hold, less HEADROOM; tests/collector/test_memory_budget.py re-measures
the processes on a real collector and checks the Helm chart's values sets against the sum.
"""

from __future__ import annotations

from celltap.collector.cluster import RouterConfig
from celltap.collector.config import CollectorConfig

MiB = 1 << 20
PROCESS = 96 * MiB  # the main process: interpreter, numpy, gRPC, registry client (~42 MiB RSS idle)
WORKER_PROCESS = 64 * MiB  # a forked worker's own pages (~25 MiB PSS idle, without routing)
MAX_DATAGRAM = 65535
DECODE_FACTOR = 16  # decoded bytes per received byte, at most (2-byte variable-length values)
HEADROOM = 0.10  # of the pod's limit, never planned for


def udp_workers(cfg: CollectorConfig) -> int:
    """UDP workers the collector runs: `workers` per UDP listen address."""
    return cfg.workers * sum(1 for a in cfg.listen if a.transport == "udp")


def worst_case(cfg: CollectorConfig, routing: RouterConfig | None = None) -> dict[str, int]:
    """Bytes of each part at its cap; `routing` None: the collector does not route to nodes."""
    w = udp_workers(cfg)
    received = cfg.batch_datagrams * MAX_DATAGRAM
    parts = {
        "process": PROCESS + (w * WORKER_PROCESS if cfg.workers > 1 else 0),
        "state": w * cfg.max_state_bytes,
        "receive_buffers": w * 2 * cfg.receive_buffer,
        "recvmmsg_slots": w * received,
        "decoded_batches": w * DECODE_FACTOR * received,
    }
    if routing is not None:
        parts["pending_records"] = w * routing.max_pending_bytes  # one router per worker
    return parts


def fits(parts: dict[str, int], limit: int) -> bool:
    """True when the parts add up to no more than `limit` less the headroom."""
    return sum(parts.values()) <= limit * (1 - HEADROOM)
