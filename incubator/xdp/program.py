"""The control plane's view of the BPF object: config, partition table, cells, counters, fragments.

One `PartitionProgram` wraps one loaded object (XDP incubator or DiCAP socket filter).  The
control plane writes the partition table computed by `CellSet` (the numpy path's own table,
so the kernel and numpy decide alike; packed one byte per bucket, so the kernel path serves slots
0-254, `TABLE_SLOTS`), the live cells (devmap entries, MAC rewrite, alive flag)
and the config; it reads the per-CPU counters (summed over CPUs) and the fragment map (to release
fragments the Python path holds once their first fragment went through the kernel).

Pins: the XDP program keeps them first in `pin_sets` (a small set-associative array, PIN_WAYS per
set, `KernelConfig.pin_cache_flows` pins in all) and the overflow in the LRU hash `pins` (sized
by max_flows); the socket filter in the LRU hash alone (see the C source, "Where pins live").
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from celltap.incubator.cells import CellSet
from celltap.incubator.fragments import DatagramKey
from celltap.incubator.xdp.build import build_object
from celltap.incubator.xdp.libbpf import BpfObject, num_cpus

MAX_CELLS = 256
SLOT_NONE = 0xFFFFFFFF
TABLE_NONE = 0xFF  # a packed table's byte for "no live cell"
TABLE_SLOTS = 255  # slots a packed table byte can name (0-254): the kernel path's limit
BUCKETS_PER_ELEM = 8  # part_table: one byte per bucket, 8 per 8-byte array element


class SlotLimitError(ValueError):
    """A cell's slot is past what the kernel's packed partition table can name."""


NONIP_CODES = {"bridge": 0, "cell0": 1, "all": 2}
# In the order of the C enum; "up_*" frames went up to Python, "drop_*" were dropped (counted).
COUNTERS = (
    "rx",
    "rx_bytes",
    "redirected",
    "kept",
    "other_cell",
    "new_pin",
    "rehomed_pin",
    "frag_hit",
    "up_undecodable",
    "up_tunnel",
    "up_l2_other",
    "up_deep_headers",
    "up_frag_before_first",
    "up_non_ip_all",
    "up_no_output",
    "drop_non_ip_policy",
    "drop_no_cell",
    "bridged_to_a",
    "bridged_to_b",
    "up_slot_limit",
)
_CONFIG = struct.Struct("<QQQQIIIIIIHHIIIIII4x")  # struct config: 88 bytes
_CELL = struct.Struct("<6sBBI")
_PIN_SET = struct.Struct("<II" + "QQII" * 2 + "Q")  # lock, pad, PIN_WAYS x (hash, expires, slot, closing)
PIN_WAYS = 2
_DGRAM_KEY = struct.Struct("<BBHI16s16s")
_DGRAM_VAL = struct.Struct("<IIQ")


@dataclass(frozen=True)
class KernelConfig:
    """What the programs need besides the table and the cells."""

    seed: int = 0
    idle_timeout_s: float = 60.0
    close_linger_s: float = 2.0
    frag_timeout_s: float = 30.0
    non_ip: str = "cell0"
    decapsulate: bool = True
    pin_flows: bool = True
    vxlan_port: int = 4789
    geneve_port: int = 6081
    max_flows: int = 1 << 20
    max_datagrams: int = 65536
    pin_cache_flows: int = 1 << 16  # pins in the XDP program's set-associative store (2 MiB)

    def pin_sets(self) -> int:
        """Entries of pin_sets: a power of two, PIN_WAYS pins each, at most max_flows pins in all."""
        n = max(1, min(self.max_flows, self.pin_cache_flows) // PIN_WAYS)
        return 1 << (n.bit_length() - 1)


class PartitionProgram:
    """A loaded celltap_partition object, with the maps the control plane writes and reads."""

    def __init__(
        self,
        kcfg: KernelConfig,
        programs: tuple[str, ...],
        table_bits: int,
        sides: tuple[int, int] | None = None,
        capture: int = 0,
    ) -> None:
        self.kcfg = kcfg
        self.capture = capture  # ifindex xdp_incubator runs on (mirror): whose redirects we count
        self.sides = sides  # inline: ifindexes of the two bridged interfaces
        if table_bits < 3:
            raise ValueError(f"table_bits {table_bits}: the packed partition table needs at least 3")
        self.table_bits = table_bits
        self.obj = BpfObject(
            str(build_object()),
            max_entries={
                "part_table": (1 << table_bits) // BUCKETS_PER_ELEM,
                "pins": max(1024, kcfg.max_flows),
                "frags": max(1024, kcfg.max_datagrams),
                "pin_sets": kcfg.pin_sets(),
            },
            programs=programs,
        )
        self.ncpu = num_cpus()
        self.config_map = self.obj.map("config")
        self.table_map = self.obj.map("part_table")
        self.cells_map = self.obj.map("cells")
        self.frags_map = self.obj.map("frags")
        self.counters_map = self.obj.map("counters")
        self.out_map = self.obj.map("cell_out")
        self.pins_map = self.obj.map("pins")
        self.pin_sets_map = self.obj.map("pin_sets")
        self.alive_bits_map = self.obj.map("alive_bits")
        self._devs = self.obj.map("cell_devs") if "xdp_incubator" in programs else None
        self.xmit_drops_map = self.obj.map("xmit_drops")
        self.egress_filtered_map = self.obj.map("egress_filtered")
        self.redirect_err_map = self.obj.map("redirect_err")
        for tp in ("count_xmit_drops", "count_redirect_err"):
            if tp in programs:
                self.obj.attach(tp)
        self._bcast = self.obj.map("bcast") if sides else None
        self._alive: set[int] = set()
        self._ifindex: dict[int, int] = {}
        self._seen_ifindex: dict[int, int] = {}  # kept after a cell leaves: its counters stay readable
        self.all_up = False  # socket filter: every frame up to Python (a slot past TABLE_SLOTS)
        if sides:
            for ifi in sides:
                self._bcast_add(ifi)
                self._watch_xmit(ifi)
        self.write_config(SLOT_NONE, SLOT_NONE)

    def _watch_xmit(self, ifindex: int) -> None:
        """Count the transmit failures (and inline's filtered copies) of one redirect target."""
        k = struct.pack("<I", ifindex)
        if self.xmit_drops_map.lookup(k, 8) is None:
            self.xmit_drops_map.update(k, struct.pack("<Q", 0))
        if self.egress_filtered_map.lookup(k, 8 * self.ncpu) is None:  # per CPU
            self.egress_filtered_map.update(k, bytes(8 * self.ncpu))

    def xmit_drops(self, ifindex: int) -> int:
        """Frames redirected to `ifindex` that it failed to transmit (inline: not counting the
        copies xdp_egress dropped on purpose)."""
        k = struct.pack("<I", ifindex)
        raw = self.xmit_drops_map.lookup(k, 8)
        filt = self.egress_filtered_map.lookup(k, 8 * self.ncpu)
        total = struct.unpack("<Q", raw)[0] if raw else 0
        return total - (sum(struct.unpack(f"<{self.ncpu}Q", filt)) if filt else 0)

    def targets(self) -> dict[int, int]:
        """Slot -> ifindex of every cell the kernel has redirected to (left cells included)."""
        return {slot: ifi for slot, ifi in self._seen_ifindex.items() if ifi}

    def redirect_errors(self, slot: int) -> int:
        """Redirects to `slot` the kernel refused after the program returned."""
        raw = self.redirect_err_map.lookup(struct.pack("<I", slot), 8)
        return struct.unpack("<Q", raw)[0] if raw else 0

    def _bcast_add(self, ifindex: int) -> None:
        assert self._bcast is not None
        egress = self.obj.prog_fd("xdp_egress")
        self._bcast.update(struct.pack("<I", ifindex), struct.pack("<Ii", ifindex, egress))

    def write_config(self, cell0_slot: int, my_slot: int) -> None:
        """The config map (cell 0 for non-IP frames, and the socket filter's own slot)."""
        k = self.kcfg
        value = _CONFIG.pack(
            k.seed & (2**64 - 1),
            int(k.idle_timeout_s * 1e9),
            int(k.close_linger_s * 1e9),
            int(k.frag_timeout_s * 1e9),
            self.table_bits,
            NONIP_CODES[k.non_ip],
            cell0_slot & SLOT_NONE,
            int(k.decapsulate),
            int(k.pin_flows),
            my_slot & SLOT_NONE,
            k.vxlan_port,
            k.geneve_port,
            self.sides[0] if self.sides else 0,
            self.sides[1] if self.sides else 0,
            self.capture,
            self._devs.id() if self._devs is not None else 0,
            k.pin_sets() - 1,
            int(self.all_up),
        )
        self.config_map.update(struct.pack("<I", 0), value)

    def set_cells(
        self,
        cells: CellSet,
        ifindex: Mapping[int, int] | None = None,
        macs: Mapping[int, bytes | None] | None = None,
        my_slot: int = SLOT_NONE,
    ) -> None:
        """Write the membership: devmap and cell entries first, then the table, then the config.

        Order matters for a running program: a slot is alive with its output before the table
        sends flows to it, and a leaving slot is out of the table before it is marked dead.
        """
        alive = set(cells.alive_slots())
        if alive and max(alive) >= TABLE_SLOTS:
            raise SlotLimitError(
                f"cell slot {max(alive)}: the kernel's partition table names slots 0-{TABLE_SLOTS - 1} "
                f"({TABLE_SLOTS} distinct cells since the incubator started)"
            )
        for slot in sorted(alive - self._alive):
            ifi = ifindex[slot] if ifindex is not None else 0
            if self._devs is not None and ifindex is not None:
                self._devs.update(struct.pack("<I", slot), struct.pack("<I", ifi))
            if self._bcast is not None and ifi:
                self._bcast_add(ifi)
            if ifi:
                self._watch_xmit(ifi)
            self._ifindex[slot] = ifi
            self._seen_ifindex[slot] = ifi
            mac = (macs or {}).get(slot)
            self.cells_map.update(
                struct.pack("<I", slot), _CELL.pack(mac or b"\0" * 6, int(bool(mac)), 1, ifi)
            )
        self._write_alive_bits(alive | self._alive)
        self.write_table(cells.table)
        self._write_alive_bits(alive)  # leaving slots: dead before their devmap entries go
        for slot in sorted(self._alive - alive):
            self.cells_map.update(struct.pack("<I", slot), _CELL.pack(b"\0" * 6, 0, 0, 0))
            if self._devs is not None:
                self._devs.delete(struct.pack("<I", slot))
            ifi = self._ifindex.pop(slot, 0)
            if self._bcast is not None and ifi and (not self.sides or ifi not in self.sides):
                self._bcast.delete(struct.pack("<I", ifi))
        self._alive = alive
        self.write_config(cells.first_slot() if alive else SLOT_NONE, my_slot)

    def pass_all_up(self, my_slot: int) -> None:
        """Socket filter: hand every frame to Python from now on (slots are never reused, so once a
        cell's slot is past what the packed table names, the kernel cannot decide again)."""
        self.all_up = True
        self.write_config(SLOT_NONE, my_slot)

    def _write_alive_bits(self, slots: set[int]) -> None:
        """The live slots as bits (what the XDP program reads under a pin set's lock)."""
        words = [0] * (MAX_CELLS // 64)
        for slot in slots:
            words[slot >> 6] |= 1 << (slot & 63)
        self.alive_bits_map.update(struct.pack("<I", 0), struct.pack(f"<{len(words)}Q", *words))

    def write_table(self, table: np.ndarray) -> None:
        """Write the partition table packed, one byte per bucket (only the elements that changed).

        A bucket is one byte written whole, so a frame running during the update sees each bucket
        either old or new (see the C source, part_table)."""
        if table.size and int(table.max()) >= TABLE_SLOTS:
            raise SlotLimitError(
                f"partition table names slot {int(table.max())}; the kernel's names 0-{TABLE_SLOTS - 1}"
            )
        packed = np.where(table < 0, TABLE_NONE, table).astype(np.uint8)
        new = packed.reshape(-1, BUCKETS_PER_ELEM)
        old = getattr(self, "_table", None)
        idx = np.arange(len(new)) if old is None else np.flatnonzero((old != new).any(axis=1))
        if idx.size:  # one syscall for the whole change (a joining cell takes ~1/N of the buckets)
            keys = idx.astype("<u4").tobytes()
            self.table_map.update_batch(keys, new[idx].tobytes(), int(idx.size))
        self._table = new

    def counters(self) -> dict[str, int]:
        """Every counter summed over CPUs."""
        out = {}
        for i, name in enumerate(COUNTERS):
            raw = self.counters_map.lookup(struct.pack("<I", i), 8 * self.ncpu)
            out[name] = sum(struct.unpack(f"<{self.ncpu}Q", raw)) if raw else 0
        return out

    def cell_out(self, slots: list[int]) -> dict[int, tuple[int, int]]:
        """(frames, bytes) the kernel redirected to each slot, summed over CPUs."""
        out = {}
        for slot in slots:
            raw = self.out_map.lookup(struct.pack("<I", slot), 16 * self.ncpu)
            v = struct.unpack(f"<{2 * self.ncpu}Q", raw) if raw else (0, 0)
            out[slot] = (sum(v[0::2]), sum(v[1::2]))
        return out

    def datagram_slot(self, key: DatagramKey) -> int | None:
        """The slot the kernel recorded for a datagram's first fragment, if any."""
        l3, src, dst, proto, frag_id = key
        k = _DGRAM_KEY.pack(
            l3, proto if l3 == 4 else 0, 0, frag_id, src.ljust(16, b"\0"), dst.ljust(16, b"\0")
        )
        raw = self.frags_map.lookup(k, _DGRAM_VAL.size)
        if raw is None:
            return None
        slot, _pad, _expires = _DGRAM_VAL.unpack(raw)
        return slot

    def pin_count(self) -> int:
        """Pins held, live or expired, in the set store and the LRU hash (map walks: for tests and
        occasional gauges, not per batch)."""
        return len(self.set_pins()) + sum(1 for _ in self.pins_map.keys(8))

    def set_pins(self) -> dict[int, tuple[int, int, int]]:
        """Flow hash -> (slot, closing, expires ns) of every pin in the set store."""
        out = {}
        for i in range(self.kcfg.pin_sets()):
            raw = self.pin_sets_map.lookup(struct.pack("<I", i), _PIN_SET.size)
            if raw is None:
                continue
            v = _PIN_SET.unpack(raw)
            for w in range(PIN_WAYS):
                h, expires, slot, closing = v[2 + 4 * w : 6 + 4 * w]
                if expires:
                    out[h] = (slot, closing, expires)
        return out

    def close(self) -> None:
        """Detach and free everything."""
        self.obj.close()
