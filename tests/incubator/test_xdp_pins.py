"""The XDP program's two pin stores (a set-associative array, overflow in the LRU hash) keep every
live flow where it started, whichever store holds its pin (crafted frames, BPF_PROG_TEST_RUN).

The set store is made one set of two ways (`pin_cache_flows=2`), so the first two flows are pinned
there and every later one in the LRU hash.  Each slot's MAC rewrite writes the slot number into
the destination MAC, so the frame the program returns says where it sent it.  Expected slots come
from the tables the test writes: the slot a flow met first while its pin lives, the table's slot
once the pin expired (idle timeout, linger after FIN) or its cell left.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from celltap.incubator.cells import TABLE_BITS, CellSet
from celltap.loadgen.packets import ethernet, ipv4, tcp, udp

from tests.conftest import require_root, require_tool

XDP_REDIRECT = 4
CELLS = ("s0", "s1", "s2")
A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 9, 9])


def udp_frame(sport: int) -> bytes:
    return ethernet(b"\x04" * 6, b"\x02" * 6, 0x0800, ipv4(A, B, 17, udp(A, B, sport, 53, b"q")))


def tcp_frame(sport: int, flags: int) -> bytes:
    return ethernet(b"\x04" * 6, b"\x02" * 6, 0x0800, ipv4(A, B, 6, tcp(A, B, sport, 80, 1, 1, flags)))


class Kernel:
    """A loaded xdp_incubator whose table the test sets to one slot for every bucket."""

    def __init__(self, **kcfg) -> None:
        from celltap.incubator.xdp.program import KernelConfig, PartitionProgram

        self.p = PartitionProgram(KernelConfig(pin_cache_flows=2, **kcfg), ("xdp_incubator",), TABLE_BITS)
        self.fd = self.p.obj.prog_fd("xdp_incubator")
        self.lo = socket.if_nametoindex("lo")

    def cells(self, alive: tuple[str, ...], table_slot: int) -> None:
        """Make `alive` the live cells and send every bucket to `table_slot`."""
        cells = CellSet({c: 1 for c in CELLS})  # slots 0, 1, 2 in id order
        cells.update({c: 1 for c in alive})
        cells.table = np.full(1 << TABLE_BITS, table_slot, np.int32)
        slots = cells.alive_slots()
        self.p.set_cells(cells, {s: self.lo for s in slots}, {s: bytes((2, 0, 0, 0, 0, s)) for s in slots})

    def slot(self, frame: bytes) -> int:
        """Where the program sent the frame (the slot its MAC rewrite wrote)."""
        from celltap.incubator.xdp.libbpf import test_run

        ret, data, _ns = test_run(self.fd, frame)
        assert ret == XDP_REDIRECT, ret
        assert data[:5] == b"\x02\0\0\0\0"
        return data[5]

    def close(self) -> None:
        self.p.close()


@pytest.fixture
def kernel():
    require_root()
    require_tool("clang")
    made: list[Kernel] = []

    def make(**kcfg) -> Kernel:
        made.append(Kernel(**kcfg))
        return made[-1]

    yield make
    for k in made:
        k.close()


def test_flows_pinned_in_either_store_stay_when_every_bucket_moves(kernel):
    k = kernel()
    k.cells(CELLS, 0)
    old = [udp_frame(1000 + i) for i in range(10)]
    assert [k.slot(f) for f in old] == [0] * 10
    # two flows in the set, eight in the LRU hash: both stores are exercised
    assert len(k.p.set_pins()) == 2
    assert sum(1 for _ in k.p.pins_map.keys(8)) == 8
    assert k.p.counters()["new_pin"] == 10
    k.cells(CELLS, 1)
    assert [k.slot(f) for f in old] == [0] * 10  # live flows stay on their first cell
    new = [udp_frame(2000 + i) for i in range(5)]
    assert [k.slot(f) for f in new] == [1] * 5  # new flows follow the table
    assert [k.slot(f) for f in old + new] == [0] * 10 + [1] * 5
    c = k.p.counters()
    assert (c["new_pin"], c["rehomed_pin"]) == (15, 0)


def test_flows_whose_cell_left_follow_the_table_and_stay_there(kernel):
    k = kernel()
    k.cells(CELLS, 0)
    flows = [udp_frame(3000 + i) for i in range(6)]
    assert [k.slot(f) for f in flows] == [0] * 6
    k.cells(("s1", "s2"), 2)  # s0 (slot 0) left; the table sends everything to slot 2
    assert [k.slot(f) for f in flows] == [2] * 6
    k.cells(("s1", "s2"), 1)  # the re-homed flows are pinned again: a later move keeps them
    assert [k.slot(f) for f in flows] == [2] * 6
    c = k.p.counters()
    assert (c["rehomed_pin"], c["new_pin"]) == (6, 12)


def test_pins_expire_after_the_idle_timeout_and_the_linger_after_fin(kernel):
    k = kernel(idle_timeout_s=0.3, close_linger_s=0.3)
    k.cells(CELLS, 0)
    # per store: one flow that goes idle, one that closes (FIN) and keeps sending
    idle = [udp_frame(4000), udp_frame(4001), udp_frame(4002)]  # set, set, LRU
    assert [k.slot(f) for f in idle] == [0, 0, 0]
    k.cells(CELLS, 1)
    time.sleep(0.8)
    assert [k.slot(f) for f in idle] == [1, 1, 1]  # idle past the timeout: new flows again

    k2 = kernel(idle_timeout_s=30.0, close_linger_s=0.3)
    k2.cells(CELLS, 0)
    ports = (5000, 5001, 5002)  # set, set, LRU
    assert [k2.slot(tcp_frame(p, 0x10)) for p in ports] == [0, 0, 0]
    k2.cells(CELLS, 1)
    assert [k2.slot(tcp_frame(p, 0x11)) for p in ports] == [0, 0, 0]  # FIN: still pinned, lingering
    assert [k2.slot(tcp_frame(p, 0x10)) for p in ports] == [0, 0, 0]  # within the linger
    time.sleep(0.8)
    assert [k2.slot(tcp_frame(p, 0x10)) for p in ports] == [1, 1, 1]  # linger over: the table's slot
