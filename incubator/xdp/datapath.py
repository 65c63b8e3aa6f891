"""The XDP incubator: the kernel separates, Python keeps the control plane and the slow path.

Theory of operation.  `capture: xdp:IFACE` attaches `xdp_incubator` (celltap_partition.bpf.c)
to IFACE through a BPF link (detached when the process ends, however it ends).  Each frame the
program can decide is redirected through a DEVMAP to its cell's interface (slot -> ifindex, the
same slots as the Python engine's outputs) and never reaches the host stack or Python.  What it
cannot decide exactly as celltap.decode would goes up with XDP_PASS and is read, together with
nothing else, by an AF_PACKET socket on IFACE: the ordinary Python incubator engine separates it
with the same partition table.  So both halves make one decision function, and every frame is
either redirected, dropped by policy (counted) or handed to Python (counted by reason).

Fragments before their first fragment are held by the Python fragment tracker; once the first
fragment went through the kernel, its datagram's slot is in the kernel's fragment map, which
`resolve_fragments` reads for every held datagram (the Python path never sees that first
fragment).

Counters: the kernel's per-CPU counters are summed and turned into deltas of the incubator's
usual Prometheus metrics (received, forwarded, out per cell, dropped by reason) plus
`celltap_incubator_xdp_passed_frames_total{reason}` for frames handed to Python, whose own
handling is counted by the engine as in the Python incubator (received excepted: the kernel
already counted them).  Conservation: kernel rx == redirected + kernel drops + passed, and
passed == what the engine forwards, drops or holds.

XDP needs every cell output to be an interface in this network namespace (`iface:IF[@mac]`);
anything else (VXLAN, pcap) makes `XdpUnavailable`, and the caller falls back to the Python path.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from celltap.incubator.cells import TABLE_BITS
from celltap.incubator.engine import CellSpec, Engine
from celltap.incubator.metrics import IncubatorMetrics
from celltap.incubator.outputs import Output, open_output, parse_mac
from celltap.incubator.xdp.program import COUNTERS, SLOT_NONE, TABLE_SLOTS, KernelConfig, PartitionProgram

from celltap.pcap.batch import FrameBatch

log = logging.getLogger("celltap.incubator")

XMIT_DROP = "output_xdp_xmit"  # a redirect target failed to transmit (queue full, link down ...)
REDIRECT_DROP = "output_xdp_redirect"  # the kernel refused a redirect (target cannot take XDP frames, MTU)
OTHER_CELL_DROP = "dicap_other_cell"  # DiCAP: another cell's frame (not this cell's to keep)
OTHER_CELL_SPEC = "dicap-other-cell:"

# kernel counter -> dropped_frames_total reason (the Python path's labels)
_DROPS = {
    "drop_non_ip_policy": "non_ip_policy",
    "drop_no_cell": "no_cell",
    "other_cell": OTHER_CELL_DROP,
}


class OtherCellOutput(Output):
    """DiCAP: where another cell's frames go in this cell's engine -- nowhere, counted."""

    def send(self, batch: FrameBatch) -> tuple[int, int, dict[str, int]]:
        """Send nothing; count every frame as another cell's."""
        return 0, 0, {OTHER_CELL_DROP: len(batch)}


def dicap_open(own_output: str) -> Callable[[str], Output]:
    """Output factory of a DiCAP cell's engine: its own output, or OtherCellOutput."""

    def open_fn(spec: str) -> Output:
        return OtherCellOutput() if spec == OTHER_CELL_SPEC else open_output(spec)

    return open_fn


class XdpUnavailable(RuntimeError):
    """The XDP path cannot run here; the message says why (one line)."""


def iface_of(output: str) -> tuple[str, bytes | None]:
    """(interface, MAC to write or None) of an `iface:IF[@mac]` output; XdpUnavailable otherwise."""
    if not output.startswith("iface:"):
        raise XdpUnavailable(f"output {output!r} is not an interface (XDP redirects to interfaces only)")
    name, _, mac = output[6:].partition("@")
    return name, (parse_mac(mac) if mac else None)


def kernel_config(cfg: Mapping) -> KernelConfig:
    """The kernel's settings from the incubator config."""
    fl, fr = cfg["flows"], cfg["fragments"]
    return KernelConfig(
        seed=cfg["hash_seed"],
        idle_timeout_s=fl["idle_timeout_s"],
        close_linger_s=fl["close_linger_s"],
        frag_timeout_s=fr["timeout_s"],
        non_ip=cfg["non_ip"],
        decapsulate=cfg["decapsulate"],
        max_flows=fl["max_flows"],
        max_datagrams=fr["max_datagrams"],
    )


class XdpPath:
    """The kernel half of one XDP incubator interface (or of a DiCAP cell's socket filter), driven by
    the Python engine's membership."""

    def __init__(
        self,
        ifname: str,
        kcfg: KernelConfig,
        engine: Engine,
        metrics: IncubatorMetrics,
        program: str = "xdp_incubator",
        peer: str | None = None,
    ) -> None:
        if engine.sep.partition != "xxh64":
            raise XdpUnavailable(
                "the XDP path computes the xxh64 partition only (partition: dicap is cBPF's)"
            )
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError as exc:
            raise XdpUnavailable(f"interface {ifname}: {exc.strerror}") from exc
        self.ifname = ifname
        self.engine = engine
        self.metrics = metrics
        self.program = program
        self._last: dict[str, int] = {}
        self._reported: dict[str, int] = {}  # totals already turned into counter increments
        self.peer = peer
        sides = None
        if peer is not None:
            try:
                sides = (self.ifindex, socket.if_nametoindex(peer))
            except OSError as exc:
                raise XdpUnavailable(f"interface {peer}: {exc.strerror}") from exc
        programs: tuple[str, ...] = (program,)
        if program == "xdp_incubator":
            programs += ("count_xmit_drops", "count_redirect_err")
        if sides:
            programs += ("xdp_egress",)
        self.prog = PartitionProgram(kcfg, programs, TABLE_BITS, sides, self.ifindex)
        if program == "xdp_incubator":
            try:
                for ifi in sides or (self.ifindex,):
                    self.prog.obj.attach_xdp(program, ifi)
            except OSError:
                self.prog.close()
                raise
        self._declare_reasons()

    def _declare_reasons(self) -> None:
        """The kernel path's reasons exist at 0 from the start (dashboards show 0, not No data)."""
        m = self.metrics
        for name in COUNTERS:
            if name.startswith("up_"):
                m.xdp_passed_frames.labels(name[3:])
        for reason in (XMIT_DROP, REDIRECT_DROP) if self.program == "xdp_incubator" else (OTHER_CELL_DROP,):
            m.dropped_frames.labels(reason)
        if self.peer is not None:
            for to in (self.ifname, self.peer):
                m.bridged_frames.labels(to)
                m.bridge_dropped_frames.labels(to, XMIT_DROP)

    def prog_fd(self) -> int:
        """The program's fd (a DiCAP cell attaches it to its socket with SO_ATTACH_BPF)."""
        return self.prog.obj.prog_fd(self.program)

    def check_cells(self, cells: Mapping[str, CellSpec]) -> None:
        """Raise XdpUnavailable unless every cell output is an interface here and every cell's slot
        fits the kernel's packed partition table (slots are never reused: each new cell id takes
        the next one)."""
        # Slots are dense (0, 1, ... in order of first sight), so the highest one these cells would
        # take is the number of distinct ids seen, them included, less one.
        distinct = len(set(self.engine.sep.cells.slot_of) | set(cells))
        if distinct > TABLE_SLOTS:
            raise XdpUnavailable(
                f"{distinct} distinct cells since start: the kernel's partition table "
                f"names {TABLE_SLOTS} (slots 0-{TABLE_SLOTS - 1})"
            )
        for spec in cells.values():
            name, _mac = iface_of(spec.output)
            try:
                socket.if_nametoindex(name)
            except OSError as exc:
                raise XdpUnavailable(f"cell {spec.id}: interface {name}: {exc.strerror}") from exc

    def apply(self, my_cell: str | None = None) -> None:
        """Write the engine's current membership (slots, table; DiCAP: our own slot) into the kernel."""
        sep = self.engine.sep
        if self.program != "xdp_incubator":
            my_slot = sep.cells.slot_of.get(my_cell, SLOT_NONE) if my_cell in sep.cells.alive else SLOT_NONE
            if self.prog.all_up:
                return
            if max(sep.cells.alive_slots(), default=0) >= TABLE_SLOTS:
                log.warning(
                    "dicap: %d distinct cells since start, the kernel's partition table names %d; "
                    "the eBPF filter hands every frame to the Python path from now on",
                    len(sep.cells.ids),
                    TABLE_SLOTS,
                )
                self.prog.pass_all_up(my_slot)
                return
            self.prog.set_cells(sep.cells, my_slot=my_slot)
            return
        ifindex: dict[int, int] = {}
        macs: dict[int, bytes | None] = {}
        for cid, spec in self.engine.specs.items():
            slot = sep.cells.slot_of[cid]
            name, mac = iface_of(spec.output)
            ifindex[slot] = socket.if_nametoindex(name)
            macs[slot] = mac
        self.prog.set_cells(sep.cells, ifindex, macs)

    def resolve_fragments(self) -> None:
        """Release held fragments whose first fragment went through the kernel."""
        frags = self.engine.sep.frags
        if not frags.waiting:
            return
        for key in list(frags.waiting):
            slot = self.prog.datagram_slot(key)
            if slot is None or slot not in self.engine.outputs:
                continue
            rel = frags.first_fragment(key, slot, self.engine.sep.now_ns)
            if rel is not None:
                self.engine.send_released(rel)

    def _inc_to(self, key: str, total: int, counter: Any) -> None:
        """Raise `counter` to a running total (a transmit failure counted later than its redirect
        may make a total step back for a moment: counters never go down, they wait)."""
        done = self._reported.get(key, 0)
        if total > done:
            counter.inc(total - done)
            self._reported[key] = total

    def sync_metrics(self) -> dict[str, int]:
        """Turn the kernel counters into metric increments; returns the summed counters."""
        now = self.prog.counters()
        d = {k: v - self._last.get(k, 0) for k, v in now.items()}
        self._last = now
        m = self.metrics
        if d["rx"]:
            m.received_frames.labels(self.ifname).inc(d["rx"])
            m.received_bytes.labels(self.ifname).inc(d["rx_bytes"])
        sep = self.engine.sep
        failed: dict[int, int] = {}
        for slot, ifi in self.prog.targets().items():
            xmit, refused = self.prog.xmit_drops(ifi), self.prog.redirect_errors(slot)
            failed[slot] = xmit + refused
            self._inc_to(f"xmit{slot}", xmit, m.dropped_frames.labels(XMIT_DROP))
            self._inc_to(f"refused{slot}", refused, m.dropped_frames.labels(REDIRECT_DROP))
        self._inc_to("forwarded", now["redirected"] - sum(failed.values()), m.forwarded_frames)
        for k, reason in _DROPS.items():
            if d[k]:
                m.dropped_frames.labels(reason).inc(d[k])
        for k, v in d.items():
            if k.startswith("up_") and v:
                m.xdp_passed_frames.labels(k[3:]).inc(v)
        if self.peer is not None and self.prog.sides:
            for k, to, ifi in (
                ("bridged_to_a", self.ifname, self.prog.sides[0]),
                ("bridged_to_b", self.peer, self.prog.sides[1]),
            ):
                lost = self.prog.xmit_drops(ifi)
                self._inc_to(f"bridge_fail_{to}", lost, m.bridge_dropped_frames.labels(to, XMIT_DROP))
                self._inc_to(f"bridged_{to}", now[k] - lost, m.bridged_frames.labels(to))
        if d["new_pin"]:
            m.flows_new.inc(d["new_pin"])
        if d["rehomed_pin"]:
            m.rehomed_flows.inc(d["rehomed_pin"])
        out = self.prog.cell_out(sorted(sep.cells.slot_of.values()))
        for slot, (frames, nbytes) in out.items():
            cid = sep.cells.ids[slot]
            self._inc_to(f"out{slot}", frames - failed.get(slot, 0), m.out_frames.labels(cid))
            self._inc_to(f"outb{slot}", nbytes, m.out_bytes.labels(cid))
        return now

    def close(self) -> None:
        """Detach the program and free its maps."""
        self.prog.close()
